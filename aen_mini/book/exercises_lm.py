"""Checkers for the language-model chapters (5 and 6); registered in ``aen_mini.book.exercises.EXERCISES``.

    5: spliced_activation(x, reconstruct) -> x_hat, the SAE's reconstruction mapped back to x's per-token scale
    5: dead_pct_by_window(first_fire, windows, n_rows) -> [dead % over the first w tokens, for each w]
    5: next_token_kl(logits_clean, logits_patched) -> mean over positions of KL(clean || patched), nats
    6: sae_train_memory_gb(d_in, d_sae, batch_size, compute_bytes) -> GB of GPU memory for one training step
    6: tokens_to_see(density, confidence) -> tokens needed to see a latent of that density fire at least once
    6: plan_fits(d_in, d_sae, tokens, batch_size, gpu_gb) -> (fits in bf16, hours of SAE steps at 100 TFLOP/s)
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from aen_mini.data.activations import ActivationNormalizer
from aen_mini.book.exercises import Feedback, _gen, _matches, _mismatch, _run_cases, exercise
from aen_mini.eval.features import dead_pct_by_window
from aen_mini.run.planning import plan_run


# --- chapter 5 ---------------------------------------------------------------------------------------------
def _shrink(x: torch.Tensor) -> torch.Tensor:
    """A stand-in 'SAE' on normalised inputs: shrinks towards a fixed direction (not scale-equivariant)."""
    return 0.8 * x + 0.1


@exercise("spliced_activation")
def check_spliced_activation(fn: Callable[..., Any]) -> Feedback:
    """fn(x (N, d), reconstruct) -> (N, d): normalise each row to norm sqrt(d), reconstruct, scale back."""
    g = _gen(500)
    norm = ActivationNormalizer
    cases = []
    for n, d, spread in ((4, 6, 1.0), (8, 16, 30.0), (3, 5, 0.01)):
        x = torch.randn(n, d, generator=g) * torch.logspace(0, math.log10(spread) if spread != 1 else 0, n).unsqueeze(1)
        x_n, scale = norm(d).normalize(x)
        cases.append((f"{n} tokens of d={d} with norms from {x.norm(dim=1).min():.3g} to {x.norm(dim=1).max():.3g}",
                      (x, _shrink), norm(d).denormalize(_shrink(x_n), scale)))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, reconstruct = args
        d = x.shape[1]
        x_n, scale = norm(d).normalize(x)
        if _matches(got, reconstruct(x_n)):
            return "you returned the reconstruction in the normalised space: multiply it back by each token's scale."
        if _matches(got, reconstruct(x)):
            return "the SAE was trained on normalised inputs: divide each token by ||x|| / sqrt(d) first."
        if _matches(got, reconstruct(x_n) / scale):
            return "un-normalising multiplies by the scale ||x|| / sqrt(d); it does not divide."
        one = x.norm(dim=1).mean() / math.sqrt(d)
        if _matches(got, reconstruct(x / one) * one):
            return "use each token's own scale ||x_i|| / sqrt(d), not one scale for the whole batch."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("x_hat", got, exp), hint)


@exercise("dead_pct_by_window")
def check_dead_pct_by_window(fn: Callable[..., Any]) -> Feedback:
    """fn(first_fire (m,), windows, n_rows) -> list of dead % (0-100), one per window."""
    g = _gen(510)
    cases = []
    for m, n_rows, windows in ((4, 100, [1, 6, 100]), (50, 1000, [10, 100, 1000]), (7, 20, [20])):
        first = torch.randint(0, n_rows + 1, (m,), generator=g)
        first[0] = 0
        first[-1] = n_rows  # never fired
        if m == 4:
            first = torch.tensor([0, 5, 99, 100])
        expected = torch.tensor(dead_pct_by_window(first, windows, n_rows), dtype=torch.float64)
        cases.append((f"first_fire={first.tolist()[:8]}{'...' if m > 8 else ''}, windows={windows}, n_rows={n_rows}",
                      (first, windows, n_rows), expected))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        first, windows, _ = args
        if _matches(got, torch.tensor([100.0 * float((first > w).double().mean()) for w in windows])):
            return "a latent whose first firing is at index w is outside a window of w tokens (indices 0..w-1): use >=."
        if _matches(got, torch.tensor([float((first >= w).double().mean()) for w in windows])):
            return "return percentages (0-100), not fractions."
        if _matches(got, torch.tensor([100.0 * float((first < w).double().mean()) for w in windows])):
            return "that is the share of latents *seen* in the window; dead % is the rest."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("dead %", got, exp), hint)


def _kl(clean: torch.Tensor, patched: torch.Tensor) -> torch.Tensor:
    lp, lq = F.log_softmax(clean.double(), -1), F.log_softmax(patched.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean()


@exercise("next_token_kl")
def check_next_token_kl(fn: Callable[..., Any]) -> Feedback:
    """fn(logits_clean (N, V), logits_patched (N, V)) -> scalar: mean over rows of KL(clean || patched)."""
    g = _gen(520)
    cases = []
    for n, v, noise in ((3, 5, 1.0), (10, 50, 0.3), (4, 7, 3.0)):
        clean = 2 * torch.randn(n, v, generator=g)
        patched = clean + noise * torch.randn(n, v, generator=g)
        cases.append((f"{n} positions, vocabulary {v}", (clean, patched), _kl(clean, patched)))
    same = torch.randn(2, 6, generator=g)
    cases.append(("identical logits", (same, same.clone()), torch.tensor(0.0, dtype=torch.float64)))
    shifted = same + 5.0
    cases.append(("logits shifted by a constant (the same distribution)", (same, shifted), torch.tensor(0.0, dtype=torch.float64)))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        clean, patched = args
        if _matches(got, _kl(patched, clean)):
            return "that is KL(patched || clean); we measure KL(clean || patched): expectations under the clean model."
        if _matches(got, _kl(clean, patched) * clean.shape[0]):
            return "average over positions, do not sum."
        p = F.softmax(clean.double(), -1)
        if _matches(got, (p * (clean.double() - patched.double())).sum(-1).mean()):
            return "logits are not log-probabilities: apply log_softmax to both first."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the KL", got, exp), hint)


# --- chapter 6 ---------------------------------------------------------------------------------------------
@exercise("sae_train_memory_gb")
def check_sae_train_memory_gb(fn: Callable[..., Any]) -> Feedback:
    """fn(d_in, d_sae, batch_size, compute_bytes) -> GB (1e9 bytes): fp32 weights, gradients and Adam's two moments
    of W_enc, W_dec, b_enc, b_dec, plus one step's activations x, x_hat (d_in each) and pre-activations, codes and
    their gradient (d_sae each) in the compute dtype."""
    shapes = ((512, 4096, 8192, 2), (4096, 131072, 4096, 2), (576, 4608, 8192, 4), (10, 20, 3, 2))
    dtype = {2: "bf16", 4: "fp32"}
    cases = [(f"d_in={d}, d_sae={m}, batch={b}, {c}-byte compute dtype", (d, m, b, c),
              torch.tensor(plan_run(d, m, 10 * b, b, dtype[c]).total_gpu_gb, dtype=torch.float64))
             for d, m, b, c in shapes]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        d, m, b, c = args
        params = 2 * d * m + d + m
        acts = c * b * (2 * d + 3 * m) / 1e9
        if _matches(got, torch.tensor(4 * params / 1e9 + acts)):
            return "the weights are only a quarter: add their gradients and Adam's two moments (4 copies in fp32)."
        if _matches(got, torch.tensor(16 * 2 * d * m / 1e9 + acts)):
            return "count the biases b_enc (d_sae) and b_dec (d_in) too."
        if _matches(got, torch.tensor(16 * params / 1e9)):
            return "add one step's activations: batch x (2 d_in + 3 d_sae) values in the compute dtype."
        if _matches(got, torch.tensor(16 * params / 2**30 + c * b * (2 * d + 3 * m) / 2**30)):
            return "use GB = 1e9 bytes, as plan_run does, not GiB."
        return None

    def compare(got: Any, expected: torch.Tensor) -> str | None:
        value = got if isinstance(got, (int, float)) else None
        if value is None:
            return _mismatch("the memory", got, expected)
        return None if math.isclose(value, float(expected), rel_tol=1e-3) else f"the memory is {value:.6g} GB, expected {float(expected):.6g} GB"

    return _run_cases(fn, cases, compare, hint)


@exercise("tokens_to_see")
def check_tokens_to_see(fn: Callable[..., Any]) -> Feedback:
    """fn(density, confidence) -> the smallest whole number of tokens w with 1 - (1 - density)^w >= confidence."""
    cases = []
    for p, q in ((1e-4, 0.95), (1e-6, 0.99), (0.5, 0.5), (0.01, 0.999), (1e-3, 0.5)):
        w = math.ceil(math.log1p(-q) / math.log1p(-p))
        cases.append((f"density={p:g}, confidence={q:g}", (p, q), torch.tensor(float(w), dtype=torch.float64)))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        p, q = args
        exact = math.log1p(-q) / math.log1p(-p)
        if _matches(got, torch.tensor(exact)):
            return "round up to a whole number of tokens (math.ceil)."
        if _matches(got, torch.tensor(float(math.ceil(q / p)))) or _matches(got, torch.tensor(float(math.ceil(1 / p)))):
            return "the chance of missing the latent in w tokens is (1 - density)^w: solve (1 - p)^w <= 1 - confidence."
        if _matches(got, torch.tensor(float(math.ceil(-math.log(q) / p)))):
            return "it is the chance of *missing* every time, (1 - p)^w, that must fall to 1 - confidence."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("w", got, exp), hint)


@exercise("plan_fits")
def check_plan_fits(fn: Callable[..., Any]) -> Feedback:
    """fn(d_in, d_sae, tokens, batch_size, gpu_gb) -> (plan_run(...bf16).total_gpu_gb <= gpu_gb, hours at 100 TFLOP/s)."""
    cases = []
    for d, m, t, b, gb in ((576, 18432, 204_800_000, 8192, 24), (4096, 131072, 409_600_000, 4096, 80),
                           (4096, 131072, 409_600_000, 4096, 16), (512, 4096, 204_800_000, 8192, 2)):
        plan = plan_run(d, m, t, b, compute_dtype="bf16")
        expected = torch.tensor([float(plan.total_gpu_gb <= gb), plan.hours_at["100 TFLOP/s"]], dtype=torch.float64)
        cases.append((f"d_in={d}, d_sae={m}, tokens={t:,}, batch={b}, a {gb} GB GPU", (d, m, t, b, gb), expected))

    def as_pair(got: Any) -> Any:
        return [float(got[0]), float(got[1])] if isinstance(got, (tuple, list)) and len(got) == 2 else got

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        d, m, t, b, _ = args
        plan = plan_run(d, m, t, b, compute_dtype="bf16")
        pair = as_pair(got)
        if isinstance(pair, list) and math.isclose(pair[1], plan.hours_at["100 TFLOP/s"] * 60, rel_tol=1e-3):
            return "return hours, not minutes."
        if isinstance(pair, list) and math.isclose(pair[1], 6 * d * m * t / 1e14 / 3600, rel_tol=1e-3):
            return "a training token costs 12 d m FLOP (forward and backward of encoder and decoder), not 6 d m."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("(fits, hours)", as_pair(got), exp), hint)
