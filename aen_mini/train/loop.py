"""One trainer for every SAE variant: Adam, gradient clipping, lr warm-up and decay, dead-latent tracking,
optional resampling, progress with tokens/s, checkpoints and exact resume.

Variants differ only through their own ``loss`` and ``after_step``: nothing here branches on the variant.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from aen_mini.io.checkpoint import load_checkpoint
from aen_mini.data.source import ActivationSource
from aen_mini.sae import SAE
from aen_mini.sae.collective import StatReducer
from aen_mini.train.config import TRAJECTORY_FIELDS, TrainConfig
from aen_mini.train.parallel import SingleProcess
from aen_mini.train.step import StepOutput, make_step
from aen_mini.validate import check_activations


class NonFiniteLossError(ValueError):
    """The loss became NaN or inf; training stopped before writing the weights."""


@dataclass
class TrainResult:
    sae: SAE
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0


def _train_state(step: int, source: ActivationSource, history: list[dict[str, float]], cfg: TrainConfig,
                 data: dict[str, Any] | None) -> dict[str, Any]:
    state = {"step": step, "source": source.state_dict(), "history": history, "train_config": asdict(cfg)}
    return state if data is None else {**state, "data": data}


def _check_resumable(path: str | Path, saved: dict[str, Any] | None, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint under a config that would train a different trajectory from its step on."""
    if not saved:  # written by save_checkpoint without a trainer state: nothing to compare
        return
    current = json.loads(json.dumps(asdict(cfg)))  # as the checkpoint stores it (tuples become lists)
    # steps only moves the lr schedule when it decays: without decay, a longer run extends the same trajectory
    decays = min(current["lr_decay_start"], saved.get("lr_decay_start", 1.0)) < 1.0
    differing = [name for name in TRAJECTORY_FIELDS if name in saved and saved[name] != current[name]
                 and (name != "steps" or decays)]
    if differing:
        raise ValueError(f"checkpoint {path} was trained with {', '.join(f'{n}={saved[n]!r}' for n in differing)}; "
                         f"this run has {', '.join(f'{n}={current[n]!r}' for n in differing)} (resume with the "
                         "checkpoint's settings, or start a new run)")


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'name=saved there, current here' for every key whose values differ; '' if none does."""
    differing = sorted(name for name in set(saved) | set(current) if saved.get(name) != current.get(name))
    return "; ".join(f"{n}={saved.get(n)!r} there, {current.get(n)!r} here" for n in differing)


def _check_same_data(path: str | Path, saved: dict[str, Any] | None, current: dict[str, Any] | None) -> None:
    """Refuse to resume a checkpoint on other activations than it was trained on (model, hook, context length,
    normalisation, corpus ...), naming every setting that differs with both values."""
    if saved is None or current is None:  # a checkpoint (or run) that records no data settings: nothing to compare
        return
    if differences := _differences(saved, current):
        raise ValueError(f"checkpoint {path} was trained on other data: {differences} (resume with the checkpoint's "
                         "data settings, or start a new run)")


def load_resumable(path: str | Path, sae: SAE, cfg: TrainConfig, data: dict[str, Any] | None = None) -> Any:
    """Load checkpoint ``path`` for resuming ``sae`` under ``cfg`` on ``data`` (settings recorded with it), or raise a
    ValueError naming what does not match; runs call this before writing anything, ``train`` again on resume."""
    ckpt = load_checkpoint(path)
    if differences := _differences(ckpt.sae.config(), sae.config()):
        raise ValueError(f"checkpoint {path} holds a different SAE: {differences}")
    missing = [key for key in ("step", "history", "source") if key not in ckpt.train_state]
    if missing:
        raise ValueError(f"checkpoint {path} holds no trainer state ({', '.join(missing)} missing): it was saved "
                         "without train_state, so its weights load (aen_mini.io.checkpoint.load_sae) but it cannot be resumed")
    _check_resumable(path, ckpt.train_state.get("train_config"), cfg)
    _check_same_data(path, ckpt.train_state.get("data"), data)
    return ckpt


def check_weights_dtype(sae: SAE, cfg: TrainConfig) -> None:
    """The trainer keeps float32 master weights (float64 for exact tests); low precision is ``cfg.precision``."""
    dtype = sae.W_dec.dtype
    if dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"the SAE's weights are {str(dtype).removeprefix('torch.')}: training keeps float32 master "
                         "weights (call sae.float()); precision='bf16' runs the matmuls in bfloat16")
    if dtype == torch.float64 and cfg.fast:
        raise ValueError("fast=True trains float32 weights (bf16 or fp32 matmuls), but the SAE is float64: "
                         "call sae.float() or drop fast")


def train(sae: SAE, source: ActivationSource, cfg: TrainConfig, *,
          callback: Callable[[int, dict[str, float], SAE], None] | None = None,
          resume: str | Path | None = None, parallel: SingleProcess | None = None,
          data: dict[str, Any] | None = None) -> TrainResult:
    """Train ``sae`` on batches from ``source``; resume from a checkpoint file if ``resume`` is given.

    ``parallel``: None for one process, or a strategy (``aen_mini.train.parallel.DataParallel``,
    ``aen_mini.train.sharding.LatentSharded``) under torchrun; then ``source`` is this rank's source, ``cfg.batch_size`` the global batch,
    and the returned SAE this rank's model (the whole SAE, or its latent shard).
    ``data``: JSON-serialisable settings that identify the activations (model, hook, corpus hash ...); recorded in
    every checkpoint, and a resume on different ones is refused."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be an aen_mini SAE (make_sae), got {type(sae).__name__}")
    if not isinstance(source, ActivationSource):
        raise TypeError(f"source must be an ActivationSource (d_in, next_batch, state_dict, load_state_dict), "
                        f"got {type(source).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if source.d_in != sae.d_in:
        raise ValueError(f"source yields d_in={source.d_in} but the SAE expects d_in={sae.d_in}")
    check_weights_dtype(sae, cfg)
    parallel = parallel or SingleProcess()
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r} but CUDA is not available here; use device='cpu'")
    torch.manual_seed(cfg.seed)
    start, history, optimizer_state = 0, [], None
    if resume is not None:
        ckpt = load_resumable(resume, sae, cfg, data)
        sae.load_state_dict(ckpt.sae.state_dict())
        optimizer_state = ckpt.optimizer_state
        start, history = ckpt.train_state["step"], ckpt.train_state["history"]
        parallel.load_source_state(source, ckpt.train_state)
    sae, loss_fn = parallel.prepare(sae, cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    if optimizer_state is not None:
        optimizer.load_state_dict(parallel.local_optimizer_state(sae, optimizer_state))
    step_fn = make_step(sae, optimizer, loss_fn, cfg, parallel)
    # The plain step checks every loss on the host before updating, so a NaN never reaches the weights. The fused
    # step skips a non-finite update on the device (fused Adam's found_inf, buffers restored), so on a GPU it is
    # checked once per log window instead of stalling the pipeline every step.
    check_every = (cfg.log_every or cfg.steps) if step_fn.checks_on_device else 1
    pending: list[torch.Tensor] = []
    t0, tokens_at_t0 = time.perf_counter(), start * cfg.batch_size
    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and parallel.is_main), unit="step",
               dynamic_ncols=True)
    for step in range(start, cfg.steps):
        x = parallel.next_batch(source, cfg.batch_size)
        if step == start:
            check_activations(x, sae.d_in, name="first training batch")
        x = x.to(device, non_blocking=True)
        before_step(sae, x, step, start, cfg, parallel.stats)
        out = step_fn(x, cfg.lr_at(step))  # forward, backward, clipping, Adam and after_step
        pending.append(out.terms["loss"])
        if (step + 1) % check_every == 0 or step + 1 == cfg.steps:
            raise_if_nonfinite(pending, step)
        if cfg.resample_every and (step + 1) % cfg.resample_every == 0:
            raise_if_nonfinite(pending, step)  # resampling from a NaN batch would write NaN into the weights
            parallel.resample(sae, x, optimizer, seed=cfg.seed * 1_000_003 + step)

        done = step + 1
        if (cfg.log_every and done % cfg.log_every == 0) or done == cfg.steps:
            raise_if_nonfinite(pending, step)
            elapsed = time.perf_counter() - t0
            record = log_record(sae, out, done, cfg, (done * cfg.batch_size - tokens_at_t0) / max(elapsed, 1e-9),
                                parallel.stats)
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4g}", l0=f"{record['l0']:.1f}",
                            dead=f"{record['dead_pct']:.1f}%", tok_s=f"{record['tokens_per_s']:.3g}")
            if callback is not None and parallel.is_main:
                callback(done, record, sae)
        if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            parallel.save_checkpoint(cfg.checkpoint_path, sae, optimizer, _train_state(done, source, history, cfg, data))
        bar.update(1)
    bar.close()
    sae.penalty_scale.fill_(1.0)
    return TrainResult(sae, history, time.perf_counter() - t0)


