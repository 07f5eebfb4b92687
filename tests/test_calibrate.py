"""search_l1 / next_l1 on synthetic L0(l1) curves whose exact answer is known."""
from __future__ import annotations

import math

import pytest

from aen_mini.eval.calibrate import next_l1, power_law_start, search_l1


def power_law(scale: float, alpha: float):
    """L0(l1) = scale * l1^-alpha: the target T is reached at l1* = (scale / T)^(1 / alpha)."""
    calls: list[float] = []

    def measure(l1: float) -> float:
        calls.append(l1)
        return scale * l1 ** -alpha
    return measure, calls


def test_power_law_is_solved_in_one_interpolation() -> None:
    # On an exact power law the log-log interpolation lands on the answer as soon as the target is bracketed.
    measure, calls = power_law(scale=40.0, alpha=0.7)
    out = search_l1(measure, target_l0=32, l1_start=0.01, trials=8, rel_tol=0.01)
    l1_star = (40.0 / 32) ** (1 / 0.7)
    assert out["converged"]
    assert out["l1_coeff"] == pytest.approx(l1_star, rel=1e-6)
    # 0.01 -> 0.04 -> 0.16 -> 0.64 -> 2.56 brackets (0.64 gives L0 = 54.7 > 32, 2.56 gives 20.6 < 32).
    assert calls[:5] == pytest.approx([0.01, 0.04, 0.16, 0.64, 2.56])
    assert len(calls) == 6


def test_curved_monotone_curve_reaches_tolerance_in_few_trials() -> None:
    # A sigmoid-like fall in log l1 (not a power law): the clamp keeps the bracket shrinking.
    def measure(l1: float) -> float:
        return 1 + 500 / (1 + (l1 / 0.3) ** 2.5)
    for target in (32.0, 128.0):
        out = search_l1(measure, target_l0=target, l1_start=1.0, trials=8, rel_tol=0.1)
        assert out["converged"], out
        assert abs(out["l0"] / target - 1) <= 0.1
        assert len(out["trials"]) <= 6
        assert out["l0"] == measure(out["l1_coeff"])


def test_returns_closest_trial_when_out_of_trials() -> None:
    measure, _ = power_law(scale=1.0, alpha=1.0)
    out = search_l1(measure, target_l0=1e-3, l1_start=1.0, trials=3, rel_tol=0.01)  # needs l1 = 1000
    assert not out["converged"]
    assert [t["l1_coeff"] for t in out["trials"]] == pytest.approx([1.0, 4.0, 16.0])
    assert out["l1_coeff"] == pytest.approx(16.0)


def test_next_l1_expands_then_stays_in_middle_of_bracket() -> None:
    assert next_l1({"l1_coeff": 2.0, "l0": 100.0}, None, 10.0) == 8.0
    assert next_l1(None, {"l1_coeff": 2.0, "l0": 1.0}, 10.0) == 0.5
    # Interpolation would land almost on the low end (L0 there is barely above target): clamped to 20%.
    low, high = {"l1_coeff": 1.0, "l0": 10.01}, {"l1_coeff": math.e ** 10, "l0": 0.01}
    assert next_l1(low, high, 10.0) == pytest.approx(math.e ** 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"target_l0": 0}, "target_l0"),
    ({"l1_start": -1.0}, "l1_start"),
    ({"rel_tol": 0.0}, "rel_tol"),
    ({"trials": 0}, "trials"),
])
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    args = {"measure_l0": lambda l1: 1.0, "target_l0": 1.0, "l1_start": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        search_l1(**args)


def test_bad_measurement_is_refused() -> None:
    with pytest.raises(ValueError, match="measure_l0"):
        search_l1(lambda l1: float("nan"), target_l0=4, l1_start=1.0)


def test_power_law_start_recovers_the_exact_answer_from_two_trials() -> None:
    measure, _ = power_law(scale=40.0, alpha=0.7)
    trials = [{"l1_coeff": l1, "l0": measure(l1)} for l1 in (0.1, 3.0)]
    assert power_law_start(trials, 32.0) == pytest.approx((40.0 / 32) ** (1 / 0.7))


def test_power_law_start_with_one_trial_uses_the_given_slope() -> None:
    # L0 = 100 at l1 = 2; with L0 proportional to 1/l1, L0 = 25 needs l1 = 8.
    assert power_law_start([{"l1_coeff": 2.0, "l0": 100.0}], 25.0) == pytest.approx(8.0)
    assert power_law_start([{"l1_coeff": 2.0, "l0": 0.0}], 25.0) is None
    # Two trials with almost the same L0 (an untrained SAE): no extrapolation by exp(100), the slope stands in.
    flat = [{"l1_coeff": 1.0, "l0": 101.0}, {"l1_coeff": 4.0, "l0": 100.0}]
    assert power_law_start(flat, 50.0) == pytest.approx(2.0 * 100.5 / 50.0, rel=0.01)
