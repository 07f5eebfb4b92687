"""Grid training on stored activations: many SAEs learn from one harvest at once, over many passes.

``aen_mini.train.grid`` trains a grid of SAEs as one batched model on data drawn on the device. This module feeds it a
harvest instead of synthetic draws: ``TensorStreams`` holds the activations once (e.g. bf16 on the GPU) and returns,
per step, a random batch of rows for each of its streams (one stream per seed, so seeds differ in data order as well
as in init). Rows are drawn with replacement, so a run of ``steps x batch_size`` tokens makes
``steps x batch_size / len(x)`` passes over the harvest on average (``passes``). The draw is a ``torch.randint``
plus an index, so it is captured inside the grid's CUDA graph.

``GridConfig`` (TrainConfig's fields) gives the grid TrainConfig's linear learning-rate warm-up
(``lr_warmup_steps``; the authors' Pythia config warms up over the first 16 % of steps).
"""
from __future__ import annotations

import torch

from aen_mini.validate import check_positive_int

__all__ = ["TensorStreams", "passes"]


class TensorStreams:
    """Random batches of rows of ``x`` (N, d) for ``streams`` independent streams: ``(streams, B, d)`` float32."""

    def __init__(self, x: torch.Tensor, streams: int = 1, seed: int = 0) -> None:
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty (rows, features) tensor, got shape {tuple(x.shape)}")
        self.x, self.streams = x, check_positive_int("streams", streams)
        self.device = x.device
        if self.device.type == "cuda":  # the default CUDA generator is the one a CUDA graph can capture
            torch.cuda.manual_seed(seed)
            self.generator = None
        else:
            self.generator = torch.Generator(self.device).manual_seed(seed)

    def __call__(self, batch_size: int) -> torch.Tensor:
        rows = torch.randint(0, self.x.shape[0], (self.streams, batch_size), device=self.device, generator=self.generator)
        return self.x[rows].float()


def passes(steps: int, batch_size: int, distinct_tokens: int) -> float:
    """How many times over the harvest a run of ``steps`` batches goes, on average."""
    return steps * batch_size / check_positive_int("distinct_tokens", distinct_tokens)
