"""Checkers for chapters 1 and 2 (an SAE in one sitting; the geometry of L1); registered in
``aen_mini.book.exercises.EXERCISES``. The list of exercises is in that module's docstring."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from aen_mini.eval.metrics import amortisation_gap, explained_variance
from aen_mini.sae import make_sae
from aen_mini.sae.adaptive import AdaptiveL1Weights
from aen_mini.eval.solve import lipschitz_bound, solve_for_sae, solve_sparse_codes
from aen_mini.book.exercises import Feedback, _as_float64, _fmt, _gen, _matches, _mismatch, _run_cases, exercise


# --- chapter 1 ---------------------------------------------------------------------------------------------
def _sae_params(seed: int, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _gen(seed)
    W_dec = torch.nn.functional.normalize(torch.randn(d_in, d_sae, generator=g), dim=0)
    W_enc = torch.randn(d_sae, d_in, generator=g) / d_in**0.5
    return W_enc, 0.3 * torch.randn(d_sae, generator=g), W_dec, torch.randn(d_in, generator=g)


def _reference_sae(W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, l1_coeff: float = 0.0):
    sae = make_sae("relu_l1", W_dec.shape[0], W_dec.shape[1], l1_coeff=l1_coeff)
    with torch.no_grad():
        for name, value in zip(("W_enc", "b_enc", "W_dec", "b_dec"), (W_enc, b_enc, W_dec, b_dec)):
            getattr(sae, name).copy_(value)
    return sae


@exercise("relu_sae_forward")
def check_relu_sae_forward(fn: Callable[..., Any]) -> Feedback:
    """fn(x, W_enc (d_sae, d_in), b_enc, W_dec (d_in, d_sae), b_dec) -> (x_hat, h): the ReLU SAE's forward."""
    cases = []
    for seed, (batch, d_in, d_sae) in enumerate([(4, 3, 5), (6, 4, 8), (1, 2, 7)]):
        params = _sae_params(seed, d_in, d_sae)
        x = torch.randn(batch, d_in, generator=_gen(100 + seed))
        with torch.no_grad():
            x_hat, h = _reference_sae(*params)(x)
        cases.append((f"test input {seed} (x of shape {tuple(x.shape)}, d_sae={d_sae})", (x, *params), (x_hat, h)))

    def compare(got: Any, expected: tuple[Tensor, Tensor]) -> str | None:
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return "your function must return the pair (x_hat, h)"
        return _mismatch("h", got[1], expected[1]) or _mismatch("x_hat", got[0], expected[0])

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, W_enc, b_enc, W_dec, b_dec = args
        h = _as_float64(got[1])
        if h is not None and (h < 0).any():
            return "h has negative entries: the codes pass through a ReLU."
        if _matches(got[1], torch.relu(x @ W_enc.T + b_enc)):
            return "subtract the decoder bias from x before encoding: W_enc (x - b_dec) + b_enc."
        if h is not None and h.shape == (x.shape[0], W_dec.shape[1]) and _matches(got[0], h @ W_dec.T.double()):
            return "the reconstruction adds the decoder bias back: x_hat = W_dec h + b_dec."
        return None

    return _run_cases(fn, cases, compare, hint)


