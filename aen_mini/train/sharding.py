"""Latent sharding: every rank holds the whole batch and a contiguous slice of the latents (encoder rows, decoder
columns, b_enc, their Adam moments and per-latent state). A shard is the variant built for its slice
(``SAE(cfg, latents=..., comms=ShardComms())``): ``ShardComms`` completes the reconstruction and the latent-summed
penalties by all-reduce and TopK/BatchTopK and the adaptive reference by a global top-k; what is per-latent and how
each penalty combines is declared by the variant (``latent_state``, ``penalty_reduction``). For dictionaries whose
weights and optimiser state do not fit one GPU. Checkpoints are gathered to rank 0 in the single-process format.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from aen_mini.data.source import ActivationSource
from aen_mini.io.checkpoint import save_checkpoint
from aen_mini.sae import SAE, sae_from_config
from aen_mini.sae.collective import PENALTY_REDUCTIONS, LatentComms, StatReducer
from aen_mini.train.parallel import _all_reduce, _DistributedStrategy
from aen_mini.train.step import LossFn


# --- differentiable collectives over the latent axis -------------------------------------------------------------
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


@torch.compiler.disable  # eager inside a compiled loss, as _all_reduce
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
    local.penalty_scale = sae.penalty_scale  # the same tensor: the trainer's warm-up reaches every shard
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


# --- the strategy --------------------------------------------------------------------------------------------------
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
        if cfg.fast:
            raise ValueError("fast is not supported with latent sharding (the fused loss computes b_dec's gradient "
                             "and the clipping norm for one holder of every latent); drop fast")
        local = shard_sae(sae, self.rank, self.world_size).to(self.device).train()
        return local, local.loss_and_codes

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
            save_checkpoint(path, full, optim_state, train_state)
        dist.barrier()


__all__ = ["LatentSharded", "ShardComms", "shard_sae", "latent_slice"]
