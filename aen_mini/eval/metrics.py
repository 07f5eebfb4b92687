"""Every number the book and the benchmarks report, as plain functions of tensors (Python floats out).

Torch only: the Hungarian matching of learned to true atoms needs scipy and lives in aen_mini.eval.recovery,
imported by ``evaluate`` only when a true dictionary is given.

Conventions: codes h are (B, m) with a latent "firing" when h != 0; dictionaries are (n, m) with atoms as
columns; reconstruction errors are summed over features and averaged over the batch, as in the SAE loss.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from aen_mini.eval.solve import rank_deficient, solve_for_sae
from aen_mini.validate import check_activations, check_positive_int

__all__ = [
    "active_gram_condition",
    "amortisation_gap",
    "code_mse",
    "dead_fraction",
    "evaluate",
    "evaluate_in_batches",
    "explained_variance",
    "l0",
    "lipschitz_estimate",
    "mse",
    "mutual_coherence",
    "Report",
    "shrinkage_ratio",
    "support_scores",
    "usage_entropy",
]


def _same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _dictionary(name: str, D: Tensor) -> Tensor:
    """D (n, m) in float64 with unit columns; a zero column has no direction and is rejected."""
    check_activations(D, name=name)
    norms = D.double().norm(dim=0, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has a zero column (atom {int((norms[0] == 0).nonzero()[0])})")
    return D.double() / norms


def _matching(name: str, matching: Tensor, m_true: int, m_learned: int) -> Tensor:
    if not isinstance(matching, Tensor) or matching.dtype != torch.long or matching.shape != (m_true,):
        raise ValueError(f"{name} must be a long tensor of shape ({m_true},) (dictionary_recovery(...)['matching'])")
    if ((matching < -1) | (matching >= m_learned)).any():
        raise ValueError(f"{name} holds indices outside [-1, {m_learned})")
    return matching


def dead_fraction(h_or_counts: Tensor) -> float:
    """Fraction of latents that never fired, in [0, 1].

    Accepts codes (B, m) (a latent is dead if it is zero on every row of this batch) or per-latent
    firing counts (m,) (dead where the count is 0).
    """
    if not isinstance(h_or_counts, Tensor) or h_or_counts.ndim not in (1, 2) or h_or_counts.numel() == 0:
        raise ValueError("h_or_counts must be a non-empty tensor of codes (B, m) or counts (m,)")
    fired = h_or_counts != 0 if h_or_counts.ndim == 1 else (h_or_counts != 0).any(dim=0)
    return 1.0 - fired.double().mean().item()


def l0(h: Tensor) -> float:
    """Mean number of nonzero latents per sample, in [0, m]."""
    check_activations(h, name="h")
    return (h != 0).double().sum(dim=1).mean().item()


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Batch mean of ||x - x_hat||^2 (summed over features), in [0, inf); the SAE loss's `mse` term."""
    check_activations(x, name="x")
    check_activations(x_hat, name="x_hat")
    _same_shape("x", x, "x_hat", x_hat)
    return (x.double() - x_hat.double()).pow(2).sum(dim=1).mean().item()


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, in (-inf, 1]: 1 is perfect, 0 is the batch mean."""
    check_activations(x, name="x")
    check_activations(x_hat, name="x_hat")
    _same_shape("x", x, "x_hat", x_hat)
    x64 = x.double()
    total = (x64 - x64.mean(dim=0)).pow(2).sum()
    if total == 0:
        raise ValueError("explained_variance is undefined for a batch x with no variance")
    return 1.0 - ((x64 - x_hat.double()).pow(2).sum() / total).item()


def shrinkage_ratio(x: Tensor, x_hat: Tensor) -> float:
    """Mean over samples of ||x_hat||_1 / ||x||_1, in [0, inf); below 1 means the L1 penalty shrank outputs.

    Samples with x = 0 have no ratio and are skipped.
    """
    check_activations(x, name="x")
    check_activations(x_hat, name="x_hat")
    _same_shape("x", x, "x_hat", x_hat)
    x_norm = x.double().abs().sum(dim=1)
    keep = x_norm > 0
    if not keep.any():
        raise ValueError("shrinkage_ratio is undefined when every row of x is zero")
    return (x_hat.double().abs().sum(dim=1)[keep] / x_norm[keep]).mean().item()


def usage_entropy(h: Tensor, normalise: bool = False) -> float:
    """Entropy (nats) of p_j = firing count of latent j / total firings, in [0, log m].

    With `normalise`, divided by log m, so 1 means every latent fires equally often. A batch in which
    nothing fires has no distribution and scores 0.
    """
    check_activations(h, name="h")
    return _count_entropy((h != 0).double().sum(dim=0), normalise)


def _count_entropy(counts: Tensor, normalise: bool) -> float:
    """usage_entropy from per-latent firing counts (m,)."""
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    entropy = -(p * p.clamp_min(1e-300).log()).sum().item()  # 0 log 0 = 0
    m = counts.shape[0]
    if normalise:
        return entropy / math.log(m) if m > 1 else 0.0
    return entropy


def mutual_coherence(D: Tensor) -> float:
    """max_{i != j} |cos(d_i, d_j)| over columns of D (n, m), in [0, 1]; 0 for orthogonal atoms."""
    atoms = _dictionary("D", D)
    cos = (atoms.T @ atoms).abs()
    cos.fill_diagonal_(0.0)
    return cos.max().item()


def active_gram_condition(D: Tensor, h: Tensor) -> float:
    """Mean over samples of cond(D_Sᵀ D_S), S the sample's active latents, in [1, inf].

    This is the conditioning of the sparse code problem restricted to the support: large values mean
    the codes on S are unstable. inf when |S| > n or D_S is rank deficient; samples with empty S are
    skipped, and nan is returned when every sample is empty.
    """
    check_activations(D, name="D")
    check_activations(h, name="h")
    if h.shape[1] != D.shape[1]:
        raise ValueError(f"h has {h.shape[1]} latents but D has {D.shape[1]} columns")
    D64 = D.double()
    conds = []
    for active in (h != 0).unbind(0):
        if not active.any():
            continue
        singular = torch.linalg.svdvals(D64[:, active])
        # cond(D_Sᵀ D_S) = (s_max / s_min)^2, inf when D_S is (numerically) rank deficient.
        if rank_deficient(singular, D64.shape[0], int(active.sum())):
            conds.append(math.inf)
        else:
            conds.append((singular[0] / singular[-1]).item() ** 2)
    return sum(conds) / len(conds) if conds else math.nan


def _codes_in_true_basis(codes_true: Tensor, h: Tensor, matching: Tensor) -> tuple[Tensor, Tensor]:
    """h mapped onto true atoms (B, m_true) via the matching, and h on unmatched learned latents."""
    check_activations(codes_true, name="codes_true")
    check_activations(h, name="h")
    if codes_true.shape[0] != h.shape[0]:
        raise ValueError(f"codes_true has {codes_true.shape[0]} rows but h has {h.shape[0]}")
    matching = _matching("matching", matching, codes_true.shape[1], h.shape[1]).to(h.device)
    matched = matching >= 0
    mapped = torch.zeros_like(codes_true, dtype=torch.float64)
    mapped[:, matched] = h[:, matching[matched]].double()
    unmatched_latents = torch.ones(h.shape[1], dtype=torch.bool, device=h.device)
    unmatched_latents[matching[matched]] = False
    return mapped, h[:, unmatched_latents].double()


def support_scores(codes_true: Tensor, h: Tensor, matching: Tensor) -> dict[str, float]:
    """Precision, recall and F1 (each in [0, 1]) of the learned supports, pooled over the batch.

    A learned latent matched to true atom j predicts "j is active"; activity on latents matched to no
    true atom counts as false positives. Scores with an empty denominator are 0.
    """
    mapped, unmatched = _codes_in_true_basis(codes_true, h, matching)
    true_support = codes_true != 0
    hits = ((mapped != 0) & true_support).sum().item()
    predicted = (mapped != 0).sum().item() + (unmatched != 0).sum().item()
    actual = true_support.sum().item()
    precision = hits / predicted if predicted else 0.0
    recall = hits / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def code_mse(codes_true: Tensor, h: Tensor, matching: Tensor) -> float:
    """Batch mean of ||c - P h||^2 + ||h_unmatched||^2, in [0, inf): code error in the true atom basis.

    P h puts each matched learned latent's value on its true atom; energy on unmatched latents is error.
    """
    mapped, unmatched = _codes_in_true_basis(codes_true, h, matching)
    error = (codes_true.double() - mapped).pow(2).sum(dim=1) + unmatched.pow(2).sum(dim=1)
    return error.mean().item()


def lipschitz_estimate(
    encode_fn: Callable[[Tensor], Tensor], x: Tensor, eps: float = 1e-3, n_perturb: int = 32, seed: int = 0
) -> dict[str, float]:
    """Finite-difference sensitivity ||h(x + d) - h(x)|| / ||d|| over random d with ||d|| = eps.

    For each row of x, `n_perturb` uniformly random directions; returns the `max` and `median` ratio
    over all (row, direction) pairs, in [0, inf). The max is a lower bound on the local Lipschitz constant.
    """
    check_activations(x, name="x")
    check_positive_int("n_perturb", n_perturb)
    if not 0 < eps < math.inf:
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_perturb, *x.shape, generator=gen, dtype=torch.float64)
    delta = (eps * directions / directions.norm(dim=-1, keepdim=True)).to(x.dtype).to(x.device)
    with torch.no_grad():
        base = encode_fn(x)
        moved = encode_fn((x.unsqueeze(0) + delta).reshape(-1, x.shape[1]))
    change = (moved.double().reshape(n_perturb, *base.shape) - base.double()).norm(dim=-1)
    ratio = (change / delta.double().norm(dim=-1)).flatten()
    return {"max": ratio.max().item(), "median": ratio.median().item()}


def _sae_objective(sae: Any, x: Tensor, h: Tensor, weights: Tensor | None) -> Tensor:
    """Per-sample SAE loss ||x - x_hat||^2 + l1 sum w |h| + l2 sum h^2 (B,), in float64."""
    penalty = h.abs() if weights is None else h.abs() * weights
    return (
        (x - sae.decode(h)).double().pow(2).sum(dim=1)
        + float(sae.l1_coeff) * penalty.double().sum(dim=1)
        + float(getattr(sae, "l2_coeff", 0.0)) * h.double().pow(2).sum(dim=1)
    )


def amortisation_gap(sae: Any, x: Tensor, **solver_kw: Any) -> dict[str, float]:
    """How far the encoder's codes are from the exact codes of the SAE's own objective.

    `gap`: batch mean of objective(encoder codes) - objective(exact codes), >= 0 up to solver tolerance;
    `relative_gap`: gap / mean objective(exact codes); `code_distance`: ||H_enc - H*||_F / ||H*||_F, in
    [0, inf); `solver_converged`: 1.0 when every row met the KKT tolerance, else 0.0. For TopK (l1 = 0)
    the exact problem is nonnegative least squares, not a k-sparse one.
    """
    check_activations(x, name="x")
    with torch.no_grad():
        h_enc = sae.encode(x)
        exact = solve_for_sae(sae, x, **solver_kw)
        weights_fn = getattr(sae, "l1_weights", None)
        weights = weights_fn() if weights_fn is not None else None
        h_star = exact.h.to(h_enc.dtype)
        obj_enc = _sae_objective(sae, x, h_enc, weights)
        obj_star = _sae_objective(sae, x, h_star, weights)
    gap = (obj_enc - obj_star).mean().item()
    star_norm = h_star.double().norm().item()
    return {
        "gap": gap,
        "relative_gap": gap / obj_star.mean().item() if obj_star.mean() > 0 else math.inf,
        "code_distance": (h_enc.double() - h_star.double()).norm().item() / star_norm if star_norm else math.inf,
        "solver_converged": float(exact.converged),
    }


# How Report prints each number: label, format, what it means.
_EXPLAINED = {
    "dead_pct": ("dead latents", "{:.1f} %", "latents that fire on none of these inputs"),
    "l0": ("L0", "{:.1f}", "active latents per input"),
    "mse": ("MSE", "{:.3g}", "mean squared reconstruction error per input (summed over features)"),
    "ev": ("explained variance", "{:.3f}", "1 = perfect reconstruction, 0 = no better than the mean"),
    "shrinkage": ("shrinkage", "{:.3f}", "||x_hat||_1 / ||x||_1; below 1: codes shrunk by the penalty"),
    "usage_entropy": ("usage entropy", "{:.3f}", "1 = every latent fires equally often"),
    "recovery_mean_cos": ("dictionary recovery", "{:.3f}", "mean cosine of each true atom to its matched latent"),
    "recovery_frac_above": ("atoms recovered", "{:.1%}", "true atoms whose matched latent has cosine > 0.9"),
    "support_precision": ("support precision", "{:.3f}", "active latents that match a true active atom"),
    "support_recall": ("support recall", "{:.3f}", "true active atoms whose latent is active"),
    "support_f1": ("support F1", "{:.3f}", "harmonic mean of support precision and recall"),
    "code_mse": ("code MSE", "{:.3g}", "squared error of the matched codes against the true ones"),
}


class Report(dict):
    """The numbers of ``evaluate`` (a plain dict of floats, for code and JSON) that print as a rounded table
    saying what each number means."""

    def __str__(self) -> str:
        rows = [(*_EXPLAINED.get(key, (key, "{:.4g}", ""))[:2], _EXPLAINED.get(key, ("", "", ""))[2], value)
                for key, value in self.items()]
        width = max(len(label) for label, *_ in rows)
        values = [fmt.format(value) for _, fmt, _, value in rows]
        value_width = max(len(v) for v in values)
        return "\n".join(f"{label:<{width}}  {v:>{value_width}}  {meaning}".rstrip()
                         for (label, _, meaning, _), v in zip(rows, values))


def evaluate(sae: Any, x: Tensor, codes_true: Tensor | None = None, D_true: Tensor | None = None) -> Report:
    """The standard report for an SAE on a batch x: dead_pct (percent of latents silent on x), l0, mse,
    ev (explained variance), shrinkage, usage_entropy (normalised); with D_true also recovery_mean_cos
    and recovery_frac_above; with codes_true too, support_precision/recall/f1 and code_mse.
    """
    check_activations(x, name="x")
    if codes_true is not None and D_true is None:
        raise ValueError("codes_true needs D_true: supports are compared through the atom matching")
    with torch.no_grad():
        x_hat, h = sae(x)
    report = {
        "dead_pct": 100.0 * dead_fraction(h),
        "l0": l0(h),
        "mse": mse(x, x_hat),
        "ev": explained_variance(x, x_hat),
        "shrinkage": shrinkage_ratio(x, x_hat),
        "usage_entropy": usage_entropy(h, normalise=True),
    }
    if D_true is not None:
        from aen_mini.eval.recovery import dictionary_recovery  # scipy, needed only with a ground truth

        recovery = dictionary_recovery(D_true, sae.W_dec.detach())
        report["recovery_mean_cos"] = recovery["mean_cos"]
        report["recovery_frac_above"] = recovery["frac_above"]
        if codes_true is not None:
            support = support_scores(codes_true, h, recovery["matching"])
            report.update({f"support_{name}": value for name, value in support.items()})
            report["code_mse"] = code_mse(codes_true, h, recovery["matching"])
    return Report(report)


@torch.no_grad()
def evaluate_in_batches(sae: Any, x: Tensor, batch_size: int = 4096) -> Report:
    """``evaluate(sae, x)`` (dead_pct, l0, mse, ev, shrinkage, usage_entropy) computed ``batch_size`` rows at a time:
    memory for one batch's codes instead of the whole set's (a held-out set of 16k tokens at d_sae = 16384 would
    need 1 GiB of codes at once). Sums are float64, so the numbers equal evaluate's up to rounding."""
    check_activations(x, name="x")
    check_positive_int("batch_size", batch_size)
    n = x.shape[0]
    device = next(sae.parameters()).device
    mean = sum(part.to(device).double().sum(dim=0) for part in x.split(batch_size)) / n
    firings, l0_sum, sq_err, total, ratios, rows_with_norm = None, 0.0, 0.0, 0.0, 0.0, 0
    for part in x.split(batch_size):
        part = part.to(device)  # one batch at a time on the SAE's device
        x_hat, h = sae(part)
        active = (h != 0).double()
        firings = active.sum(dim=0) if firings is None else firings + active.sum(dim=0)
        l0_sum += active.sum().item()
        x64, x_hat64 = part.double(), x_hat.double()
        sq_err += (x64 - x_hat64).pow(2).sum().item()
        total += (x64 - mean).pow(2).sum().item()
        norm = x64.abs().sum(dim=1)
        keep = norm > 0
        ratios += (x_hat64.abs().sum(dim=1)[keep] / norm[keep]).sum().item()
        rows_with_norm += int(keep.sum())
    if total == 0:
        raise ValueError("explained_variance is undefined for a batch x with no variance")
    if rows_with_norm == 0:
        raise ValueError("shrinkage_ratio is undefined when every row of x is zero")
    return Report({"dead_pct": 100.0 * (firings == 0).double().mean().item(), "l0": l0_sum / n, "mse": sq_err / n,
                   "ev": 1.0 - sq_err / total, "shrinkage": ratios / rows_with_norm,
                   "usage_entropy": _count_entropy(firings, normalise=True)})
