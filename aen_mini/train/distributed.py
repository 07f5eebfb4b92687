"""Training across processes with ``torch.distributed`` (launched by ``torchrun``): the strategies that the one
trainer (``aen_mini.train.loop.train``) calls through a handful of hooks.

- ``SingleProcess``: the plain path, every hook the identity.
- ``DataParallel``: every rank holds the whole SAE and its own slice of the global batch. Gradients are averaged
  by ``DistributedDataParallel``; the SAE's running statistics (dead-latent counters, the adaptive EMA, the
  BatchTopK threshold) are computed from the global batch, so every rank holds identical weights and w_j.
- ``LatentSharded``: every rank holds the whole batch and a contiguous slice of the latents (encoder rows,
  decoder columns, b_enc, their Adam moments and running statistics). The reconstruction is summed across ranks;
  TopK/BatchTopK and the adaptive reference select over all latents. For dictionaries whose weights and
  optimiser state do not fit one GPU.

Checkpoints are written once, by rank 0, in the single-process format, so any world size can load them.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from aen_mini.io.checkpoint import save_checkpoint
from aen_mini.data.source import ActivationSource
from aen_mini.train.resample import resample_dead_latents
from aen_mini.sae import SAE
from aen_mini.sae.collective import LOCAL_STATS, PENALTY_REDUCTIONS, LatentComms, StatReducer
from aen_mini.validate import check_choice, check_positive_int

LossFn = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]



# --- the single-process strategy: the interface every strategy implements ---------------------------------------
class SingleProcess:
    """One process; the trainer's hooks do exactly what the plain loop did."""

    rank, world_size, is_main = 0, 1, True
    stats: StatReducer = LOCAL_STATS

    def prepare(self, sae: SAE, cfg: Any) -> tuple[SAE, LossFn]:
        """Move the SAE to the device, put it in training mode; return the module to train and its loss function."""
        sae.to(torch.device(cfg.device)).train()
        return sae, torch.compile(sae.loss_and_codes) if cfg.compile else sae.loss_and_codes

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
def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, op=op)
    return t


class _SumAcrossShards(torch.autograd.Function):
    """Forward: sum of the ranks' partial results. Backward: identity. Every rank then computes the same loss from
    the sum, so the gradient reaching each rank's partial is already the full dL/d(sum); the all-reduce backward of
    ``torch.distributed.nn.functional.all_reduce`` would multiply it by the world size here."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _all_reduce(partial)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class _SharedAcrossShards(torch.autograd.Function):
    """Forward: identity on a replicated tensor (b_dec) used by every rank's partial computation. Backward: sum of
    the ranks' gradients, since each rank saw only its own latents' contribution."""

    @staticmethod
    def forward(ctx, shared: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return shared.view_as(shared)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _all_reduce(grad.contiguous())


def _all_gather_cat(t: torch.Tensor, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def _global_top(local: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries along the last axis over every rank's slice: (local candidate positions, mask of
    those candidates that are among the global top k). Candidates: each rank's own top min(k, slice)."""
    candidates = local.topk(min(k, local.shape[-1]), dim=-1)
    gathered = _all_gather_cat(candidates.values.detach(), dim=-1)
    chosen = torch.zeros_like(gathered, dtype=torch.bool).scatter_(-1, gathered.topk(k, dim=-1).indices, True)
    width = candidates.values.shape[-1]
    mine = chosen[..., dist.get_rank() * width:(dist.get_rank() + 1) * width]
    return candidates, mine


