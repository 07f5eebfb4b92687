"""References and typical wrong answers for chapters 1 and 2's exercises (tests/test_exercises.py runs them).
dead_fraction and warmup_ramp also have references here, written differently from chapters 3-4's."""
from __future__ import annotations

import math

import torch

from aen_mini.eval.solve import solve_for_sae


def relu_sae_forward(x, W_enc, b_enc, W_dec, b_dec):
    h = torch.relu((x - b_dec) @ W_enc.T + b_enc)
    return h @ W_dec.T + b_dec, h


def sae_loss(x, x_hat, h, l1_coeff):
    return (x - x_hat).pow(2).sum(-1).mean() + l1_coeff * h.abs().sum(-1).mean()


def elastic_net_prox(z, l1, l2):
    return (z - l1).clamp_min(0) / (1 + 2 * l2)


def lipschitz_bound(D, l2):
    s = torch.linalg.svdvals(D.double())
    mu = (s.min().item() ** 2 if D.shape[1] <= D.shape[0] else 0.0) + 2 * l2
    return s.max().item() / mu if mu > 0 else math.inf


def adaptive_weights(a, gamma, ref_pct):
    ref = a.topk(math.ceil(ref_pct * len(a))).values.mean()
    return (ref / a.clamp_min(1e-5)).pow(gamma).clamp(0.01, 10.0)


def explained_variance(x, x_hat):
    return 1 - (x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()


def sae_objective(sae, x, h, l2):
    return (x - sae.decode(h)).pow(2).sum(-1) + sae.l1_coeff * h.abs().sum(-1) + l2 * h.pow(2).sum(-1)


def amortisation_gap(sae, x, l2=None):
    """The reference; l2=0.0 gives the mistake of leaving out the ridge term."""
    l2 = getattr(sae, "l2_coeff", 0.0) if l2 is None else l2
    h_star = solve_for_sae(sae, x, tol=1e-10).h.float()
    return (sae_objective(sae, x, sae.encode(x), l2) - sae_objective(sae, x, h_star, l2)).mean().item()


def dead_fraction(h):
    return (h == 0).all(dim=0).float().mean().item()


def warmup_ramp(step, warmup_start, warmup_steps):
    if warmup_steps == 0:
        return float(step >= warmup_start)
    return min(max((step - warmup_start) / warmup_steps, 0.0), 1.0)


SOLUTIONS = {
    "relu_sae_forward": relu_sae_forward,
    "sae_loss": sae_loss,
    "elastic_net_prox": elastic_net_prox,
    "lipschitz_bound": lipschitz_bound,
    "adaptive_weights": adaptive_weights,
    "explained_variance": explained_variance,
    "amortisation_gap": amortisation_gap,
    "dead_fraction": dead_fraction,
    "warmup_ramp": warmup_ramp,
}

# (exercise, wrong answer, words the feedback must contain: the failing input and the hint)
MISTAKES = [
    ("relu_sae_forward", lambda x, We, be, Wd, bd: ((x @ We.T + be) @ Wd.T + bd, x @ We.T + be),
     ["test input 0", "ReLU"]),
    ("relu_sae_forward", lambda x, We, be, Wd, bd: (torch.relu(x @ We.T + be) @ Wd.T + bd, torch.relu(x @ We.T + be)),
     ["test input 0", "subtract the decoder bias"]),
    ("sae_loss", lambda x, xh, h, l1: (x - xh).pow(2).sum() + l1 * h.abs().sum(), ["batch of 5", "mean over the batch"]),
    ("sae_loss", lambda x, xh, h, l1: (x - xh).pow(2).mean() + l1 * h.abs().sum(-1).mean(), ["sum the squared error"]),
    ("elastic_net_prox", lambda z, l1, l2: (z - l1).clamp_min(0) / (1 + l2), ["l2=0.25", "1 + 2 l2"]),
    ("elastic_net_prox", lambda z, l1, l2: torch.sign(z) * (z.abs() - l1).clamp_min(0) / (1 + 2 * l2),
     ["z=[-2, -0.3", "nonnegative"]),
    ("lipschitz_bound", lambda D, l2: torch.linalg.svdvals(D).max().item() / (2 * l2 + 1e-300),
     ["full column rank", "l2=0.0"]),
    ("lipschitz_bound", lambda D, l2: torch.linalg.svdvals(D).max().item() / (l2 if l2 else 1e-300),
     ["overcomplete", "2 l2"]),
    ("adaptive_weights", lambda a, g, p: (a.clamp_min(1e-5) / a.max()).pow(g).clamp(0.01, 10), ["gamma=1.0", "ref / a_j"]),
    ("adaptive_weights", lambda a, g, p: (a.topk(math.ceil(p * len(a))).values.mean() / a.clamp_min(1e-5)).pow(g),
     ["a=[1, 0.5, 0.25, 0.1, 0.05]", "clip"]),
    ("adaptive_weights", lambda a, g, p: (a.topk(max(1, int(p * len(a)))).values.mean() / a.clamp_min(1e-5))
     .pow(g).clamp(0.01, 10), ["ref_pct=0.3", "ceil(ref_pct * m)"]),
    ("explained_variance", lambda x, xh: 1 - (x - xh).pow(2).sum() / x.pow(2).sum(), ["test input 0", "centre x"]),
    ("explained_variance", lambda x, xh: (x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum(), ["unexplained share"]),
    ("explained_variance", lambda x, xh: (1 - (x - xh).pow(2).sum(1) / (x - x.mean(0)).pow(2).sum(1)).mean(),
     ["per-row ratios"]),
    ("amortisation_gap", lambda sae, x: amortisation_gap(sae, x) / 2, ["relu_l1", "half the SAE loss"]),
    ("amortisation_gap", lambda sae, x: -amortisation_gap(sae, x), ["test input 0", "other way"]),
    ("amortisation_gap", lambda sae, x: amortisation_gap(sae, x, l2=0.0), ["elastic_net", "ridge term"]),
    ("dead_fraction", lambda h: (h == 0).all(dim=0).sum().item(), ["codes of shape (6, 10)", "divide by m"]),
    ("dead_fraction", lambda h: 100 * (h == 0).all(dim=0).float().mean().item(), ["percentage"]),
    ("dead_fraction", lambda h: (h == 0).any(dim=0).float().mean().item(), [".all(dim=0)"]),
    ("dead_fraction", lambda h: (h == 0).float().mean().item(), ["whole column"]),
    ("warmup_ramp", lambda step, start, steps: (step - start) / steps if steps else float(step >= start),
     ["step=0, warmup_start=10", "clip the ramp"]),
    ("warmup_ramp", lambda step, start, steps: min(max(step / (start + steps), 0.0), 1.0) if steps
     else float(step >= start), ["step=10", "starts at warmup_start"]),
    ("warmup_ramp", lambda step, start, steps: min(max((step - start) / max(steps, 1), 0.0), 1.0) if steps else 0.0,
     ["warmup_steps=0", "is a step"]),
]
