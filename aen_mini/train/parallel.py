"""How the one trainer (``aen_mini.train.loop.train``) runs across processes: the strategy interface, called
through a handful of hooks, and its data-parallel implementation (launched by ``torchrun``).

- ``SingleProcess``: the plain path, every hook the identity.
- ``DataParallel``: every rank holds the whole SAE and its own slice of the global batch. Gradients are averaged
  by ``DistributedDataParallel``; the SAE's running statistics (dead-latent counters, the adaptive EMA, the
  BatchTopK threshold) are computed from the global batch, so every rank holds identical weights and w_j.
- ``LatentSharded`` (``aen_mini.train.sharding``): every rank a slice of the latents.

Checkpoints are written once, by rank 0, in the single-process format, so any world size can load them.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from aen_mini.data.source import ActivationSource
from aen_mini.io.checkpoint import save_checkpoint
from aen_mini.sae import SAE
from aen_mini.sae.collective import LOCAL_STATS, StatReducer
from aen_mini.train.fast import fused_loss
from aen_mini.train.resample import resample_dead_latents
from aen_mini.train.step import LossFn


def _loss_fn(sae: SAE, cfg: Any) -> LossFn:
    """The loss the step differentiates: the fused one (bf16-friendly, aen_mini.train.fast) or the SAE's own."""
    return fused_loss(sae, cfg.dtype) if cfg.fast else sae.loss_and_codes


# --- the single-process strategy: the interface every strategy implements ---------------------------------------
class SingleProcess:
    """One process; the trainer's hooks do exactly what the plain loop did."""

    rank, world_size, is_main = 0, 1, True
    stats: StatReducer = LOCAL_STATS

    def prepare(self, sae: SAE, cfg: Any) -> tuple[SAE, LossFn]:
        """Move the SAE to the device, put it in training mode; return the module to train and its loss function
        (the fused one for ``cfg.fast``). The step (aen_mini.train.step) compiles it if asked."""
        sae.to(torch.device(cfg.device)).train()
        return sae, _loss_fn(sae, cfg)

    def local_optimizer_state(self, sae: SAE, state: dict[str, Any]) -> dict[str, Any]:
        """The part of a full (checkpointed) Adam state that belongs to this rank's parameters."""
        return state

    def next_batch(self, source: ActivationSource, batch_size: int) -> torch.Tensor:
        """This rank's rows of the next global batch of ``batch_size`` rows."""
        return source.next_batch(batch_size)

    def clip_grad_norm_(self, sae: SAE, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), max_norm)

    def resample(self, sae: SAE, x: torch.Tensor, optimizer: torch.optim.Optimizer, seed: int) -> int:
        return resample_dead_latents(sae, x, optimizer, seed=seed)

    def save_checkpoint(self, path: str, sae: SAE, optimizer: torch.optim.Optimizer, train_state: dict[str, Any]) -> None:
        save_checkpoint(path, sae, optimizer, train_state)

    def load_source_state(self, source: ActivationSource, train_state: dict[str, Any]) -> None:
        """Put this rank's data stream where the checkpoint left it. A data-parallel checkpoint holds one stream
        position per rank: refused by another number of processes unless they are all one global stream."""
        saved = train_state.get("rank_sources") or [train_state["source"]]
        if len(saved) == self.world_size:
            source.load_state_dict(saved[self.rank])
        elif all(s == saved[0] for s in saved):  # one global stream (e.g. StridedSource): any world size resumes it
            source.load_state_dict(saved[0])
        else:
            raise ValueError(f"the checkpoint holds {len(saved)} per-rank data streams but {self.world_size} processes "
                             "are resuming it; resume with the same number or use a StridedSource")



# --- collectives -------------------------------------------------------------------------------------------------
# Collectives run eagerly inside a compiled loss or after_step (a graph break each), so compile means the same with
# any number of processes.
@torch.compiler.disable
def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, op=op)
    return t



# --- data parallelism --------------------------------------------------------------------------------------------
class _DistributedStrategy(SingleProcess):
    def __init__(self, device: str | torch.device = "cpu") -> None:
        if not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised: call aen_mini.train.launch.setup_from_env() first")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.device = torch.device(device)

    def _check_device(self, cfg: Any) -> None:
        if torch.device(cfg.device) != self.device:
            raise ValueError(f"TrainConfig.device is {cfg.device!r} but this rank's device is {self.device}; "
                             "use the device from setup_from_env()")


class _DataParallelStats(StatReducer):
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def batch_tokens(self, n: int) -> int:
        return n * self.world_size  # every rank draws the same number of rows

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        return _all_reduce(t) / self.world_size

    def batch_any(self, t: torch.Tensor) -> torch.Tensor:
        return _all_reduce(t.int(), dist.ReduceOp.MAX).bool()

    def codes_min(self, t: torch.Tensor) -> torch.Tensor:
        return _all_reduce(t, dist.ReduceOp.MIN)


class _LossModule(nn.Module):
    """DistributedDataParallel hooks gradients through a module's forward: here the forward is the SAE's loss."""

    def __init__(self, sae: SAE, loss_fn: LossFn) -> None:
        super().__init__()
        self.sae, self.loss_fn = sae, loss_fn

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.loss_fn(x)


class DataParallel(_DistributedStrategy):
    """Every rank: the whole SAE, ``batch_size / world_size`` rows of each global batch. BatchTopK keeps the top
    k x rows of each rank's own rows (selection is per rank, the threshold statistic is global). The fused step
    (``fast``) serves it too, without the CUDA graph (DDP's gradient hooks run between the graph's kernels)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self.stats = _DataParallelStats(self.world_size)

    def prepare(self, sae: SAE, cfg: Any) -> tuple[SAE, LossFn]:
        self._check_device(cfg)
        sae.to(self.device).train()
        # buffers are kept equal by the global statistics, so DDP need not re-broadcast them every forward
        # (the argument was renamed in recent torch; both keep the broadcast from rank 0 at construction)
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(nn.parallel.DistributedDataParallel).parameters else {"broadcast_buffers": False})
        ddp = nn.parallel.DistributedDataParallel(
            _LossModule(sae, _loss_fn(sae, cfg)), device_ids=[self.device.index] if self.device.type == "cuda" else None, **no_buffer_sync)
        return sae, ddp

    def next_batch(self, source: ActivationSource, batch_size: int) -> torch.Tensor:
        if batch_size % self.world_size:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({self.world_size})")
        return source.next_batch(batch_size // self.world_size)

    def resample(self, sae: SAE, x: torch.Tensor, optimizer: torch.optim.Optimizer, seed: int) -> int:
        # every rank sees the same dead latents but different rows to point them at: rank 0's choice wins
        n = resample_dead_latents(sae, x, optimizer, seed=seed)
        for p in sae.parameters():
            dist.broadcast(p.data, src=0)
        return n

    def save_checkpoint(self, path: str, sae: SAE, optimizer: torch.optim.Optimizer, train_state: dict[str, Any]) -> None:
        sources: list[Any] = [None] * self.world_size
        dist.all_gather_object(sources, train_state["source"])
        if self.is_main:
            save_checkpoint(path, sae, optimizer, {**train_state, "rank_sources": sources})
        dist.barrier()


__all__ = ["SingleProcess", "DataParallel"]
