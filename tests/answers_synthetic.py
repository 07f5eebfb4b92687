"""References and typical wrong answers for chapters 3 and 4's exercises (tests/test_exercises.py runs them)."""
from __future__ import annotations

import math

from aen_mini.eval.calibrate import search_l1


def calibrate(measure_l0, target, l1_start, trials):
    return search_l1(measure_l0, target, l1_start, trials=trials, rel_tol=0.1)["l1_coeff"]


def dead_window(density, risk):
    n = math.ceil(math.log(risk) / math.log1p(-density))
    while n > 1 and (1 - density) ** (n - 1) <= risk:
        n -= 1
    return n


def weights_at_clip(ema, ref_pct, w_max):
    ref = ema.topk(max(1, math.ceil(ref_pct * len(ema)))).values.mean()
    return int(((ref / ema.clamp_min(1e-5)) >= w_max * (1 - 1e-9)).sum())


def sae_objective(x, h, W_dec, b_dec, l1, l2, w):
    return (x - h @ W_dec.T - b_dec).pow(2).sum(1) + l1 * (w * h.abs()).sum(1) + l2 * h.pow(2).sum(1)


def dead_fraction(h):
    return (h == 0).all(dim=0).double().mean().item()


def warmup_ramp(step, start, steps):
    return float(step >= start) if steps == 0 else min(max((step - start) / steps, 0.0), 1.0)


SOLUTIONS = {"calibrate_l1": calibrate, "dead_window": dead_window, "weights_at_clip": weights_at_clip,
             "sae_objective": sae_objective, "dead_fraction": dead_fraction, "warmup_ramp": warmup_ramp}


def additive_search(measure_l0, target, l1_start, trials):
    l1 = l1_start
    for _ in range(trials):
        if abs(measure_l0(l1) / target - 1) <= 0.1:
            return l1
        l1 = l1 * 1.1 if measure_l0(l1) > target else l1 / 1.1
    return l1


def wrong_direction(measure_l0, target, l1_start, trials):
    l1 = l1_start
    for _ in range(trials - 1):
        l1 = l1 * 4 if measure_l0(l1) < target else l1 / 4
    return l1


MISTAKES = [
    ("calibrate_l1", additive_search, ["target 16", "called"]),
    ("calibrate_l1", wrong_direction, ["not within 10 %"]),
    ("dead_window", lambda p, r: math.floor(math.log(r) / math.log1p(-p)), ["round up"]),
    ("dead_window", lambda p, r: math.ceil(-math.log(r) / p), ["log1p"]),
    ("weights_at_clip", lambda e, p, w: int(((e.topk(max(1, int(p * len(e)))).values.mean() / e.clamp_min(1e-5)) >= w).sum()),
     ["ceil"]),
    ("weights_at_clip", lambda e, p, w: int(((e.max() / e.clamp_min(1e-5)) >= w).sum()), ["not the maximum"]),
    ("sae_objective", lambda x, h, W, b, l1, l2, w: (x - h @ W.T - b).pow(2).sum(1) + l1 * h.sum(1) + l2 * h.pow(2).sum(1),
     ["uneven", "weighted"]),
    ("sae_objective", lambda x, h, W, b, l1, l2, w: (x - h @ W.T - b).pow(2).mean(1) + l1 * (w * h).sum(1) + l2 * h.pow(2).sum(1),
     ["sum the squared error"]),
    ("dead_fraction", lambda h: (h == 0).any(dim=0).double().mean().item(), ["every row"]),
    ("warmup_ramp", lambda step, start, steps: (step - start) / steps if steps else float(step >= start), ["clip"]),
]
