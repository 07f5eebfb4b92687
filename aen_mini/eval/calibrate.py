"""Calibrating a sparsity coefficient to a target L0: find l1 such that a run trained with it has L0 near a target.

L0 falls as l1 grows, roughly as a power law, so the search works on log l1 and log L0: multiply (or divide) l1
by 4 until one trial is above the target and one below, then interpolate log L0 linearly in log l1 between the
closest pair, never leaving the middle 60% of the bracket so that a curved L0(l1) cannot stall the search at
one end. Each trial is a whole training run, so the search stops as soon as a trial is within ``rel_tol``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from aen_mini.validate import check_positive_int

EXPAND = 4.0  # factor by which l1 grows or shrinks until the target is bracketed
INNER = 0.2  # interpolation stays within [INNER, 1 - INNER] of the bracket (its middle 60%)
_FLOOR = 1e-3  # L0 of a trial where nothing fired, for the logarithms


def _log_miss(trial: dict[str, float], target: float) -> float:
    return math.log(max(trial["l0"], _FLOOR) / target)


def next_l1(low: dict[str, float] | None, high: dict[str, float] | None, target: float) -> float:
    """The next l1 to try, from the closest trials so far with L0 above (``low``: l1 too small) and below
    (``high``: l1 too large) the target; each is ``{"l1_coeff", "l0"}`` or None. One of them must be given."""
    if low is None and high is None:
        raise ValueError("next_l1 needs at least one trial (low or high)")
    if high is None:
        return low["l1_coeff"] * EXPAND
    if low is None:
        return high["l1_coeff"] / EXPAND
    a, b = math.log(low["l1_coeff"]), math.log(high["l1_coeff"])
    fa, fb = _log_miss(low, target), _log_miss(high, target)
    t = fa / (fa - fb) if fa != fb else 0.5
    return math.exp(a + min(max(t, INNER), 1 - INNER) * (b - a))


def search_l1(measure_l0: Callable[[float], float], target_l0: float, l1_start: float, trials: int = 5,
              rel_tol: float = 0.1) -> dict[str, Any]:
    """Search l1 so that ``measure_l0(l1)`` (e.g. train a run, return its held-out L0) is near ``target_l0``.

    Stops at the first trial with ``|L0 / target - 1| <= rel_tol`` or after ``trials`` calls, and returns the
    trial closest to the target on a log scale: ``{"l1_coeff", "l0", "converged", "trials": [{"l1_coeff",
    "l0"}, ...]}``. ``measure_l0`` should decrease in l1 (it need not be exactly monotone: the bracket keeps the
    closest trial on each side).
    """
    if not callable(measure_l0):
        raise TypeError(f"measure_l0 must be callable, got {type(measure_l0).__name__}")
    target = float(target_l0)
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target_l0 must be a finite number > 0, got {target_l0!r}")
    if not (math.isfinite(float(l1_start)) and l1_start > 0):
        raise ValueError(f"l1_start must be a finite number > 0, got {l1_start!r}")
    if not (math.isfinite(float(rel_tol)) and rel_tol > 0):
        raise ValueError(f"rel_tol must be a finite number > 0, got {rel_tol!r}")
    check_positive_int("trials", trials)
    l1 = float(l1_start)
    low = high = None
    history: list[dict[str, float]] = []
    for _ in range(trials):
        l0 = float(measure_l0(l1))
        if not math.isfinite(l0) or l0 < 0:
            raise ValueError(f"measure_l0({l1:g}) returned {l0!r}; an L0 is a finite number >= 0")
        trial = {"l1_coeff": l1, "l0": l0}
        history.append(trial)
        if abs(l0 / target - 1) <= rel_tol:
            break
        if l0 > target:  # keep the closest trial on each side of the target
            low = trial if low is None or trial["l1_coeff"] > low["l1_coeff"] else low
        else:
            high = trial if high is None or trial["l1_coeff"] < high["l1_coeff"] else high
        l1 = next_l1(low, high, target)
    best = min(history, key=lambda t: abs(_log_miss(t, target)))
    return {**best, "converged": abs(best["l0"] / target - 1) <= rel_tol, "trials": history}


def power_law_start(trials: list[dict[str, float]], target_l0: float, slope: float = -1.0,
                    flattest: float = -0.1) -> float | None:
    """A starting l1 for a new target from earlier trials ``[{"l1_coeff", "l0"}, ...]`` (e.g. of the same SAE at
    another target): fit log L0 = a + b log l1 by least squares and solve for the target. With one usable trial
    (L0 > 0), or a fit flatter than ``flattest`` (solving it would jump by orders of magnitude on noise),
    ``slope`` stands in for b. None if no trial is usable."""
    target = float(target_l0)
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target_l0 must be a finite number > 0, got {target_l0!r}")
    points = [(math.log(t["l1_coeff"]), math.log(t["l0"])) for t in trials if t["l0"] > 0 and t["l1_coeff"] > 0]
    if not points:
        return None
    xs, ys = zip(*points)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / spread if spread > 0 else slope
    if not b <= flattest:
        b = slope
    return math.exp(mx + (math.log(target) - my) / b)
