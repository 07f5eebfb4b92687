"""Checkpoints: one safetensors file holding the SAE (weights and running buffers), the Adam state, and a JSON
header with the SAE config and the trainer's state (step, data position, history). Written atomically and
checksummed, so a truncated, corrupted or foreign file is refused with a message naming it."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from aen_mini.io.atomic import atomic_save_safetensors
from aen_mini.sae import SAE, sae_from_config

FORMAT = "aen-mini-checkpoint/2"  # /2: the checksum also covers the metadata, dtypes and shapes


@dataclass
class Checkpoint:
    sae: SAE
    optimizer_state: dict[str, Any] | None
    train_state: dict[str, Any]
    path: Path


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every metadata entry but the digest itself:
    a flipped bit anywhere in the file either breaks its structure or changes this."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(metadata):
        if key != "sha256":
            h.update(f"{key}={metadata[key]}|".encode())
    return h.hexdigest()


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {f"optim.{idx}.{key}": value if torch.is_tensor(value) else torch.tensor(value)
               for idx, per_param in state["state"].items() for key, value in per_param.items()}
    return tensors, state["param_groups"]


def save_checkpoint(path: str | os.PathLike, sae: SAE, optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint atomically. ``optimizer``: the optimiser or its ``state_dict()`` (a latent-sharded run
    saves the state gathered from every rank). Refuses weights that hold NaN or inf."""
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be an aen_mini SAE, got {type(sae).__name__}")
    tensors = {f"sae.{k}": v for k, v in sae.state_dict().items()}
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"refusing to write checkpoint {path}: {name} holds NaN or inf")
    groups = None
    if optimizer is not None:
        state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        optim_tensors, groups = _optimizer_tensors(state)
        tensors.update(optim_tensors)
    metadata = {
        "format": FORMAT,
        "sae_config": json.dumps(sae.config()),
        "optimizer_param_groups": json.dumps(groups),
        "train_state": json.dumps(train_state or {}),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    return atomic_save_safetensors(tensors, path, metadata)


def read_safetensors(path: Path, what: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file on the CPU; a damaged file is a ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ValueError(f"{what}{path} is truncated or not a safetensors file ({err})") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; raises FileNotFoundError or ValueError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    tensors, metadata = read_safetensors(path, "checkpoint ")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not an aen-mini checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    if _digest(tensors, metadata) != metadata.get("sha256"):
        raise ValueError(f"checkpoint {path} is corrupt: its contents do not match the stored checksum")
    try:
        sae = sae_from_config(json.loads(metadata["sae_config"]))
    except (KeyError, ValueError, TypeError) as err:  # a file written by another version of aen_mini
        raise ValueError(f"checkpoint {path} holds an SAE config this aen_mini cannot build ({err})") from None
    sae_state = {k[len("sae."):]: v for k, v in tensors.items() if k.startswith("sae.")}
    load_sae_state(sae, sae_state, source=str(path))
    groups = json.loads(metadata.get("optimizer_param_groups", "null"))
    optimizer_state = None
    if groups is not None:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, idx, key = name.split(".", 2)
                per_param.setdefault(int(idx), {})[key] = value.to(device)
        optimizer_state = {"state": per_param, "param_groups": groups}
    return Checkpoint(sae.to(device), optimizer_state, json.loads(metadata.get("train_state", "{}")), path)


def load_sae_state(sae: SAE, state: dict[str, torch.Tensor], source: str = "state") -> None:
    """Load weights into ``sae``, naming every tensor whose shape does not match."""
    own = sae.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} vs SAE {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        raise ValueError(f"{source} does not fit this {sae.variant} SAE (d_in={sae.d_in}, d_sae={sae.d_sae}): "
                         f"missing {missing}, unexpected {extra}, wrong shapes {wrong}")
    sae.load_state_dict(state)


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    return load_checkpoint(path, device).sae
