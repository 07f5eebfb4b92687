"""Starting under ``torchrun``: where this process stands (rank, world size, device) and the strategy it trains with."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aen_mini.data.strided import rank_seed
from aen_mini.train.parallel import DataParallel, SingleProcess
from aen_mini.train.sharding import LatentSharded
from aen_mini.validate import check_choice


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
        return rank_seed(seed, self.rank)

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


__all__ = ["DistContext", "setup_from_env"]
