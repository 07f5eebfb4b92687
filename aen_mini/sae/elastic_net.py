"""Elastic-net SAE: L1 plus an L2 term on the codes, which makes the sparse-coding map strongly convex
and its solution Lipschitz in the input (no jumps between activation regions)."""
from __future__ import annotations

from dataclasses import dataclass

from aen_mini.sae.base import SAE, SAEConfig
from aen_mini.validate import check_nonnegative, option


@dataclass
class ElasticNetConfig(SAEConfig):
    l1_coeff: float = option(1e-3, "weight of the L1 penalty on the codes")
    l2_coeff: float = option(1e-3, "weight of the squared L2 penalty on the codes")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.l1_coeff = check_nonnegative("l1_coeff", self.l1_coeff)
        self.l2_coeff = check_nonnegative("l2_coeff", self.l2_coeff)


class ElasticNet(SAE):
    """loss = mean ||x - x_hat||^2 + l1 * mean sum_j |h_j| + l2 * mean sum_j h_j^2."""

    variant = "elastic_net"
    config_class = ElasticNetConfig
    penalty_reduction = {"l1": "latent_sum", "l2": "latent_sum"}

    def penalties(self, h, pre, x, x_hat):
        return {"l1": self.l1_coeff * h.abs().sum(-1).mean(),
                "l2": self.l2_coeff * h.pow(2).sum(-1).mean()}
