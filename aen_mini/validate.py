"""Boundary checks shared by every public entry point: a clear error naming the problem, early."""
from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Iterable

import torch


def check_activations(x: Any, d_in: int | None = None, name: str = "x", check_finite: bool = True) -> torch.Tensor:
    """Return ``x`` if it is a finite floating (batch, d_in) tensor, else raise naming what is wrong."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, d_in), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float32, bfloat16, ...), got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, d_in), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if d_in is not None and x.shape[1] != d_in:
        raise ValueError(f"{name} has {x.shape[1]} features per row but the SAE expects d_in={d_in}")
    if check_finite and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero()[0, 0].item()
        raise ValueError(f"{name} contains NaN or inf (first at row {bad})")
    return x


def check_features(x: Any, size: int, name: str = "x") -> torch.Tensor:
    """Return ``x`` if it is a floating tensor of shape (..., size): rows batched in any leading shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., {size}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float32, bfloat16, ...), got {x.dtype}")
    if x.ndim == 0 or x.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}), got {tuple(x.shape)}")
    return x


def check_seed(name: str, value: Any) -> int:
    """A seed torch.Generator.manual_seed accepts: an int in [0, 2**63)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {value!r}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_in_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    above = ok_type and (value > low if low_open else value >= low)
    below = ok_type and (value < high if high_open else value <= high)
    if not (above and below):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_device(name: str, value: Any) -> str:
    """A torch device name that this machine's torch can use: 'cuda' on a CPU-only build is refused here, early,
    instead of deep inside the first tensor moved there."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must name a torch device ('cpu', 'cuda', 'cuda:1', 'mps'), got {value!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
        raise ValueError(f"{name}={value!r} but CUDA is not available here (torch {torch.__version__}, {build}); "
                         "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{name}={value!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    return value


def option(default: Any = None, help: str = "", *, default_factory: Any = None, **metadata: Any) -> Any:
    """A config dataclass field with its help text, which the command line shows (aen_mini.run.cli), and any other
    facts about it (``metadata``, e.g. TrainConfig's ``trajectory``)."""
    metadata = {"help": help, **metadata}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)