# --- the latent-sharded SAE --------------------------------------------------------------------------------------
class ShardComms(LatentComms):
    """The SAE's sums and selections over the latent axis completed across ranks, each holding a slice of the
    latents: the reconstruction and latent-summed penalties by all-reduce, TopK and the adaptive reference by a
    global top-k over the ranks' candidates."""

    sharded = True

    def shared(self, t: torch.Tensor) -> torch.Tensor:
        return _SharedAcrossShards.apply(t)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return _SumAcrossShards.apply(t)

    def keep_top(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        candidates, mine = _global_top(pre, k)
        kept = torch.where(mine, torch.relu(candidates.values), torch.zeros_like(candidates.values))
        return torch.zeros_like(pre).scatter_(-1, candidates.indices, kept)

    def any(self, mask: torch.Tensor) -> torch.Tensor:
        return _all_reduce(mask.any().int(), dist.ReduceOp.MAX).bool()

    def top_sum(self, values: torch.Tensor, n: int) -> torch.Tensor:
        candidates, mine = _global_top(values, n)
        return _all_reduce(candidates.values[mine].sum())

    def reduce_penalties(self, terms: dict[str, torch.Tensor], reductions: dict[str, str]) -> dict[str, torch.Tensor]:
        unknown = sorted(name for name in terms if reductions.get(name) not in PENALTY_REDUCTIONS)
        if unknown:
            raise ValueError(f"latent-sharded training does not know how to combine the penalty term(s) {unknown} "
                             f"across ranks; declare them in the variant's penalty_reduction ({PENALTY_REDUCTIONS})")
        return {name: _SumAcrossShards.apply(value) if reductions[name] == "latent_sum" else value
                for name, value in terms.items()}


def latent_slice(d_sae: int, rank: int, world_size: int) -> slice:
    """The contiguous latents rank ``rank`` owns; ``d_sae`` must divide evenly so every collective has equal parts."""
    if d_sae % world_size:
        raise ValueError(f"latent sharding needs d_sae ({d_sae}) divisible by the number of processes ({world_size})")
    width = d_sae // world_size
    return slice(rank * width, (rank + 1) * width)


def shard_sae(sae: SAE, rank: int, world_size: int) -> SAE:
    """A new SAE of the same variant and config holding rank ``rank``'s latents of ``sae`` (left untouched): built
    by the variant's own constructor for that slice, then given the slice of ``sae``'s state."""
    cls, part = type(sae), latent_slice(sae.d_sae, rank, world_size)
    state = sae.state_dict()
    # a latent-sized tensor missing from latent_state would be replicated by mistake (undecidable when d_in == d_sae)
    unknown = sorted(name for name, t in state.items()
                     if name not in cls.latent_state and sae.d_sae in t.shape and sae.d_sae != sae.d_in)
    if unknown:
        raise ValueError(f"cannot shard {cls.__name__}: state {unknown} has a latent axis missing from "
                         f"{cls.__name__}.latent_state")
    local = cls(sae.cfg, latents=part, comms=ShardComms()).to(sae.W_dec.dtype)
    local.load_state_dict({name: t.narrow(cls.latent_state[name], part.start, part.stop - part.start)
                           if name in cls.latent_state else t for name, t in state.items()})
    local.penalty_scale = sae.penalty_scale
    return local.to(sae.W_dec.device)


def _gather_to_main(local: torch.Tensor, axis: int) -> torch.Tensor | None:
    """Concatenate every rank's slice on rank 0 (on the CPU), one rank's slice at a time so the full tensor never
    has to fit on one GPU; other ranks get None."""
    if dist.get_rank() != 0:
        dist.send(local.contiguous(), dst=0)
        return None
    parts = [local.detach().cpu()]
    buffer = torch.empty(local.shape, dtype=local.dtype, device=local.device)
    for src in range(1, dist.get_world_size()):
        dist.recv(buffer, src=src)
        parts.append(buffer.cpu())
    return torch.cat(parts, dim=axis)


class _FullOptimizer:
    """Stands in for the optimizer when saving: ``save_checkpoint`` only calls ``state_dict()``."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


# --- the two distributed strategies ------------------------------------------------------------------------------
class _DistributedStrategy(SingleProcess):
    def __init__(self, device: str | torch.device = "cpu") -> None:
        if not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised: call aen_mini.train.distributed.setup_from_env() first")
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

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.sae.loss_and_codes(x)


class DataParallel(_DistributedStrategy):
    """Every rank: the whole SAE, ``batch_size / world_size`` rows of each global batch. BatchTopK keeps the top
    k x rows of each rank's own rows (selection is per rank, the threshold statistic is global)."""

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
            _LossModule(sae), device_ids=[self.device.index] if self.device.type == "cuda" else None, **no_buffer_sync)
        return sae, torch.compile(ddp) if cfg.compile else ddp

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


class _LatentShardedStats(StatReducer):
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def latent_sum(self, t: torch.Tensor) -> torch.Tensor:
        return _all_reduce(t)

    def latent_mean(self, t: torch.Tensor) -> torch.Tensor:
        return _all_reduce(t) / self.world_size  # every rank owns the same number of latents

    def codes_min(self, t: torch.Tensor) -> torch.Tensor:
        return _all_reduce(t, dist.ReduceOp.MIN)