@exercise("sae_loss")
def check_sae_loss(fn: Callable[..., Any]) -> Feedback:
    """fn(x, x_hat, h, l1_coeff) -> scalar: mean_b ||x - x_hat||^2 + l1_coeff * mean_b sum_j |h_j|."""
    cases = []
    for seed, (batch, d_in, d_sae, l1_coeff) in enumerate([(5, 3, 6, 0.1), (8, 4, 4, 0.0), (3, 2, 9, 2.5)]):
        params = _sae_params(10 + seed, d_in, d_sae)
        sae = _reference_sae(*params, l1_coeff=l1_coeff)
        x = torch.randn(batch, d_in, generator=_gen(200 + seed))
        with torch.no_grad():
            x_hat, h = sae(x)
            loss = sae.loss(x)["loss"].double()
        cases.append((f"test input {seed} (batch of {batch}, d_in={d_in}, l1_coeff={l1_coeff})",
                      (x, x_hat, h, l1_coeff), loss))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, x_hat, h, l1_coeff = args
        sq, l1 = (x - x_hat).double().pow(2), h.double().abs()
        batch, d_in = x.shape
        known = {
            "the loss is a mean over the batch, not a sum.": sq.sum() + l1_coeff * l1.sum(),
            "sum the squared error over features (then average over the batch), as the SAE loss does.":
                sq.mean() + l1_coeff * l1.sum(-1).mean(),
            "the squared error is not square-rooted: it is ||x - x_hat||^2, not ||x - x_hat||.":
                sq.sum(-1).sqrt().mean() + l1_coeff * l1.sum(-1).mean(),
            "the l1 term sums |h_j| over latents before averaging over the batch.":
                sq.sum(-1).mean() + l1_coeff * l1.mean(),
        }
        return next((message for message, value in known.items() if _matches(got, value)), None)

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the loss", got, exp), hint)


@exercise("explained_variance")
def check_explained_variance(fn: Callable[..., Any]) -> Feedback:
    """fn(x (B, d), x_hat (B, d)) -> float: 1 - sum ||x - x_hat||^2 / sum ||x - mean_b(x)||^2 over the batch."""
    cases = []
    for seed, (batch, d_in, offset, noise) in enumerate([(6, 3, 2.0, 0.3), (10, 5, -1.0, 1.0), (4, 2, 5.0, 2.0)]):
        g = _gen(250 + seed)
        x = torch.randn(batch, d_in, generator=g) + offset  # an offset: centring matters
        x_hat = x + noise * torch.randn(batch, d_in, generator=g)
        cases.append((f"test input {seed} (x of shape {tuple(x.shape)}, mean {offset})", (x, x_hat),
                      torch.tensor(explained_variance(x, x_hat), dtype=torch.float64)))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, x_hat = (a.double() for a in args)
        err, centred = (x - x_hat).pow(2), (x - x.mean(dim=0)).pow(2)
        known = {
            "centre x on its batch mean before summing: the baseline is predicting mean(x), not 0.":
                1 - err.sum() / x.pow(2).sum(),
            "that is the unexplained share; EV is 1 minus it.": err.sum() / centred.sum(),
            "sum the errors over the whole batch first, then divide once (a mean of per-row ratios is another "
            "number).": (1 - err.sum(1) / centred.sum(1)).mean(),
            "take the mean over the batch (dim=0), one mean per feature, not the mean of each row.":
                1 - err.sum() / (x - x.mean(dim=1, keepdim=True)).pow(2).sum(),
        }
        return next((message for message, value in known.items() if _matches(got, value)), None)

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the explained variance", got, exp), hint)


# --- chapter 2 ---------------------------------------------------------------------------------------------
@exercise("elastic_net_prox")
def check_elastic_net_prox(fn: Callable[..., Any]) -> Feedback:
    """fn(z, l1, l2) -> h, elementwise argmin_{h >= 0} 1/2 (h - z)^2 + l1 h + l2 h^2 (the solver's convention)."""
    z = torch.tensor([-2.0, -0.3, 0.0, 0.05, 0.4, 1.0, 3.0], dtype=torch.float64)
    cases = []
    for l1, l2 in [(0.5, 0.0), (0.5, 0.25), (0.0, 1.0), (1.5, 0.1)]:
        # The exact solver on an orthonormal dictionary (D = I) separates into exactly this scalar problem.
        exact = solve_sparse_codes(z[None], torch.eye(len(z), dtype=torch.float64), l1, l2, tol=1e-12).h[0]
        cases.append((f"z={_fmt(z)}, l1={l1}, l2={l2}", (z, l1, l2), exact))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        z, l1, l2 = args
        h = _as_float64(got)
        if h is not None and (h < 0).any():
            return "the codes are nonnegative (the SAE's ReLU): negative z must map to 0."
        if _matches(got, (z - l1).clamp_min(0) / (1 + l2)):
            return "the derivative of l2 h^2 is 2 l2 h, so the denominator is 1 + 2 l2."
        if _matches(got, (z - l1).clamp_min(0)):
            return "you applied the soft threshold but not the l2 shrinkage that follows it."
        if _matches(got, (z / (1 + 2 * l2) - l1).clamp_min(0)):
            return "threshold first, then shrink: max(z - l1, 0) / (1 + 2 l2)."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("h", got, exp), hint)


