"""TopK and BatchTopK SAEs: sparsity by a hard mask instead of a penalty, with the AuxK loss that feeds
gradient to dead latents (Gao et al. 2024; Bussmann et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from aen_mini.sae.base import SAE, SAEConfig
from aen_mini.sae.collective import LOCAL_STATS, StatReducer, keep_top
from aen_mini.validate import check_in_range, check_nonnegative, check_nonnegative_int, check_positive_int, option


@dataclass
class TopKConfig(SAEConfig):
    k: int = option(32, "active latents per token")
    aux_k: int = option(0, "dead latents the AuxK loss uses per token (0: d_in / 2, at most d_sae)")
    aux_coeff: float = option(1 / 32, "weight of the AuxK loss (0: none)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k = check_positive_int("k", self.k)
        if self.k > self.d_sae:
            raise ValueError(f"k={self.k} must not exceed the number of latents d_sae={self.d_sae}")
        self.aux_k = check_nonnegative_int("aux_k", self.aux_k) or min(self.d_sae, max(1, self.d_in // 2))
        self.aux_coeff = check_nonnegative("aux_coeff", self.aux_coeff)


class TopK(SAE):
    """loss = mean ||x - x_hat||^2 + aux_coeff * AuxK, with h keeping the k largest pre-activations.

    AuxK: the k_aux largest pre-activations among dead latents reconstruct the residual e = x - x_hat
    (detached): aux = mean ||e - W_dec h_aux||^2. Zero when no latent is dead.
    """

    variant = "topk"
    config_class = TopKConfig
    penalty_reduction = {"aux": "global"}  # through decode_atoms, already summed over every latent
    matmuls_per_token = 9  # AuxK decodes the dead latents' codes again: one more decoder matmul and its two gradients
    saelens_architecture = "topk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return self.comms.keep_top(pre, self.k)

    def penalties(self, h, pre, x, x_hat):
        if self.aux_coeff == 0:
            return {}
        dead = self.dead_mask()
        h_aux = self.comms.keep_top(pre.masked_fill(~dead, float("-inf")), min(self.aux_k, self.d_sae))
        residual = (x - x_hat).detach()
        aux = (residual - self.decode_atoms(h_aux)).pow(2).sum(-1).mean()
        return {"aux": self.aux_coeff * aux * self.comms.any(dead)}  # a constant ||e||^2 otherwise: report 0

    def saelens_export(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}, {}


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_momentum: float = option(0.01, "step of the inference threshold toward each batch's smallest kept code")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.threshold_momentum = check_in_range("threshold_momentum", self.threshold_momentum, 0.0, 1.0)


class BatchTopK(TopK):
    """TopK over the whole batch: the k * batch largest pre-activations are kept, so the number of active
    latents varies per sample. At inference (``eval()``) a threshold replaces the batch selection: the running
    mean of the smallest kept activation."""

    variant = "batch_topk"
    config_class = BatchTopKConfig
    # at inference BatchTopK keeps pre-activations above its running threshold: a JumpReLU whose threshold is that
    # value for every latent (SAELens exports its own BatchTopK the same way)
    saelens_architecture = "jumprelu"

    def __init__(self, cfg: BatchTopKConfig, **shard) -> None:
        super().__init__(cfg, **shard)
        self.register_buffer("threshold", torch.zeros(()))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre)).relu()
        flat = pre.flatten()
        # k <= d_sae, so k * rows never exceeds the number of pre-activations (rows: every leading axis)
        return self.comms.keep_top(flat.unsqueeze(0), self.k * (flat.numel() // pre.shape[-1])).view_as(pre)

    def update_state(self, h: torch.Tensor, stats: StatReducer = LOCAL_STATS) -> None:
        # smallest kept code (inf if none was kept), without a host sync that would stall the GPU
        smallest = stats.codes_min(torch.where(h > 0, h, torch.inf).amin().to(self.threshold.dtype))
        self.threshold.copy_(torch.where(smallest.isfinite(), self.threshold.lerp(smallest, self.threshold_momentum),
                                         self.threshold))

    def saelens_export(self) -> tuple[dict, dict[str, torch.Tensor]]:
        return {}, {"threshold": self.threshold.expand(self.d_sae)}


__all__ = ["TopK", "TopKConfig", "BatchTopK", "BatchTopKConfig", "keep_top"]
