"""Plain L1 SAE: the baseline that starves (dead latents) and shrinks (codes biased toward zero)."""
from __future__ import annotations

from dataclasses import dataclass

from aen_mini.sae.base import SAE, SAEConfig
from aen_mini.validate import check_nonnegative, option


@dataclass
class ReLUL1Config(SAEConfig):
    l1_coeff: float = option(1e-3, "weight of the L1 penalty on the codes")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.l1_coeff = check_nonnegative("l1_coeff", self.l1_coeff)


class ReLUL1(SAE):
    """loss = mean ||x - x_hat||^2 + l1 * mean sum_j |h_j|."""

    variant = "relu_l1"
    config_class = ReLUL1Config
    penalty_reduction = {"l1": "latent_sum"}

    def penalties(self, h, pre, x, x_hat):
        return {"l1": self.l1_coeff * h.abs().sum(-1).mean()}