@exercise("lipschitz_bound")
def check_lipschitz_bound(fn: Callable[..., Any]) -> Feedback:
    """fn(D (n, m), l2) -> float: ||D||_2 / (lambda_min(DᵀD) + 2 l2), inf when the denominator is 0."""
    g = _gen(300)
    square = torch.randn(3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    wide = torch.nn.functional.normalize(torch.randn(2, 5, generator=g, dtype=torch.float64), dim=0)
    tall = torch.randn(5, 2, generator=g, dtype=torch.float64)
    cases = [
        (f"an overcomplete D of shape {tuple(D.shape)} with l2={l2}" if D.shape[1] > D.shape[0]
         else f"a D of shape {tuple(D.shape)} with full column rank and l2={l2}",
         (D, l2), torch.tensor(lipschitz_bound(D, l2), dtype=torch.float64))
        for D, l2 in [(wide, 0.1), (square, 0.0), (tall, 0.3), (wide, 1.0), (wide, 0.0)]
    ]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        D, l2 = args
        s = torch.linalg.svdvals(D)
        lam_min = s.min() ** 2 if D.shape[1] <= D.shape[0] else torch.tensor(0.0, dtype=torch.float64)
        if _matches(got, s.max() / (lam_min + l2)):
            return "the ridge term l2 ||h||^2 adds 2 l2 (not l2) to the curvature."
        if _matches(got, s.max() ** 2 / (lam_min + 2 * l2)):
            return "the numerator is the spectral norm ||D||_2 (the largest singular value), not its square."
        if D.shape[1] > D.shape[0] and _matches(got, s.max() / (s.min() ** 2 + 2 * l2)):
            return "with more atoms than dimensions DᵀD is singular: lambda_min(DᵀD) = 0, not s_min(D)^2."
        if l2 == 0 and D.shape[1] > D.shape[0]:
            return "with l2 = 0 and an overcomplete D the curvature is 0 and the bound is infinite (math.inf)."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the bound", got, exp), hint)


@exercise("adaptive_weights")
def check_adaptive_weights(fn: Callable[..., Any]) -> Feedback:
    """fn(a (m,), gamma, ref_pct) -> w (m,): clip((ref / max(a_j, 1e-5))^gamma, 0.01, 10), ref = mean of the
    top ceil(ref_pct * m) entries of a (the AEN-SAE rule after warm-up)."""
    usages = [
        torch.tensor([1.0, 0.5, 0.25, 0.1, 0.05]),
        torch.tensor([2.0, 0.0, 0.3, 1e-7, 0.9, 0.6, 0.02, 1.1]),
        torch.tensor([0.2, 0.2, 0.2, 0.2]),
    ]
    cases = []
    # (usages[1], 1.0, 0.3): ceil(0.3 * 8) = 3 top entries, where max(1, int(0.3 * 8)) would take 2.
    for a, gamma, ref_pct in [(usages[0], 1.0, 0.2), (usages[1], 0.5, 0.25), (usages[1], 2.0, 0.1), (usages[2], 1.5, 0.5),
                              (usages[1], 1.0, 0.3)]:
        rule = AdaptiveL1Weights(len(a), gamma, ema_beta=0.9, ref_pct=ref_pct, warmup_start=0, warmup_steps=0)
        rule.ema.copy_(a)
        cases.append((f"a={_fmt(a)}, gamma={gamma}, ref_pct={ref_pct}", (a, gamma, ref_pct),
                      rule.weights().double()))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        a, gamma, ref_pct = args
        ref = a.topk(max(1, math.ceil(ref_pct * len(a)))).values.mean()
        if _matches(got, (a.clamp_min(1e-5) / ref).pow(gamma).clamp(0.01, 10.0)):
            return "the ratio is ref / a_j: rarely active latents (small a_j) get the larger weight."
        if _matches(got, (ref / a.clamp_min(1e-5)).pow(gamma)):
            return "clip the weights to [0.01, 10]."
        if _matches(got, (a.max() / a.clamp_min(1e-5)).pow(gamma).clamp(0.01, 10.0)):
            return "ref is the mean of the top ceil(ref_pct * m) entries of a, not the maximum."
        floor_ref = a.topk(max(1, int(ref_pct * len(a)))).values.mean()
        if _matches(got, (floor_ref / a.clamp_min(1e-5)).pow(gamma).clamp(0.01, 10.0)):
            return "round the number of reference entries up: ceil(ref_pct * m), not int(ref_pct * m)."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("w", got, exp), hint)


