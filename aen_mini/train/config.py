"""The trainer's settings: one dataclass, validated on construction, each field with its help text (the command
line shows it as ``--train.<name>``) and marked when it changes the trajectory a run computes (a resume under a
different value is refused)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from aen_mini.sae.base import INITS
from aen_mini.validate import (check_choice, check_in_range, check_nonnegative, check_nonnegative_int,
                               check_positive_int, check_seed, option)

PRECISIONS = ("fp32", "bf16")


def _trajectory(default, help: str):  # noqa: ANN001, ANN202
    return option(default, help, trajectory=True)


@dataclass
class TrainConfig:
    steps: int = field(metadata={"help": "optimiser steps", "trajectory": True})
    batch_size: int = _trajectory(4096, "tokens per optimiser step (the global batch under torchrun)")
    lr: float = _trajectory(1e-3, "Adam learning rate")
    lr_warmup_steps: int = _trajectory(0, "steps of linear learning-rate warm-up")
    lr_decay_start: float = _trajectory(1.0, "fraction of training after which the learning rate decays linearly to 0 "
                                             "(1: no decay)")
    adam_betas: tuple[float, float] = _trajectory((0.9, 0.999), "Adam's beta1 and beta2")
    grad_clip: float | None = _trajectory(1.0, "maximum gradient norm (0 or none: no clipping, the authors' "
                                               "synthetic setting)")
    seed: int = _trajectory(0, "seed of the SAE's initialisation and the data order")
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, mps")
    precision: str = _trajectory("fp32", "fp32, or bf16 (bf16 matmuls; weights and optimiser stay fp32)")
    compile: bool | None = option(None, "torch.compile the step's loss and after_step, in every path (default: on "
                                        "CUDA, off elsewhere)")
    fast: bool = _trajectory(False, "the fused step (aen_mini.train.fast): one process, fused loss and Adam; a CUDA "
                                    "graph on CUDA")
    init_b_dec: bool = _trajectory(True, "put b_dec at the first batch's mean, so the SAE starts centred on the data")
    init: str = _trajectory("ours", "initialisation: 'ours' (tied encoder) or 'authors' (untied nn.Linear init, "
                                    "b_dec = 0; init_b_dec ignored)")
    l1_warmup_steps: int = _trajectory(0, "steps over which the l1 and l2 terms ramp in linearly (0: none)")
    resample_every: int = _trajectory(0, "steps between dead-latent resamplings (0: never)")
    log_every: int = option(100, "steps between logged records (0: only the last step)")
    checkpoint_every: int = option(0, "steps between checkpoints (0: none)")
    checkpoint_path: str | None = option(None, "checkpoint file")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        check_in_range("lr", self.lr, 0.0, 1.0, low_open=True)
        check_nonnegative_int("lr_warmup_steps", self.lr_warmup_steps)
        check_in_range("lr_decay_start", self.lr_decay_start, 0.0, 1.0)
        if not isinstance(self.adam_betas, (tuple, list)) or len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be a pair (beta1, beta2), each in [0, 1), got {self.adam_betas!r}")
        self.adam_betas = tuple(check_in_range("adam_betas", b, 0.0, 1.0, high_open=True) for b in self.adam_betas)
        if self.grad_clip is not None:
            check_nonnegative("grad_clip", self.grad_clip)
        check_choice("init", self.init, INITS)
        check_nonnegative_int("l1_warmup_steps", self.l1_warmup_steps)
        check_choice("precision", self.precision, PRECISIONS)
        check_seed("seed", self.seed)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1', 'mps'), got {self.device!r}") from None
        for flag in ("fast", "init_b_dec", "progress"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False (or None: on CUDA only), got {self.compile!r}")
        if self.checkpoint_path is not None and not isinstance(self.checkpoint_path, (str, Path)):
            raise TypeError(f"checkpoint_path must be a str or Path, got {type(self.checkpoint_path).__name__}")
        check_nonnegative_int("resample_every", self.resample_every)
        check_nonnegative_int("log_every", self.log_every)
        check_nonnegative_int("checkpoint_every", self.checkpoint_every)
        if self.checkpoint_every and not self.checkpoint_path:
            raise ValueError("checkpoint_every is set but checkpoint_path is not")

    @property
    def compiles(self) -> bool:
        """Whether the step is compiled: ``compile``, or where it is None, whether the device is CUDA."""
        return torch.device(self.device).type == "cuda" if self.compile is None else self.compile

    @property
    def dtype(self) -> torch.dtype:
        """The matmuls' dtype."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to 0 over the last (1 - lr_decay_start) of training."""
        scale = min(1.0, (step + 1) / self.lr_warmup_steps) if self.lr_warmup_steps else 1.0
        decay_from = int(self.lr_decay_start * self.steps)
        if step >= decay_from and decay_from < self.steps:
            scale *= (self.steps - step) / (self.steps - decay_from)
        return self.lr * scale

    def penalty_scale_at(self, step: int) -> float:
        """The l1/l2 warm-up factor at ``step`` (0-based): linear from 1/l1_warmup_steps to 1, then 1."""
        return min(1.0, (step + 1) / self.l1_warmup_steps) if self.l1_warmup_steps else 1.0


# The fields that change what a run computes; the others (device, logging, checkpointing, progress, compile)
# may differ between the run that wrote a checkpoint and the run that resumes it.
TRAJECTORY_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("trajectory"))

__all__ = ["TrainConfig", "TRAJECTORY_FIELDS", "PRECISIONS"]
