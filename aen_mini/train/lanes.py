"""Several SAEs trained side by side on the same batches: each a ``Lane`` (its SAE, optimiser, step and schedule),
stepped by a caller that draws each batch once and hands it to every lane.

Where drawing a batch costs as much as a training step (a synthetic sampler on the GPU), training k SAEs one after
another pays for the data k times; lanes pay once. A lane is the trainer's single-process path (``train``), step by
step: the same step (``make_step``: fused with ``cfg.fast``, a CUDA graph per lane on CUDA), the same first-batch
initialisation and warm-ups (``before_step``), lr schedule, non-finite checks and logged records. Lanes may start
and end at different batches (a calibration probe ends early; the full run starts when its l1 is known).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from aen_mini.sae import SAE
from aen_mini.train.config import TrainConfig
from aen_mini.train.loop import before_step, check_weights_dtype, log_record, raise_if_nonfinite
from aen_mini.train.parallel import SingleProcess
from aen_mini.train.step import make_step
from aen_mini.validate import check_activations


class Lane:
    """``lane.step(x)`` trains ``sae`` one step on ``x`` under ``cfg`` (its ``steps``, lr schedule, warm-ups and
    logging); ``finished`` after ``cfg.steps`` steps; ``history`` holds the logged records, ``train_s`` the time
    spent in this lane's steps (the shared batches' sampling excluded). ``state``: a ``state_dict()`` of a lane of
    the same SAE and config, to continue from (in a new process: the step is compiled and captured again)."""

    def __init__(self, sae: SAE, cfg: TrainConfig, state: dict[str, Any] | None = None) -> None:
        if not isinstance(sae, SAE):
            raise TypeError(f"sae must be an aen_mini SAE (make_sae), got {type(sae).__name__}")
        check_weights_dtype(sae, cfg)
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={cfg.device!r} but CUDA is not available here; use device='cpu'")
        parallel = SingleProcess()
        if state is not None:
            sae.load_state_dict(state["sae"])
        self.sae, loss_fn = parallel.prepare(sae, cfg)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])  # before make_step: the fused step adapts it
        self.step_fn = make_step(self.sae, self.optimizer, loss_fn, cfg, parallel)
        self.cfg, self.device, self.stats = cfg, device, parallel.stats
        self.done, self.history, self.train_s = 0, [], 0.0
        if state is not None:
            self.done, self.history, self.train_s = state["done"], list(state["history"]), state["train_s"]
        self._start = self.done
        self._pending: list[torch.Tensor] = []
        self._check_every = (cfg.log_every or cfg.steps) if self.step_fn.checks_on_device else 1

    @property
    def finished(self) -> bool:
        return self.done >= self.cfg.steps

    def step(self, x: torch.Tensor) -> None:
        if self.finished:
            raise RuntimeError(f"this lane has run its {self.cfg.steps} steps")
        t0, cfg, step = time.perf_counter(), self.cfg, self.done
        if step == 0:
            check_activations(x, self.sae.d_in, name="first training batch")
        x = x.to(self.device, non_blocking=True)
        before_step(self.sae, x, step, self._start, cfg, self.stats)
        out = self.step_fn(x, cfg.lr_at(step))
        self._pending.append(out.terms["loss"])
        self.done = done = step + 1
        if done % self._check_every == 0 or done == cfg.steps:
            raise_if_nonfinite(self._pending, step)
        if (cfg.log_every and done % cfg.log_every == 0) or done == cfg.steps:
            raise_if_nonfinite(self._pending, step)
            self.history.append(log_record(self.sae, out, done, cfg, done * cfg.batch_size / max(self.train_s, 1e-9),
                                            self.stats))
        if done == cfg.steps:
            self.sae.penalty_scale.fill_(1.0)
        self.train_s += time.perf_counter() - t0

    def state_dict(self) -> dict[str, Any]:
        """What ``Lane(sae, cfg, state=...)`` needs to continue this lane exactly."""
        return {"sae": self.sae.state_dict(), "optimizer": self.optimizer.state_dict(), "done": self.done,
                "history": list(self.history), "train_s": self.train_s}


__all__ = ["Lane"]