def _trained_like_sae(variant: str, seed: int, d_in: int, d_sae: int, **coeffs: float):
    """A small SAE with random (untied) weights: its encoder is far from the exact codes, as early in training."""
    sae = make_sae(variant, d_in, d_sae, seed=seed, **coeffs)
    W_enc, b_enc, W_dec, b_dec = _sae_params(seed, d_in, d_sae)
    with torch.no_grad():
        for name, value in zip(("W_enc", "b_enc", "W_dec", "b_dec"), (W_enc, b_enc, W_dec, b_dec)):
            getattr(sae, name).copy_(value)
    return sae


@exercise("amortisation_gap")
def check_amortisation_gap(fn: Callable[..., Any]) -> Feedback:
    """fn(sae, x) -> float: mean_b [L(x, encoder codes) - L(x, exact codes)] with the SAE's own per-sample
    objective L(x, h) = ||x - decode(h)||^2 + l1 sum_j |h_j| + l2 sum_j h_j^2 (no adaptive weights here)."""
    cases = []
    for seed, (variant, d_in, d_sae, coeffs) in enumerate([
        ("relu_l1", 4, 6, {"l1_coeff": 0.5}),
        ("elastic_net", 3, 8, {"l1_coeff": 0.3, "l2_coeff": 0.4}),
        ("elastic_net", 5, 5, {"l1_coeff": 1.0, "l2_coeff": 0.1}),
    ]):
        sae = _trained_like_sae(variant, 500 + seed, d_in, d_sae, **coeffs)
        x = 2 * torch.randn(16, d_in, generator=_gen(600 + seed))
        expected = torch.tensor(amortisation_gap(sae, x, tol=1e-10)["gap"], dtype=torch.float64)
        cases.append((f"test input {seed} ({variant}, {coeffs}, x of shape {tuple(x.shape)})", (sae, x), expected))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        sae, x = args
        l2 = float(getattr(sae, "l2_coeff", 0.0))
        with torch.no_grad():
            h_enc, h_star = sae.encode(x).double(), solve_for_sae(sae, x, tol=1e-10).h.double()

            def objective(h: Tensor, l1: float, l2: float) -> Tensor:
                return ((x - sae.decode(h.float())).double().pow(2).sum(1) + l1 * h.abs().sum(1)
                        + l2 * h.pow(2).sum(1))

            l1 = float(sae.l1_coeff)
            gap = objective(h_enc, l1, l2) - objective(h_star, l1, l2)
            known = {
                "the solver minimises half the SAE loss (1/2 ||x - D h||^2 + l1/2 ...): evaluate the SAE's own "
                "objective, not the solver's, or the gap comes out halved.": gap.mean() / 2,
                "the gap is L(encoder codes) - L(exact codes), which is >= 0: you subtracted the other way.":
                    -gap.mean(),
                "include the ridge term l2 sum_j h_j^2 of the elastic net in the objective.":
                    (objective(h_enc, l1, 0.0) - objective(h_star, l1, 0.0)).mean(),
                "compare objectives, not codes: the gap is a difference of losses.":
                    (h_enc - h_star).norm() / h_star.norm(),
            }
        if l2 == 0:
            known.pop("include the ridge term l2 sum_j h_j^2 of the elastic net in the objective.")
        return next((message for message, value in known.items() if _matches(got, value)), None)

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the gap", got, exp), hint)
