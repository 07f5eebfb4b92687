"""TopK and BatchTopK SAEs: sparsity by a hard mask instead of a penalty, with the AuxK loss that feeds
gradient to dead latents (Gao et al. 2024; Bussmann et al. 2024)."""
from __future__ import annotations

import torch

from aen_mini.sae.base import LOCAL_STATS, SAE, StatReducer
from aen_mini.validate import check_in_range, check_nonnegative, check_nonnegative_int, check_positive_int


def keep_top(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row, zero elsewhere."""
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(values))


class TopK(SAE):
    """loss = mean ||x - x_hat||^2 + aux_coeff * AuxK, with h keeping the k largest pre-activations.

    AuxK: the k_aux largest pre-activations among dead latents reconstruct the residual e = x - x_hat
    (detached): aux = mean ||e - W_dec h_aux||^2. Zero when no latent is dead.
    """

    variant = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int = 32, aux_k: int = 0, aux_coeff: float = 1 / 32, *,
                 dead_after_tokens: int = 1_000_000, seed: int = 0, loss_scale: str = "sum") -> None:
        super().__init__(d_in, d_sae, dead_after_tokens=dead_after_tokens, seed=seed, loss_scale=loss_scale)
        self.k = check_positive_int("k", k)
        if k > d_sae:
            raise ValueError(f"k={k} must not exceed the number of latents d_sae={d_sae}")
        self.aux_k = check_nonnegative_int("aux_k", aux_k) or min(d_sae, max(1, d_in // 2))
        self.aux_coeff = check_nonnegative("aux_coeff", aux_coeff)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return self.keep_top(pre, self.k)

    # Selections over the latent axis go through these two methods so latent-sharded training can make them global.
    def keep_top(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        return keep_top(pre, k)

    def any_latent(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.any()

    def penalties(self, h, pre, x, x_hat):
        if self.aux_coeff == 0:
            return {}
        dead = self.dead_mask()
        h_aux = self.keep_top(pre.masked_fill(~dead, float("-inf")), min(self.aux_k, self.d_sae))
        residual = (x - x_hat).detach()
        aux = (residual - self.decode_atoms(h_aux)).pow(2).sum(-1).mean()
        return {"aux": self.aux_coeff * aux * self.any_latent(dead)}  # a constant ||e||^2 otherwise: report 0


class BatchTopK(TopK):
    """TopK over the whole batch: the k * batch largest pre-activations are kept, so the number of active
    latents varies per sample. At inference (``eval()``) a threshold replaces the batch selection: the running
    mean of the smallest kept activation."""

    variant = "batch_topk"

    def __init__(self, d_in: int, d_sae: int, k: int = 32, aux_k: int = 0, aux_coeff: float = 1 / 32,
                 threshold_momentum: float = 0.01, *, dead_after_tokens: int = 1_000_000, seed: int = 0,
                 loss_scale: str = "sum") -> None:
        super().__init__(d_in, d_sae, k, aux_k, aux_coeff, dead_after_tokens=dead_after_tokens, seed=seed,
                         loss_scale=loss_scale)
        self.threshold_momentum = check_in_range("threshold_momentum", threshold_momentum, 0.0, 1.0)
        self.register_buffer("threshold", torch.zeros(()))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre)).relu()
        flat = pre.flatten()
        # k <= d_sae, so k * rows never exceeds the number of pre-activations (rows: every leading axis)
        return self.keep_top(flat.unsqueeze(0), self.k * (flat.numel() // pre.shape[-1])).view_as(pre)

    def update_state(self, h: torch.Tensor, stats: StatReducer = LOCAL_STATS) -> None:
        # smallest kept code (inf if none was kept), without a host sync that would stall the GPU
        smallest = stats.codes_min(torch.where(h > 0, h, torch.inf).amin().to(self.threshold.dtype))
        self.threshold.copy_(torch.where(smallest.isfinite(), self.threshold.lerp(smallest, self.threshold_momentum),
                                         self.threshold))
