"""l1 calibrated to a target L0 by short probes of the full run's schedule shape plus a measured drift: the LLM
study's calibration (``aen_mini.experiments.llm_calibrated``), shared with SynthSAEBench's side-by-side runs.

A probe is a fresh run of 1/``PROBE_FRACTION`` of the full run's steps (the caller scales its schedules, the lr
warm-up and AEN's reweighting warm-up, with the probe's length). Secant steps on log L0 against log l1 until a probe
is within ``PROBE_TOL`` of the target (at most ``MAX_PROBES``), then one probe at twice that length measures how L0
drifts as the run grows, and the l1 of the full run is moved by that drift, extrapolated to the full length. A
caller that knows the drift already (a larger dictionary taking a smaller one's) skips that probe.

``probe_calibration`` is a generator: it yields each probe it wants as ``(l1, steps)`` and is sent back that probe's
record (at least ``{"l0": ...}``; anything else, say its wall time, is kept in the trial); it returns the
calibration. So one caller runs its probes one after another (``run_probes``), and another runs the probes of
several calibrations side by side on shared batches, each advancing when its probe ends.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Generator

PROBE_FRACTION = 8  # a probe runs 1/8 of the full run's steps
PROBE_TOL = 0.08  # a probe this close to the target ends the search
MAX_PROBES = 3  # secant probes; the drift probe (twice as long) comes on top
DRIFT_CLAMP = (0.4, 2.5)  # the extrapolated drift is kept within these factors
# d log L0 / d log l1 before two probes measure it (ReLU+L1 and AEN on SmolLM2 at 4608 latents: about -1.4 / -1.6)
SLOPE = -1.5

Calibration = Generator[tuple[float, int], dict[str, Any], dict[str, Any]]


def probe_steps(full_steps: int) -> int:
    return max(1, full_steps // PROBE_FRACTION)


def worst_case_probe_steps(full_steps: int) -> int:
    """Steps of every probe one calibration may run, in sequence: ``MAX_PROBES`` probes and the drift probe."""
    return (MAX_PROBES + 2) * probe_steps(full_steps)


def secant_l1(trials: list[dict[str, float]], target: float, slope: float) -> tuple[float, float]:
    """The next l1 to try and the slope used: from the last trial along the slope the last two trials measured (if
    it is a plausible one), or along ``slope``; the step is kept within a factor of 5."""
    last = trials[-1]
    if len(trials) >= 2 and trials[-2]["l1"] != last["l1"]:
        fitted = math.log(last["l0"] / trials[-2]["l0"]) / math.log(last["l1"] / trials[-2]["l1"])
        slope = fitted if -6.0 <= fitted <= -0.2 else slope
    step = (target / max(last["l0"], 1e-3)) ** (1.0 / slope)
    return last["l1"] * min(5.0, max(0.2, step)), slope


def probe_calibration(target: float, l1: float, slope: float, full_steps: int, drift: float | None = None,
                      drift_how: str = "a known drift") -> Calibration:
    """Yields ``(l1, steps)`` per probe, receives its record, returns ``l1`` (for the full run), ``trials``,
    ``slope``, ``probe_steps``, ``drift_per_doubling``, ``predicted_drift``, ``best_probe`` and ``how``.
    ``drift``: the full run's L0 over the probes' prediction, if known (then no drift probe; ``drift_how`` says
    where it came from)."""
    p, trials = probe_steps(full_steps), []

    def probe(l1: float, steps: int) -> Generator[tuple[float, int], dict[str, Any], float]:
        measured = yield l1, steps
        trials.append({"l1": l1, "steps": steps, **measured})
        return measured["l0"]

    for i in range(MAX_PROBES):
        l0 = yield from probe(l1, p)
        if abs(l0 / target - 1) <= PROBE_TOL or i + 1 == MAX_PROBES:
            break
        l1, slope = secant_l1(trials, target, slope)
    best = min(trials, key=lambda r: abs(math.log(max(r["l0"], 1e-3) / target)))
    per_doubling, how = None, drift_how
    if drift is None:
        drift, how = 1.0, f"drift at {2 * p}, extrapolated to {full_steps} steps"
        if full_steps >= 2 * p and full_steps > p:
            per_doubling = (yield from probe(best["l1"], 2 * p)) / max(best["l0"], 1e-3)
            drift = min(DRIFT_CLAMP[1], max(DRIFT_CLAMP[0], per_doubling ** math.log2(full_steps / p)))
    l1 = best["l1"] * (target / max(best["l0"] * drift, 1e-3)) ** (1.0 / slope)
    return {"l1": l1, "trials": trials, "slope": slope, "probe_steps": p, "drift_per_doubling": per_doubling,
            "predicted_drift": drift, "best_probe": best, "how": f"{len(trials)} probes (secant at {p} steps; {how})"}


def run_probes(calibration: Calibration, measure: Callable[[float, int], dict[str, Any]]) -> dict[str, Any]:
    """Run a calibration's probes one after another: ``measure(l1, steps)`` trains a probe and returns its record."""
    try:
        request = next(calibration)
        while True:
            request = calibration.send(measure(*request))
    except StopIteration as done:
        return done.value


def actual_drift(calibration: dict[str, Any], l0: float) -> float | None:
    """The full run's L0 over the L0 its probes predict at its l1 (None without probes)."""
    best = calibration.get("best_probe")
    if not best:
        return None
    return l0 / (best["l0"] * (calibration["l1"] / best["l1"]) ** calibration["slope"])


__all__ = ["DRIFT_CLAMP", "MAX_PROBES", "PROBE_FRACTION", "PROBE_TOL", "SLOPE", "actual_drift", "probe_calibration",
           "probe_steps", "run_probes", "secant_l1", "worst_case_probe_steps"]
