"""Where training batches come from. Every source is seekable through a JSON-serialisable state, so a resumed
run sees exactly the batches an uninterrupted one would."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from aen_mini.validate import check_activations, check_positive_int


@runtime_checkable
class ActivationSource(Protocol):
    d_in: int

    def next_batch(self, batch_size: int) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorSource:
    """Batches from an in-memory (N, d_in) tensor, reshuffled every epoch by a seeded permutation."""

    def __init__(self, activations: torch.Tensor, seed: int = 0, shuffle: bool = True) -> None:
        self.activations = check_activations(activations, name="activations")
        self.d_in = activations.shape[1]
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order, beside the activations: indexing a GPU tensor with a CPU index copies the index
        synchronously, which would stall the GPU once per step. Drawn on the CPU, so every device has one order."""
        n = self.activations.shape[0]
        if not self.shuffle:
            return torch.arange(n, device=self.activations.device)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return order.to(self.activations.device)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        check_positive_int("batch_size", batch_size)
        parts, needed = [], batch_size
        while needed:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = self._order[self.position:self.position + needed]
            parts.append(self.activations[take])
            self.position += len(take)
            needed -= len(take)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        n = self.activations.shape[0]
        if epoch < 0 or not 0 <= position <= n:  # past the rows, next_batch would never reach the epoch's end
            raise ValueError(f"state (epoch={epoch}, position={position}) does not fit this source of {n} rows: "
                             "it was saved by a source over other activations")
        self.epoch, self.position = epoch, position
        self._order = self._permutation(self.epoch)
