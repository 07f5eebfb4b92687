"""Checkers for chapters 3 and 4 (starvation on synthetic data; adaptive reweighting); registered in
``aen_mini.book.exercises.EXERCISES``. The list of exercises is in that module's docstring."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from aen_mini.eval.metrics import _sae_objective, dead_fraction
from aen_mini.sae import make_sae
from aen_mini.sae.adaptive import AdaptiveL1Weights
from aen_mini.book.exercises import Feedback, _call, _gen, _matches, _mismatch, _require_callable, _run_cases, exercise


# --- chapter 3 ---------------------------------------------------------------------------------------------
@exercise("dead_fraction")
def check_dead_fraction(fn: Callable[..., Any]) -> Feedback:
    """fn(h (B, m)) -> float in [0, 1]: the share of latents that are zero on every row of the batch."""
    g = _gen(400)
    sparse = torch.relu(torch.randn(6, 10, generator=g) - 1.0)
    sparse[:, [2, 5, 7]] = 0.0
    cases = [(f"codes of shape {tuple(h.shape)}", (h,), torch.tensor(dead_fraction(h), dtype=torch.float64))
             for h in (sparse, torch.zeros(3, 4), torch.eye(4)[:2], torch.relu(torch.randn(50, 8, generator=g)))]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        (h,) = args
        silent = (h == 0).all(dim=0).double()
        if _matches(got, silent.sum()):
            return "return the fraction of latents (divide by m), not their number."
        if _matches(got, 100 * silent.mean()):
            return "return a fraction in [0, 1], not a percentage."
        if _matches(got, (h == 0).any(dim=0).double().mean()):
            return "a latent is dead when it is zero on every row, not on some row: use .all(dim=0)."
        if _matches(got, (h == 0).double().mean()):
            return "count latents (columns), not entries: a latent is dead when its whole column is zero."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the dead fraction", got, exp), hint)


CALIBRATION_TRIALS = 8  # the budget of training runs a calibration may spend in exercise calibrate_l1


def _power_law(c: float, slope: float, floor: float = 0.0) -> Callable[[float], float]:
    """A stand-in for "train with l1, return the held-out L0": L0 = c * l1^-slope (+ a floor)."""
    return lambda l1: floor + c * l1 ** -slope


@exercise("calibrate_l1")
def check_calibrate_l1(fn: Callable[..., Any]) -> Feedback:
    """fn(measure_l0, target, l1_start, trials) -> l1 with |measure_l0(l1) / target - 1| <= 0.1, calling
    measure_l0 at most ``trials`` times (each call is a training run)."""
    _require_callable(fn)
    cases = [("L0 = 40 l1^-1, target 16, start 0.1", _power_law(40, 1.0), 16.0, 0.1),
             ("L0 = 40 l1^-1, target 16, start 100", _power_law(40, 1.0), 16.0, 100.0),
             ("L0 = 3 l1^-2.5, target 4, start 1", _power_law(3, 2.5), 4.0, 1.0),
             ("L0 = 1 + 200 l1^-0.7, target 16, start 0.01", _power_law(200, 0.7, 1.0), 16.0, 0.01)]
    for description, law, target, start in cases:
        calls: list[float] = []

        def measure(l1: float, law=law, calls=calls) -> float:
            if not (isinstance(l1, (int, float)) and math.isfinite(l1) and l1 > 0):
                raise ValueError(f"measure_l0 was called with l1={l1!r}; l1 must be a number > 0")
            calls.append(float(l1))
            return law(float(l1))

        got, error = _call(fn, (measure, target, start, CALIBRATION_TRIALS))
        if error is None and got is None:
            error = "your function returned None (missing `return`?)"
        if error is None and not isinstance(got, (int, float)):
            error = f"your function returned a {type(got).__name__}, not the l1 value"
        if error is not None:
            return Feedback(f"not yet: for {description}: {error}.", False)
        hint = None
        if len(calls) > CALIBRATION_TRIALS:
            problem = f"measure_l0 was called {len(calls)} times, the budget is {CALIBRATION_TRIALS} runs"
            hint = "each call is a training run: stop as soon as a trial is within 10 % of the target."
        elif not (math.isfinite(got) and got > 0 and abs(law(got) / target - 1) <= 0.1):
            l0 = law(got) if math.isfinite(got) and got > 0 else float("nan")
            problem = f"you returned l1 = {got:.4g} with L0 = {l0:.4g}, not within 10 % of {target:g}"
            if calls and len(calls) > 1 and all(b > a for a, b in zip(calls, calls[1:])) and law(calls[0]) < target:
                hint = "L0 falls as l1 grows: when L0 is below the target, make l1 smaller."
            elif calls and all(abs(math.log(b / a)) < 0.2 for a, b in zip(calls, calls[1:])) and len(calls) > 2:
                hint = "small additive steps take too many runs: multiply l1 by a factor until the target is bracketed, then bisect on log l1."
            else:
                hint = "return the l1 of the trial closest to the target (not the last one tried)."
        else:
            continue
        return Feedback(f"not yet: for {description}: {problem}." + (f"\nHint: {hint}" if hint else ""), False)
    return Feedback(f"correct: your calibration reaches the target within {CALIBRATION_TRIALS} runs on all "
                    f"{len(cases)} L0(l1) curves.", True)


@exercise("dead_window")
def check_dead_window(fn: Callable[..., Any]) -> Feedback:
    """fn(density, risk) -> int: the smallest N with (1 - density)^N <= risk (a latent that fires independently on a
    fraction ``density`` of samples looks dead on N samples with probability (1 - density)^N)."""
    cases = []
    for density, risk in [(1e-4, 0.01), (1e-3, 0.05), (0.5, 0.25), (0.5, 0.2), (1e-6, 0.5), (0.2, 1e-6)]:
        n = math.ceil(math.log(risk) / math.log1p(-density))
        while n > 1 and (1 - density) ** (n - 1) <= risk:  # exact at the boundary (0.5^2 = 0.25)
            n -= 1
        cases.append((f"density={density:g}, risk={risk:g}", (density, risk), torch.tensor(float(n), dtype=torch.float64)))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        density, risk = args
        exact = math.log(risk) / math.log1p(-density)
        if _matches(got, torch.tensor(float(math.floor(exact)), dtype=torch.float64)):
            return "round up: with N rounded down the probability of looking dead is still above the risk."
        if _matches(got, torch.tensor(float(math.ceil(-math.log(risk) / density)), dtype=torch.float64)):
            return "log(1 - p) is only about -p for small p: use math.log1p(-density)."
        if _matches(got, torch.tensor(float(math.ceil(risk / density)), dtype=torch.float64)):
            return "the chance of N silent samples is (1 - p)^N: solve (1 - p)^N <= risk for N with logarithms."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("N", got, exp), hint)


# --- chapter 4 ---------------------------------------------------------------------------------------------
@exercise("warmup_ramp")
def check_warmup_ramp(fn: Callable[..., Any]) -> Feedback:
    """fn(step, warmup_start, warmup_steps) -> float: r = clip((step - start) / steps, 0, 1); with
    warmup_steps = 0, r jumps from 0 to 1 at warmup_start."""
    cases = []
    for step, start, steps in [(0, 10, 20), (10, 10, 20), (15, 10, 20), (30, 10, 20), (45, 10, 20), (4, 5, 0),
                               (5, 5, 0), (7, 0, 3)]:
        rule = AdaptiveL1Weights(4, 1.0, ema_beta=0.9, ref_pct=0.25, warmup_start=start, warmup_steps=steps)
        rule.step.fill_(step)
        cases.append((f"step={step}, warmup_start={start}, warmup_steps={steps}", (step, start, steps),
                      rule.ramp().double()))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        step, start, steps = args
        if steps == 0:
            return "with warmup_steps = 0 the ramp is a step: 0 before warmup_start, 1 from it on."
        if _matches(got, torch.tensor((step - start) / steps, dtype=torch.float64)):
            return "clip the ramp to [0, 1]: it is 0 before the warm-up and stays 1 after it."
        if _matches(got, torch.tensor(min(max(step / (start + steps), 0.0), 1.0), dtype=torch.float64)):
            return "the ramp starts at warmup_start: r = (step - warmup_start) / warmup_steps."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("r", got, exp), hint)


def _reference_n_clipped(ema: Tensor, ref_pct: float, w_max: float) -> Tensor:
    rule = AdaptiveL1Weights(len(ema), 1.0, ema_beta=0.9, ref_pct=ref_pct, warmup_start=0, warmup_steps=0, w_max=w_max)
    rule.ema.copy_(ema)
    return (rule.weights() >= w_max * (1 - 1e-9)).sum().double()


@exercise("weights_at_clip")
def check_weights_at_clip(fn: Callable[..., Any]) -> Feedback:
    """fn(ema, ref_pct, w_max) -> int: how many latents have ref / max(a_j, 1e-5) >= w_max (gamma = 1), with ref the
    mean of the top ceil(ref_pct * m) entries of ema."""
    g = _gen(410)
    usage = torch.rand(200, generator=g) * 0.02 + 0.01
    grown = usage.clone()
    grown[:3] = torch.tensor([0.3, 0.25, 0.2])  # a few latents absorb extra atoms: the reference jumps
    cases = [(f"ema of {len(e)} latents, ref_pct={p}, w_max={w}", (e, p, w), _reference_n_clipped(e, p, w))
             for e, p, w in [(usage, 0.01, 10.0), (grown, 0.01, 10.0), (grown, 0.05, 10.0),
                             (torch.tensor([1.0, 0.5, 0.3, 0.1, 0.09, 0.05, 0.0, 0.02]), 0.3, 7.0),
                             (torch.tensor([0.4, 0.4, 0.4, 0.04, 0.039, 0.0]), 0.5, 10.0)]]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        ema, pct, w_max = args
        n_floor = max(1, int(pct * len(ema)))
        ref_floor = ema.topk(n_floor).values.mean()
        if _matches(got, ((ref_floor / ema.clamp_min(1e-5)) >= w_max).sum().double()):
            return "the reference set has ceil(ref_pct * m) latents (at least 1), not int(ref_pct * m)."
        if _matches(got, ((ema.max() / ema.clamp_min(1e-5)) >= w_max).sum().double()):
            return "ref is the mean of the top ceil(ref_pct * m) entries, not the maximum."
        if _matches(got, ((ema.topk(math.ceil(pct * len(ema))).values.mean() / ema.clamp_min(1e-5)) > w_max).sum().double()):
            return "a weight is at the clip when ref / a_j >= w_max (clip(w) == w_max), including equality."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the count", got, exp), hint)


def _objective_case(seed: int, weighted: bool) -> tuple[str, tuple[Any, ...], Tensor]:
    g = _gen(seed)
    d_in, d_sae, batch = 5, 8, 4
    sae = make_sae("aen" if weighted else "elastic_net", d_in, d_sae, l1_coeff=0.3, l2_coeff=0.05, seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    x = torch.randn(batch, d_in, generator=g)
    h = torch.relu(torch.randn(batch, d_sae, generator=g))
    w = 1 + 3 * torch.rand(d_sae, generator=g) if weighted else torch.ones(d_sae)
    expected = _sae_objective(sae, x, h, w if weighted else None)
    args = (x, h, sae.W_dec.detach().clone(), sae.b_dec.detach().clone(), 0.3, 0.05, w)
    return (f"a batch of {batch} with {'uneven' if weighted else 'unit'} weights w", args, expected)


@exercise("sae_objective")
def check_sae_objective(fn: Callable[..., Any]) -> Feedback:
    """fn(x, h, W_dec, b_dec, l1, l2, w) -> (B,): ||x - (W_dec h + b_dec)||^2 + l1 sum_j w_j |h_j| + l2 sum_j h_j^2 per
    sample (the objective metrics.amortisation_gap compares encoder codes and exact codes with)."""
    cases = [_objective_case(420, False), _objective_case(421, True), _objective_case(422, True)]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, h, W_dec, b_dec, l1, l2, w = args
        err = (x - h @ W_dec.T - b_dec).double().pow(2)
        pen = l1 * (h * w).double().sum(1) + l2 * h.double().pow(2).sum(1)
        if _matches(got, err.sum(1) + l1 * h.double().sum(1) + l2 * h.double().pow(2).sum(1)):
            return "the l1 term is weighted: l1 * sum_j w_j |h_j|."
        if _matches(got, err.mean(1) + pen):
            return "sum the squared error over features (the SAE's loss scale), do not average it."
        if _matches(got, (x - h @ W_dec.T).double().pow(2).sum(1) + pen):
            return "the reconstruction includes the decoder bias: x_hat = W_dec h + b_dec."
        if _matches(got, (err.sum(1) + pen).mean()):
            return "return one objective per sample (shape (B,)), not the batch mean."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the objective", got, exp), hint)
