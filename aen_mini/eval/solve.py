"""Exact sparse coding: the codes an SAE encoder *should* produce for its own decoder.

Solves, per row x of a batch,

    min_h  1/2 ||x - D h||^2 + l1 * sum_j w_j |h_j| + l2 * ||h||^2      (h >= 0 when nonneg)

with FISTA, O'Donoghue & Candès gradient restarts, step 1/L with L = ||D||_2^2 + 2 l2, and a stopping
rule on the KKT residual, so "converged" is a checkable optimality certificate rather than a stall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aen_mini.validate import check_activations, check_nonnegative, check_positive_int

__all__ = ["SparseCodes", "kkt_residual", "lipschitz_bound", "rank_deficient", "solve_for_sae", "solve_sparse_codes"]


def rank_deficient(singular: Tensor, rows: int, cols: int) -> bool:
    """True when a (rows, cols) matrix with these singular values has numerical rank < cols.

    Never test a computed singular value against exactly 0: for a rank-deficient matrix LAPACK returns round-off
    whose size depends on the CPU (0 on one machine, 8e-20 on another). The tolerance is numpy.linalg.matrix_rank's:
    s_max * max(rows, cols) * machine epsilon of the dtype.
    """
    if cols > min(rows, singular.numel()):
        return True
    tol = singular.max() * max(rows, cols) * torch.finfo(singular.dtype).eps
    return bool(singular.min() <= tol)


@dataclass
class SparseCodes:
    """Solver output: codes h (B, m), final KKT residual per row (B,), iterations run, all rows < tol."""

    h: Tensor
    kkt_residual: Tensor
    n_iter: int
    converged: bool


def _check_tensor(name: str, t: Tensor, ndim: int) -> None:
    """Finite floating tensor with `ndim` dimensions (for D and weights; rows of data use check_activations)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")


def _validated(
    x: Tensor, D: Tensor, l1: float, l2: float, weights: Tensor | None
) -> tuple[Tensor, Tensor, float, float, Tensor]:
    """Checked float64 copies of the problem data, with weights defaulting to ones."""
    check_activations(x, name="x")
    _check_tensor("D", D, 2)
    if x.shape[1] != D.shape[0]:
        raise ValueError(f"x has {x.shape[1]} features but D has {D.shape[0]} rows")
    if D.shape[1] == 0:
        raise ValueError("D must have at least one column (atom)")
    l1, l2 = check_nonnegative("l1", l1), check_nonnegative("l2", l2)
    if weights is None:
        weights = torch.ones(D.shape[1], dtype=torch.float64, device=D.device)
    else:
        _check_tensor("weights", weights, 1)
        if weights.shape[0] != D.shape[1]:
            raise ValueError(f"weights must have shape ({D.shape[1]},), got {tuple(weights.shape)}")
        if (weights < 0).any():
            raise ValueError("weights must be >= 0")
    # float64 throughout: tolerances like 1e-6 on the KKT residual are below float32 rounding of Dᵀ(Dh - x).
    return x.double(), D.double(), l1, l2, weights.to(D.device, torch.float64)


def _violation(h: Tensor, grad: Tensor, penalty: Tensor, nonneg: bool) -> Tensor:
    """Per-row max-norm of the KKT violation, given the smooth part's gradient and l1 * w."""
    if nonneg:
        # h_j > 0: grad_j + l1 w_j = 0;  h_j = 0: grad_j + l1 w_j >= 0;  h_j < 0 is infeasible.
        shifted = grad + penalty
        v = torch.where(h > 0, shifted.abs(), (-shifted).clamp_min(0)) + (-h).clamp_min(0)
    else:
        # h_j != 0: grad_j + l1 w_j sign(h_j) = 0;  h_j = 0: |grad_j| <= l1 w_j.
        v = torch.where(h != 0, (grad + penalty * h.sign()).abs(), (grad.abs() - penalty).clamp_min(0))
    return v.amax(dim=1)


def kkt_residual(
    x: Tensor,
    D: Tensor,
    h: Tensor,
    l1: float,
    l2: float = 0.0,
    weights: Tensor | None = None,
    nonneg: bool = True,
) -> Tensor:
    """Max-norm KKT violation per row (B,) of h for the problem above; 0 exactly at the optimum."""
    x64, D64, l1, l2, w = _validated(x, D, l1, l2, weights)
    check_activations(h, name="h")
    if h.shape != (x.shape[0], D.shape[1]):
        raise ValueError(f"h must have shape {(x.shape[0], D.shape[1])}, got {tuple(h.shape)}")
    h64 = h.to(D64.device, torch.float64)
    grad = (h64 @ D64.T - x64) @ D64 + 2 * l2 * h64
    return _violation(h64, grad, l1 * w, nonneg)


