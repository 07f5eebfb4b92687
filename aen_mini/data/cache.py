"""An optional disk cache of harvested activations: harvest once, train many SAEs.

``cache_activations`` writes ``shard_00000.safetensors, ...`` (each ``shard_rows`` rows, key ``"x"``) and
then ``manifest.json``; every file is written atomically (temporary file, fsync, rename), and the manifest
last, so a folder with a manifest is always complete. ``CachedActivationSource`` serves the rows as an
ActivationSource: every epoch visits the shards in a new seeded order and each shard's rows in a new
seeded order, loading one shard at a time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from aen_mini.io.atomic import atomic_save_safetensors, atomic_write_text
from aen_mini.data.activations import ActivationNormalizer, harvest
from aen_mini.data.text import TokenBatch
from aen_mini.validate import check_positive_int

MANIFEST = "manifest.json"


def cache_activations(model: Any, tokens: TokenBatch, hook_name: str, out_dir: str | os.PathLike, *,
                      shard_rows: int = 65_536, batch_size: int = 32, normalize: bool = True,
                      dtype: torch.dtype = torch.float32) -> Path:
    """Harvest ``hook_name`` over ``tokens`` into shards under ``out_dir``; returns the manifest's path."""
    check_positive_int("shard_rows", shard_rows)
    check_positive_int("batch_size", batch_size)
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise ValueError(f"{out} already holds an activation cache; choose an empty folder")
    normalizer = ActivationNormalizer(model.d_model) if normalize else None
    shards: list[dict[str, Any]] = []
    pending: list[torch.Tensor] = []

    def write(rows: torch.Tensor) -> None:
        name = f"shard_{len(shards):05d}.safetensors"
        atomic_save_safetensors({"x": rows.to(dtype)}, out / name)
        shards.append({"file": name, "rows": rows.shape[0]})

    for start in range(0, len(tokens), batch_size):
        x = harvest(model, tokens[start:start + batch_size], hook_name, batch_size).cpu()
        pending.append(normalizer.normalize(x)[0] if normalizer is not None else x)
        held = torch.cat(pending)
        while held.shape[0] >= shard_rows:
            write(held[:shard_rows])
            held = held[shard_rows:]
        pending = [held]
    if pending[0].shape[0]:
        write(pending[0])
    if not shards:
        raise ValueError("the token mask selects no positions: nothing to cache")
    manifest = {"d_in": model.d_model, "n_rows": sum(s["rows"] for s in shards), "shards": shards, "model": model.name,
                "hook_name": hook_name, "normalized": normalize, "dtype": str(dtype).removeprefix("torch.")}
    return atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


class CachedActivationSource:
    """Batches from an activation cache folder; ``state_dict`` = epoch, shard and row cursors."""

    def __init__(self, cache_dir: str | os.PathLike, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.dir = Path(cache_dir)
        if not (self.dir / MANIFEST).exists():
            raise ValueError(f"{self.dir} holds no {MANIFEST}: not a (complete) activation cache")
        self.manifest = json.loads((self.dir / MANIFEST).read_text())
        self.d_in: int = int(self.manifest["d_in"])
        self.seed, self.device = seed, torch.device(device)
        self._seek(0, 0, 0)

    def _perm(self, n: int, epoch: int, shard: int = -1) -> torch.Tensor:
        """The seeded order of the shards in an epoch (shard=-1), or of one shard's rows."""
        key = ((self.seed * 1_000_003 + epoch) * 1_000_003 + shard + 1) % 2**63
        return torch.randperm(n, generator=torch.Generator().manual_seed(key))

    def _seek(self, epoch: int, shard: int, row: int) -> None:
        self.epoch, self.shard_cursor, self.row_cursor = epoch, shard, row
        shards = self.manifest["shards"]
        self._shard_order = self._perm(len(shards), epoch).tolist()
        index = self._shard_order[shard]
        rows = load_file(str(self.dir / shards[index]["file"]))["x"]
        self._rows = rows[self._perm(rows.shape[0], epoch, index)].to(self.device)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        check_positive_int("batch_size", batch_size)
        parts, needed = [], batch_size
        while needed:
            if self.row_cursor == self._rows.shape[0]:
                more = self.shard_cursor + 1 < len(self._shard_order)
                self._seek(self.epoch + (not more), self.shard_cursor + 1 if more else 0, 0)
            take = self._rows[self.row_cursor:self.row_cursor + needed]
            parts.append(take)
            self.row_cursor += take.shape[0]
            needed -= take.shape[0]
        return torch.cat(parts).float()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard": self.shard_cursor, "row": self.row_cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed={state['seed']}, this source has seed={self.seed}")
        self._seek(int(state["epoch"]), int(state["shard"]), int(state["row"]))
