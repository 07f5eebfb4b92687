"""Recovery of a ground-truth dictionary: the one-to-one Hungarian matching of learned atoms to true ones.

Apart from aen_mini.eval.metrics because it needs scipy, which the core package does not: import it where a true
dictionary is known (synthetic data), and score supports and codes through its matching with
``metrics.support_scores`` and ``metrics.code_mse``.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from aen_mini.eval.metrics import _dictionary

__all__ = ["dictionary_recovery"]


def dictionary_recovery(D_true: Tensor, D_learned: Tensor, threshold: float = 0.9) -> dict[str, Any]:
    """How well learned atoms recover the true ones, after a one-to-one Hungarian matching.

    The matching maximises the total signed cosine (not |cos|): with nonnegative codes an atom and its
    negation are different features. Returns `mean_cos` (in [-1, 1]) and `frac_above` (share of true atoms
    with matched cos >= threshold, in [0, 1]), `matched_cos` (m_true,) and `matching` (m_true,) long: the
    learned latent matched to each true atom, -1 when there are fewer learned atoms (scored cos 0).
    """
    true_atoms, learned_atoms = _dictionary("D_true", D_true), _dictionary("D_learned", D_learned)
    if true_atoms.shape[0] != learned_atoms.shape[0]:
        raise ValueError(f"D_true has {true_atoms.shape[0]} rows but D_learned has {learned_atoms.shape[0]}")
    cos = (true_atoms.T @ learned_atoms).cpu()
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    matching = torch.full((cos.shape[0],), -1, dtype=torch.long)
    matching[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    matched_cos = torch.zeros(cos.shape[0], dtype=torch.float64)
    matched_cos[torch.as_tensor(rows)] = cos[rows, cols]
    return {
        "mean_cos": matched_cos.mean().item(),
        "frac_above": (matched_cos >= threshold).double().mean().item(),
        "matched_cos": matched_cos,
        "matching": matching,
    }