class LatentSharded(_DistributedStrategy):
    """Every rank: the whole batch (drawn on rank 0 and broadcast), ``d_sae / world_size`` latents. The module
    ``train`` returns is this rank's shard; ``gather_sae`` rebuilds the full SAE on rank 0."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self.stats = _LatentShardedStats(self.world_size)

    def prepare(self, sae: SAE, cfg: Any) -> tuple[SAE, LossFn]:
        self._check_device(cfg)
        if cfg.resample_every:
            raise ValueError("resample_every is not supported with latent sharding; use AuxK (topk) or the AEN instead")
        local = shard_sae(sae, self.rank, self.world_size).to(self.device).train()
        return local, torch.compile(local.loss_and_codes) if cfg.compile else local.loss_and_codes

    def local_optimizer_state(self, sae: SAE, state: dict[str, Any]) -> dict[str, Any]:
        names = [n for n, _ in sae.named_parameters()]
        part = latent_slice(sae.d_sae, self.rank, self.world_size)
        per_param = {}
        for idx, moments in state["state"].items():
            axis = type(sae).latent_state.get(names[int(idx)])
            per_param[idx] = {k: v.narrow(axis, part.start, part.stop - part.start).contiguous() if axis is not None and v.ndim
                              else v for k, v in moments.items()}
        return {"state": per_param, "param_groups": state["param_groups"]}

    def next_batch(self, source: ActivationSource, batch_size: int) -> torch.Tensor:
        if self.is_main:
            x = source.next_batch(batch_size).to(self.device, torch.float32)
        else:
            x = torch.empty(batch_size, source.d_in, device=self.device)
        dist.broadcast(x, src=0)
        return x

    def clip_grad_norm_(self, sae: SAE, max_norm: float) -> None:
        grads = [(n, p.grad) for n, p in sae.named_parameters() if p.grad is not None]
        latent = type(sae).latent_state
        sharded = sum((g.float().pow(2).sum() for n, g in grads if n in latent), torch.zeros((), device=self.device))
        replicated = sum((g.float().pow(2).sum() for n, g in grads if n not in latent), torch.zeros((), device=self.device))
        total = (_all_reduce(sharded) + replicated).sqrt()
        # the same rule as torch.nn.utils.clip_grad_norm_
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for _, g in grads:
            g.mul_(scale.to(g.dtype))

    def gather_state(self, sae: SAE) -> dict[str, torch.Tensor] | None:
        """The full SAE state_dict on rank 0 (CPU), None elsewhere."""
        full = {}
        for name, t in sae.state_dict().items():
            axis = type(sae).latent_state.get(name)
            full[name] = _gather_to_main(t, axis) if axis is not None else t.detach().cpu()
        return full if self.is_main else None

    def gather_sae(self, sae: SAE) -> SAE | None:
        """The full (unsharded) SAE on rank 0, on the CPU; None on other ranks. Every rank must call it."""
        from aen_mini.sae import sae_from_config  # local: only needed here
        state = self.gather_state(sae)
        if state is None:
            return None
        full = sae_from_config(sae.config())
        full.load_state_dict(state)
        return full

    def _gather_optimizer(self, sae: SAE, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        names = [n for n, _ in sae.named_parameters()]
        state = optimizer.state_dict()
        per_param = {}
        for idx, moments in state["state"].items():
            axis = type(sae).latent_state.get(names[idx])
            per_param[idx] = {k: _gather_to_main(v, axis) if axis is not None and v.ndim else v.cpu()
                              for k, v in moments.items()}
        return {"state": per_param, "param_groups": state["param_groups"]} if self.is_main else None

    def save_checkpoint(self, path: str, sae: SAE, optimizer: torch.optim.Optimizer, train_state: dict[str, Any]) -> None:
        full = self.gather_sae(sae)
        optim_state = self._gather_optimizer(sae, optimizer)
        if self.is_main:
            save_checkpoint(path, full, _FullOptimizer(optim_state), train_state)
        dist.barrier()


# --- sources -----------------------------------------------------------------------------------------------------
class StridedSource:
    """Rank ``rank``'s rows of one global stream: each call reads ``batch_size * world_size`` rows and keeps rows
    rank, rank + world_size, ... So world sizes see the same global batches, and the stream position (the inner
    source's state) is the same on every rank. For sources that are cheap to read (in memory, synthetic); an
    LLM harvest should instead run one stream per rank, seeded with ``DistContext.rank_seed``."""

    def __init__(self, source: ActivationSource, rank: int, world_size: int) -> None:
        self.world_size = check_positive_int("world_size", world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.source, self.rank, self.d_in = source, rank, source.d_in

    def next_batch(self, batch_size: int) -> torch.Tensor:
        return self.source.next_batch(batch_size * self.world_size)[self.rank::self.world_size]

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


# --- launching -----------------------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """Where this process stands: its rank, the world size, its device; ``launched`` when torchrun started it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_seed(self, seed: int) -> int:
        """A per-rank seed for a rank's own data stream; rank 0 keeps ``seed``."""
        return seed + 1_000_033 * self.rank

    def strategy(self, mode: str = "data") -> SingleProcess | None:
        """The ``parallel`` argument for ``train``: None outside torchrun, else DataParallel ("data") or
        LatentSharded ("latent")."""
        check_choice("mode", mode, ["data", "latent"])
        if not self.launched:
            return None
        return DataParallel(self.device) if mode == "data" else LatentSharded(self.device)

    def close(self) -> None:
        if self.launched and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> "DistContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def setup_from_env(device: str | None = None, backend: str | None = None) -> DistContext:
    """Initialise ``torch.distributed`` from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT). Outside torchrun, return a single-process context and initialise nothing.

    ``device``: "cuda" (each rank takes GPU LOCAL_RANK; backend nccl) or "cpu" (backend gloo); default: cuda if
    available."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext(device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if kind == "cuda" else "gloo"),
                                device_id=torch.device(device) if kind == "cuda" else None)
    return DistContext(rank, world_size, local_rank, device, launched=True)


__all__ = ["SingleProcess", "DataParallel", "LatentSharded", "StridedSource", "DistContext", "setup_from_env",
           "shard_sae", "latent_slice", "ShardComms"]
