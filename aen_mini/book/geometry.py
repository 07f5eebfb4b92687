"""Exact sparse codes over a low-dimensional input space: activation regions on a grid of the plane, code
paths along a segment, and Lipschitz constants of the code map x -> h*(x).

Every code here is an exact solve (aen_mini.eval.solve) of

    min_{h >= 0}  1/2 ||x - D h||^2 + l1 sum_j w_j h_j + l2 ||h||^2.

On the region of inputs where the active set {j : h_j > 0} is S, the optimality conditions are linear:
h_S = (D_Sᵀ D_S + 2 l2 I)^{-1} (D_Sᵀ x - l1 w_S), so h* is piecewise affine and its slope on that region has
spectral norm max_i s_i / (s_i^2 + 2 l2) over the singular values s_i of D_S (`active_set_lipschitz`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from aen_mini.eval.metrics import lipschitz_estimate
from aen_mini.sae.adaptive import AdaptiveL1Weights
from aen_mini.eval.solve import lipschitz_bound, rank_deficient, solve_sparse_codes
from aen_mini.validate import check_activations, check_nonnegative, check_positive_int

__all__ = [
    "ActivationRegions",
    "CodePath",
    "activation_regions",
    "active_set_lipschitz",
    "adaptive_weights",
    "code_path",
    "exact_codes",
    "lipschitz_sweep",
    "unit_atoms",
]


def unit_atoms(angles_deg: Sequence[float]) -> Tensor:
    """A 2-D dictionary (2, m) of unit atoms at the given angles (degrees), float64."""
    angles = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float64))
    if angles.ndim != 1 or angles.numel() == 0:
        raise ValueError(f"angles_deg must be a non-empty sequence of numbers, got {angles_deg!r}")
    return torch.stack([angles.cos(), angles.sin()])


def adaptive_weights(usage: Tensor, gamma: float, ref_pct: float = 0.25) -> Tensor:
    """The AEN-SAE's L1 weights (after warm-up) for a given per-latent mean activation `usage` (m,).

    w_j = clip((ref / max(a_j, 1e-5))^gamma, 0.01, 10), ref = mean of the top ref_pct of a: the rule of
    aen_mini.sae.adaptive, evaluated on an assumed `usage` instead of a training EMA.
    """
    usage = torch.as_tensor(usage, dtype=torch.float32)
    if usage.ndim != 1 or usage.numel() == 0 or (usage < 0).any() or not torch.isfinite(usage).all():
        raise ValueError("usage must be a non-empty 1-D tensor of finite values >= 0")
    rule = AdaptiveL1Weights(usage.numel(), gamma, ema_beta=0.9, ref_pct=ref_pct, warmup_start=0, warmup_steps=0)
    rule.ema.copy_(usage)
    return rule.weights().double()


def exact_codes(
    x: Tensor, D: Tensor, l1: float, l2: float = 0.0, weights: Tensor | None = None, tol: float = 1e-10
) -> Tensor:
    """Exact nonnegative codes (B, m) in float64; raises RuntimeError if the solver did not certify them."""
    result = solve_sparse_codes(x.double(), D.double(), l1, l2, weights, nonneg=True, tol=tol, max_iter=100_000)
    if not result.converged:
        raise RuntimeError(f"solver stopped at KKT residual {result.kkt_residual.max().item():.2e} > tol={tol}")
    return result.h.double()


@dataclass
class ActivationRegions:
    """Exact codes on a square grid of the plane: codes[i, j] is h*((xs[j], ys[i]))."""

    xs: Tensor  # (R,)
    ys: Tensor  # (R,)
    codes: Tensor  # (R, R, m)

    @property
    def active(self) -> Tensor:
        """(R, R, m) bool: which atoms are used at each grid point."""
        return self.codes > 0

    @property
    def labels(self) -> Tensor:
        """(R, R) long: the active set as a bitmask, sum_j 2^j [h_j > 0] (0: no atom is used)."""
        powers = 2 ** torch.arange(self.codes.shape[-1])
        return (self.active.long() * powers).sum(-1)

    def active_sets(self) -> Tensor:
        """(k, m) bool: the distinct active sets present on the grid, ordered by bitmask."""
        m = self.codes.shape[-1]
        masks = self.labels.unique()
        return (masks[:, None] >> torch.arange(m)) & 1 == 1


def _check_plane_dictionary(D: Tensor) -> None:
    if not isinstance(D, Tensor) or D.ndim != 2 or D.shape[0] != 2:
        raise ValueError(f"D must be a (2, m) tensor of atoms in the plane, got {getattr(D, 'shape', D)!r}")


def activation_regions(
    D: Tensor,
    l1: float,
    l2: float = 0.0,
    weights: Tensor | None = None,
    extent: float = 2.0,
    resolution: int = 101,
) -> ActivationRegions:
    """Exact codes of every point of the grid [-extent, extent]^2 (resolution^2 points) for a 2-D D (2, m)."""
    _check_plane_dictionary(D)
    if not 0 < extent < math.inf:
        raise ValueError(f"extent must be finite and > 0, got {extent}")
    check_positive_int("resolution", resolution)
    axis = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)
    codes = exact_codes(points, D, l1, l2, weights)
    return ActivationRegions(xs=axis, ys=axis, codes=codes.reshape(resolution, resolution, -1))


@dataclass
class CodePath:
    """Exact codes at evenly spaced points of a segment: points[i] = start + t[i] (end - start)."""

    t: Tensor  # (T,)
    points: Tensor  # (T, n)
    codes: Tensor  # (T, m)

    def max_jump(self) -> float:
        """max_i ||h_{i+1} - h_i||: tends to 0 as the grid refines iff the code map is continuous here."""
        return (self.codes[1:] - self.codes[:-1]).norm(dim=1).max().item()

    def max_slope(self) -> float:
        """max_i ||h_{i+1} - h_i|| / ||x_{i+1} - x_i||: a lower bound on the Lipschitz constant."""
        step = (self.points[1:] - self.points[:-1]).norm(dim=1)
        return ((self.codes[1:] - self.codes[:-1]).norm(dim=1) / step).max().item()


def code_path(
    D: Tensor,
    start: Sequence[float] | Tensor,
    end: Sequence[float] | Tensor,
    l1: float,
    l2: float = 0.0,
    weights: Tensor | None = None,
    n_points: int = 201,
) -> CodePath:
    """Exact codes along the segment from `start` to `end` (n_points >= 2 evenly spaced points)."""
    start64, end64 = (torch.as_tensor(p, dtype=torch.float64) for p in (start, end))
    if start64.shape != (D.shape[0],) or end64.shape != (D.shape[0],):
        raise ValueError(f"start and end must be points of R^{D.shape[0]}, got shapes "
                         f"{tuple(start64.shape)} and {tuple(end64.shape)}")
    if check_positive_int("n_points", n_points) < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    t = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    points = start64 + t[:, None] * (end64 - start64)
    return CodePath(t=t, points=points, codes=exact_codes(points, D, l1, l2, weights))


def active_set_lipschitz(D: Tensor, l2: float, active_sets: Tensor) -> float:
    """max over the given active sets S of ||(D_SᵀD_S + 2 l2 I)^{-1} D_Sᵀ||_2 = max_i s_i / (s_i^2 + 2 l2).

    For the active sets of regions with nonempty interior this is the exact Lipschitz constant of the
    (piecewise affine, continuous) code map; inf when l2 = 0 and some D_S is rank deficient.
    """
    check_activations(D, name="D")
    l2 = check_nonnegative("l2", l2)
    if not isinstance(active_sets, Tensor) or active_sets.dtype != torch.bool or active_sets.ndim != 2 \
            or active_sets.shape[1] != D.shape[1]:
        raise ValueError(f"active_sets must be a bool tensor (k, {D.shape[1]})")
    best = 0.0
    for support in active_sets:
        if not support.any():
            continue
        s = torch.linalg.svdvals(D.double()[:, support])
        if l2 == 0 and rank_deficient(s, D.shape[0], int(support.sum())):
            return math.inf
        best = max(best, (s / (s**2 + 2 * l2)).max().item())
    return best


def lipschitz_sweep(
    D: Tensor,
    x: Tensor,
    l1: float,
    l2_values: Sequence[float],
    eps: float = 1e-4,
    n_perturb: int = 16,
) -> dict[str, list[float]]:
    """For each l2: the bound ||D||/(lambda_min(DᵀD) + 2 l2), the finite-difference estimate at the rows
    of x (max over random directions, aen_mini.eval.metrics.lipschitz_estimate) and the exact slope over the
    active sets met at x and its perturbations. Keys: l2, bound, measured, active_set."""
    check_activations(x, D.shape[0], name="x")
    sweep: dict[str, list[float]] = {"l2": [], "bound": [], "measured": [], "active_set": []}
    for l2 in l2_values:
        seen: list[Tensor] = []

        def encode(batch: Tensor) -> Tensor:
            codes = exact_codes(batch, D, l1, l2)
            seen.append(codes > 0)
            return codes

        estimate = lipschitz_estimate(encode, x.double(), eps=eps, n_perturb=n_perturb)
        sweep["l2"].append(float(l2))
        sweep["bound"].append(lipschitz_bound(D, l2))
        sweep["measured"].append(estimate["max"])
        sweep["active_set"].append(active_set_lipschitz(D, l2, torch.cat(seen).unique(dim=0)))
    return sweep
