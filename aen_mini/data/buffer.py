"""A shuffle buffer: rows from many contexts go in, mixed rows come out, each row exactly once.

Consecutive tokens of one context have strongly correlated activations; an SAE batch drawn straight from
the harvest would hold a few contexts only. The buffer is filled to ``capacity`` rows, shuffled, and handed
out from the front; whenever half of it has been handed out it is topped up from the supplier and the whole
content is shuffled again, so every batch mixes rows of many fills.

What comes out depends only on the seed and on how many rows each supplied chunk has, never on how the
requests were split into calls: this is what lets an activation source replay a run from row counts alone.
"""
from __future__ import annotations

from typing import Callable

import torch

from aen_mini.validate import check_nonnegative_int, check_positive_int

ChunkSupplier = Callable[[], "torch.Tensor | None"]  # the next chunk of rows, or None when the pass is over


class ShuffleBuffer:
    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = check_positive_int("capacity", capacity)
        self.seed = seed
        self.refills = 0  # shuffles so far; seeds the next permutation
        self.exhausted = False  # the supplier said the pass is over: drain what is left
        self._rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self._rows is None else self._rows.shape[0]

    @property
    def rows(self) -> torch.Tensor | None:
        """The rows held, in the order they will come out."""
        return self._rows

    def restore(self, rows: torch.Tensor | None, refills: int, exhausted: bool) -> None:
        """Put the buffer in a known state (used when resuming from a checkpoint)."""
        self._rows, self.refills, self.exhausted = rows, check_nonnegative_int("refills", refills), bool(exhausted)

    def _refill(self, supply: ChunkSupplier) -> None:
        parts = [] if self._rows is None else [self._rows]
        held = len(self)
        while held < self.capacity:
            chunk = supply()
            if chunk is None:
                self.exhausted = True
                break
            parts.append(chunk)
            held += chunk.shape[0]
        if not parts:
            return
        rows = torch.cat(parts)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.refills)
        self._rows = rows[torch.randperm(rows.shape[0], generator=g).to(rows.device)]
        self.refills += 1

    def draw(self, n: int, supply: ChunkSupplier) -> torch.Tensor | None:
        """Up to ``n`` rows; fewer only once ``supply`` is exhausted and the buffer runs dry (None if empty)."""
        check_positive_int("n", n)
        half = self.capacity // 2
        parts = []
        while n > 0:
            if len(self) <= half and not self.exhausted:
                self._refill(supply)
            if len(self) == 0:
                break
            # Never take past the half mark in one go: the refill must happen at the same row count
            # however the requests are split.
            k = min(n, len(self) - half if (len(self) > half and not self.exhausted) else len(self))
            parts.append(self._rows[:k])
            self._rows = self._rows[k:]
            n -= k
        return torch.cat(parts) if parts else None
