"""What an SAE needs to know about the other processes, as two small interfaces whose one-process versions are the
identity: ``StatReducer`` (running statistics over the global batch, read by ``after_step``) and ``LatentComms``
(sums and selections over every latent, for an SAE that holds only a slice of them). ``aen_mini.train.parallel``
and ``aen_mini.train.sharding`` supply the multi-process versions; the variants never import
``torch.distributed``."""
from __future__ import annotations

import torch


def keep_top(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row, zero elsewhere."""
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(values))


class StatReducer:
    """Turns statistics of what this process sees into statistics of the whole training step.

    One process sees the whole batch and every latent, so each method is the identity; ``aen_mini.train.parallel``
    supplies the data-parallel version (other processes hold other rows) and ``aen_mini.train.sharding`` the
    latent-sharded one (other processes hold other latents)."""

    def batch_tokens(self, n: int) -> int:
        """Rows in the global batch, given this process's ``n``."""
        return n

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over the global batch, given the mean over this process's rows."""
        return t

    def batch_any(self, t: torch.Tensor) -> torch.Tensor:
        """True where true for any row of the global batch, given this process's rows (bool)."""
        return t

    def latent_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over all latents, given the sum over this process's latents."""
        return t

    def latent_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over all latents, given the mean over this process's latents."""
        return t

    def codes_min(self, t: torch.Tensor) -> torch.Tensor:
        """Minimum over every code of the step, given the minimum over this process's codes."""
        return t


LOCAL_STATS = StatReducer()

# How a penalty term is completed when each process holds a slice of the latents (SAE.penalty_reduction):
# "latent_sum": a sum over latents, so the shards' partial sums are added; "global": already the whole term on
# every process (it went through decode_atoms, which sums over the shards).
PENALTY_REDUCTIONS = ("latent_sum", "global")


class LatentComms:
    """Sums and selections over the latent axis for an SAE holding a slice of the latents (differentiable where the
    loss needs it). One process holds every latent, so each method is the plain computation."""

    sharded = False

    def shared(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor every shard uses whole (b_dec): its gradient is the sum of the shards' gradients."""
        return t

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over all latents of a partial sum over this shard's latents."""
        return t

    def keep_top(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        """ReLU of the k largest entries of each row over all latents; this shard's columns of the result."""
        return keep_top(pre, k)

    def any(self, mask: torch.Tensor) -> torch.Tensor:
        """True if any latent of any shard is set."""
        return mask.any()

    def top_sum(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """Sum of the n largest entries of a per-latent vector over all latents (exact with ties)."""
        # From the n-th largest value t: the values above t plus as many copies of t as the top n still needs.
        # On a GPU this is one select and one fused sum, where topk also sorts.
        t = -torch.kthvalue(-values, n).values
        above = values > t
        return torch.where(above, values, 0.0).sum() + (n - above.sum()) * t

    def reduce_penalties(self, terms: dict[str, torch.Tensor], reductions: dict[str, str]) -> dict[str, torch.Tensor]:
        """The variant's penalty terms completed over all latents, by the variant's declared reductions."""
        return terms


ONE_PROCESS = LatentComms()

__all__ = ["StatReducer", "LOCAL_STATS", "LatentComms", "ONE_PROCESS", "PENALTY_REDUCTIONS", "keep_top"]
