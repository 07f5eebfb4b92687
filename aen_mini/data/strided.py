"""Rank ``rank``'s rows of one global stream, for data-parallel training on sources that are cheap to read."""
from __future__ import annotations

from typing import Any

import torch

from aen_mini.data.source import ActivationSource
from aen_mini.validate import check_positive_int


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank seed for a rank's own data stream (an LLM harvest per rank); rank 0 keeps ``seed``."""
    return seed + 1_000_033 * rank


class StridedSource:
    """Rank ``rank``'s rows of one global stream: each call reads ``batch_size * world_size`` rows and keeps rows
    rank, rank + world_size, ... So world sizes see the same global batches, and the stream position (the inner
    source's state) is the same on every rank. For sources that are cheap to read (in memory, synthetic); an
    LLM harvest should instead run one stream per rank, seeded with ``rank_seed``."""

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


__all__ = ["StridedSource", "rank_seed"]
