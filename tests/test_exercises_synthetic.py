"""Chapters 3 and 4's checkers: the reference passes, and typical wrong answers fail with the mistake named."""
from __future__ import annotations

import math

import pytest
import torch

from aen_mini.eval.calibrate import search_l1
from aen_mini.book.exercises import check


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


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_reference_passes(name):
    feedback = check(name, SOLUTIONS[name])
    assert feedback.passed, feedback


@pytest.mark.parametrize("name, wrong, words", MISTAKES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISTAKES)])
def test_wrong_answer_is_named(name, wrong, words):
    feedback = check(name, wrong)
    assert not feedback.passed and feedback.startswith("not yet")
    for word in words:
        assert word in feedback, f"{word!r} not in:\n{feedback}"


def test_a_stub_is_a_rejection_not_a_crash():
    def stub(*args):
        raise NotImplementedError("Exercise 3.2: your code here")

    for name in ("calibrate_l1", "dead_window", "weights_at_clip", "sae_objective"):
        feedback = check(name, stub)
        assert not feedback.passed and "NotImplementedError" in feedback


def test_sae_objective_matches_the_amortisation_gap_objective():
    from aen_mini.eval.metrics import _sae_objective
    from aen_mini.sae import make_sae
    sae = make_sae("aen", 4, 6, l1_coeff=0.2, l2_coeff=0.1)
    x, h = torch.randn(3, 4), torch.rand(3, 6)
    w = sae.l1_weights()
    assert torch.allclose(sae_objective(x, h, sae.W_dec.detach(), sae.b_dec.detach(), 0.2, 0.1, w).double(),
                          _sae_objective(sae, x, h, w).detach(), atol=1e-5)