def solve_sparse_codes(
    x: Tensor,
    D: Tensor,
    l1: float,
    l2: float = 0.0,
    weights: Tensor | None = None,
    nonneg: bool = True,
    tol: float = 1e-6,
    max_iter: int = 10_000,
    h0: Tensor | None = None,
) -> SparseCodes:
    """Exact codes for every row of x (B, n) against dictionary D (n, m); see the module docstring.

    Each row stops once its KKT residual (an absolute gradient tolerance) is below `tol`; `h0` warm-starts.
    Computation is in float64; `h` comes back in x's dtype, `kkt_residual` in float64.
    """
    x64, D64, l1, l2, w = _validated(x, D, l1, l2, weights)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    check_positive_int("max_iter", max_iter)
    batch, m = x.shape[0], D.shape[1]
    if h0 is None:
        h = x64.new_zeros(batch, m)
    else:
        check_activations(h0, name="h0")
        if h0.shape != (batch, m):
            raise ValueError(f"h0 must have shape {(batch, m)}, got {tuple(h0.shape)}")
        h = h0.to(x64.device, torch.float64)
        h = h.clamp_min(0) if nonneg else h.clone()

    target = x64 @ D64
    lipschitz = torch.linalg.matrix_norm(D64, ord=2).item() ** 2 + 2 * l2
    if lipschitz == 0:
        raise ValueError("D is all zeros and l2 = 0: the smooth part has no curvature, so no step size exists")
    step = 1.0 / lipschitz
    penalty = l1 * w
    threshold = step * penalty

    # Gradient Dᵀ(Dh - x) + 2 l2 h, through the (m, m) Gram matrix or through D, whichever is cheaper.
    if 2 * D.shape[0] < m:

        def gradient(codes: Tensor, rows_target: Tensor) -> Tensor:
            return (codes @ D64.T) @ D64 + 2 * l2 * codes - rows_target

    else:
        gram = D64.T @ D64 + 2 * l2 * torch.eye(m, dtype=torch.float64, device=D64.device)

        def gradient(codes: Tensor, rows_target: Tensor) -> Tensor:
            return codes @ gram - rows_target

    def prox(z: Tensor) -> Tensor:
        if nonneg:
            return (z - threshold).clamp_min(0)
        return z.sign() * (z.abs() - threshold).clamp_min(0)

    grad = gradient(h, target)
    residual = _violation(h, grad, penalty, nonneg)
    active = torch.nonzero(residual >= tol).squeeze(1)
    # State of the rows still iterating: Dᵀx, iterate, its gradient, extrapolated point, its gradient, momentum.
    b_a, h_a, g_a = target[active], h[active], grad[active]
    y_a, gy_a = h_a, g_a
    t_a = x64.new_ones(active.numel())
    n_iter = 0
    while active.numel() > 0 and n_iter < max_iter:
        n_iter += 1
        h_new = prox(y_a - step * gy_a)
        g_new = gradient(h_new, b_a)
        res_new = _violation(h_new, g_new, penalty, nonneg)
        # Gradient restart: drop momentum for rows where the step points against the last move.
        restart = ((y_a - h_new) * (h_new - h_a)).sum(dim=1) > 0
        t_next = (1 + torch.sqrt(1 + 4 * t_a**2)) / 2
        beta = torch.where(restart, 0.0, (t_a - 1) / t_next).unsqueeze(1)
        t_next = torch.where(restart, 1.0, t_next)
        # The gradient is affine, so the extrapolated point's gradient needs no extra matmul.
        y_a, gy_a = h_new + beta * (h_new - h_a), g_new + beta * (g_new - g_a)
        h_a, g_a, t_a = h_new, g_new, t_next
        h[active], residual[active] = h_a, res_new
        keep = res_new >= tol
        if not keep.all():
            active, b_a, h_a, g_a, y_a, gy_a, t_a = (
                v[keep] for v in (active, b_a, h_a, g_a, y_a, gy_a, t_a)
            )
    return SparseCodes(
        h=h.to(x.dtype), kkt_residual=residual, n_iter=n_iter, converged=bool((residual < tol).all())
    )


def solve_for_sae(sae: Any, x: Tensor, **solver_kw: Any) -> SparseCodes:
    """Exact codes for an SAE's own decoder and penalties (the CONTRIBUTING.md scaling convention).

    The SAE loss ||x - x_hat||^2 + l1 sum w h + l2 sum h^2 is twice the solver's objective with
    (l1 / 2, l2 / 2) on x - b_dec; w are `sae.l1_weights()` when the variant has adaptive weights.
    Codes are nonnegative (every variant encodes through a ReLU). `solver_kw` go to solve_sparse_codes.
    """
    with torch.no_grad():
        weights_fn = getattr(sae, "l1_weights", None)
        weights = weights_fn() if weights_fn is not None else None
        return solve_sparse_codes(
            x - sae.b_dec,
            sae.W_dec,
            l1=float(sae.l1_coeff) / 2,
            l2=float(getattr(sae, "l2_coeff", 0.0)) / 2,
            weights=weights,
            nonneg=True,
            **solver_kw,
        )


def lipschitz_bound(D: Tensor, l2: float) -> float:
    """Upper bound ||D||_2 / (lambda_min(DᵀD) + 2 l2) on the Lipschitz constant of x -> h*(x).

    h*(x) is the exact code of the problem above (any l1 >= 0, weights, sign constraint): the objective
    is mu-strongly convex with mu = lambda_min(DᵀD) + 2 l2, and monotonicity of the l1 subgradient gives
    mu ||h*(x) - h*(x')|| <= ||D||_2 ||x - x'||. For overcomplete D (m > n) lambda_min(DᵀD) = 0, so only
    the ridge term l2 (solver scale; equal to the SAE's l2_coeff / 2) keeps the code map stable; the
    bound is inf when mu = 0.
    """
    _check_tensor("D", D, 2)
    l2 = check_nonnegative("l2", l2)
    singular = torch.linalg.svdvals(D.double())
    lambda_min = 0.0 if rank_deficient(singular, *D.shape) else singular.min().item() ** 2
    mu = lambda_min + 2 * l2
    return singular.max().item() / mu if mu > 0 else math.inf
