"""Plain L1 SAE: the baseline that starves (dead latents) and shrinks (codes biased toward zero)."""
from __future__ import annotations

import torch

from aen_mini.sae.base import SAE
from aen_mini.validate import check_nonnegative


class ReLUL1(SAE):
    """loss = mean ||x - x_hat||^2 + l1 * mean sum_j |h_j|."""

    variant = "relu_l1"

    def __init__(self, d_in: int, d_sae: int, l1_coeff: float = 1e-3, *, dead_after_tokens: int = 1_000_000, seed: int = 0,
                 loss_scale: str = "sum") -> None:
        super().__init__(d_in, d_sae, dead_after_tokens=dead_after_tokens, seed=seed, loss_scale=loss_scale)
        self.l1_coeff = check_nonnegative("l1_coeff", l1_coeff)

    def penalties(self, h, pre, x, x_hat):
        return {"l1": self.l1_coeff * h.abs().sum(-1).mean()}