def before_step(sae: SAE, x: torch.Tensor, step: int, start: int, cfg: TrainConfig, stats: StatReducer) -> None:
    """What a step needs set first: the initialisation on the first batch (the authors' init, or b_dec at the
    batch's mean) and the l1/l2 warm-up factor (filled in place: a CUDA graph replays with the current value)."""
    if step == 0 and cfg.init == "authors":
        sae.init_like_authors_(sae.seed)
    elif step == 0 and cfg.init_b_dec:
        with torch.no_grad():
            sae.b_dec.copy_(stats.batch_mean(x.float().mean(0)))
    if step == start or step <= cfg.l1_warmup_steps:
        sae.penalty_scale.fill_(cfg.penalty_scale_at(step))


def raise_if_nonfinite(pending: list[torch.Tensor], step: int) -> None:
    """Raise if any of the window's losses (``pending``, ending at ``step``) is not finite; empties the window."""
    if not pending:
        return
    finite = torch.isfinite(torch.stack(pending)).tolist()  # one host sync for the whole window
    first_step = step - len(pending) + 1
    pending.clear()
    if not all(finite):
        bad = first_step + finite.index(False)
        raise NonFiniteLossError(f"loss became NaN or inf at step {bad}; training stopped before the weights were "
                                 "updated with it (lower the learning rate or check the activations)")


def log_record(sae: SAE, out: StepOutput, step: int, cfg: TrainConfig, tokens_per_s: float,
               reduce: StatReducer) -> dict[str, float]:
    """One logged record: the step's loss terms, L0 and dead % (reduced over ranks and shards), lr and throughput."""
    terms, h = out.terms, out.codes
    l0 = reduce.latent_sum((h > 0).float().sum(-1).mean())
    stats = torch.cat([reduce.batch_mean(torch.stack([*(v.detach().float() for v in terms.values()), l0])),
                       reduce.latent_mean(sae.dead_mask().float().mean() * 100).view(1)]).tolist()
    record = dict(zip([*terms.keys(), "l0", "dead_pct"], stats))
    record.update(step=step, tokens=step * cfg.batch_size, lr=cfg.lr_at(step - 1), tokens_per_s=tokens_per_s)
    return record


__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "before_step", "check_weights_dtype", "load_resumable",
           "log_record", "raise_if_nonfinite", "train"]
