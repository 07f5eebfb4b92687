"""Elastic-net SAE: L1 plus an L2 term on the codes, which makes the sparse-coding map strongly convex
and its solution Lipschitz in the input (no jumps between activation regions)."""
from __future__ import annotations

from aen_mini.sae.base import SAE
from aen_mini.validate import check_nonnegative


class ElasticNet(SAE):
    """loss = mean ||x - x_hat||^2 + l1 * mean sum_j |h_j| + l2 * mean sum_j h_j^2."""

    variant = "elastic_net"

    def __init__(self, d_in: int, d_sae: int, l1_coeff: float = 1e-3, l2_coeff: float = 1e-3, *,
                 dead_after_tokens: int = 1_000_000, seed: int = 0, loss_scale: str = "sum") -> None:
        super().__init__(d_in, d_sae, dead_after_tokens=dead_after_tokens, seed=seed, loss_scale=loss_scale)
        self.l1_coeff = check_nonnegative("l1_coeff", l1_coeff)
        self.l2_coeff = check_nonnegative("l2_coeff", l2_coeff)

    def penalties(self, h, pre, x, x_hat):
        return {"l1": self.l1_coeff * h.abs().sum(-1).mean(),
                "l2": self.l2_coeff * h.pow(2).sum(-1).mean()}
