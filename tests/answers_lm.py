"""References and typical wrong answers for chapters 5 and 6's exercises (tests/test_exercises.py runs them)."""
from __future__ import annotations

import math

import torch.nn.functional as F


def spliced_activation(x, reconstruct):
    scale = x.norm(dim=1, keepdim=True) / math.sqrt(x.shape[1])
    return reconstruct(x / scale) * scale


def dead_pct_by_window(first_fire, windows, n_rows):
    return [100.0 * float((first_fire >= w).float().mean()) for w in windows]


def next_token_kl(clean, patched):
    lp, lq = F.log_softmax(clean, -1), F.log_softmax(patched, -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean()


def sae_train_memory_gb(d_in, d_sae, batch_size, compute_bytes):
    return 16 * (2 * d_in * d_sae + d_in + d_sae) / 1e9 + compute_bytes * batch_size * (2 * d_in + 3 * d_sae) / 1e9


def tokens_to_see(density, confidence):
    return math.ceil(math.log(1 - confidence) / math.log(1 - density))


def plan_fits(d_in, d_sae, tokens, batch_size, gpu_gb):
    from aen_mini.run.planning import plan_run

    plan = plan_run(d_in, d_sae, tokens, batch_size, compute_dtype="bf16")
    return plan.total_gpu_gb <= gpu_gb, plan.hours_at["100 TFLOP/s"]


SOLUTIONS = {"plan_fits": plan_fits, "spliced_activation": spliced_activation, "dead_pct_by_window": dead_pct_by_window,
             "next_token_kl": next_token_kl, "sae_train_memory_gb": sae_train_memory_gb, "tokens_to_see": tokens_to_see}

MISTAKES = [
    ("spliced_activation", lambda x, r: r(x / (x.norm(dim=1, keepdim=True) / math.sqrt(x.shape[1]))), ["multiply it back"]),
    ("spliced_activation", lambda x, r: r(x), ["trained on normalised inputs"]),
    ("spliced_activation", lambda x, r: (lambda s: r(x / s) * s)(x.norm(dim=1).mean() / math.sqrt(x.shape[1])), ["own scale"]),
    ("dead_pct_by_window", lambda f, ws, n: [100.0 * float((f > w).float().mean()) for w in ws], ["use >="]),
    ("dead_pct_by_window", lambda f, ws, n: [float((f >= w).float().mean()) for w in ws], ["percentages"]),
    ("next_token_kl", lambda c, p: next_token_kl(p, c), ["KL(clean || patched)"]),
    ("next_token_kl", lambda c, p: next_token_kl(c, p) * c.shape[0], ["average over positions"]),
    ("next_token_kl", lambda c, p: (F.softmax(c, -1) * (c - p)).sum(-1).mean(), ["log_softmax"]),
    ("sae_train_memory_gb", lambda d, m, b, c: 4 * (2 * d * m + d + m) / 1e9 + c * b * (2 * d + 3 * m) / 1e9, ["4 copies"]),
    ("sae_train_memory_gb", lambda d, m, b, c: 16 * (2 * d * m + d + m) / 1e9, ["one step's activations"]),
    ("tokens_to_see", lambda p, q: math.log(1 - q) / math.log(1 - p), ["round up"]),
    ("tokens_to_see", lambda p, q: math.ceil(q / p), ["(1 - p)^w"]),
    ("plan_fits", lambda d, m, t, b, gb: (True, 6 * d * m * t / 1e14 / 3600), ["12 d m"]),
    ("plan_fits", lambda d, m, t, b, gb: (plan_fits(d, m, t, b, gb)[0], 60 * plan_fits(d, m, t, b, gb)[1]), ["minutes"]),
]
