"""aen-mini: Adaptive Elastic Net sparse autoencoders, small and readable.

The package is layered; imports run downward only (tests/test_layers.py checks it):

    validate -> sae -> io -> data -> lm -> train, eval -> run -> experiments -> book

A few core names are available here, imported on first use so that ``import aen_mini`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "SAE": "aen_mini.sae", "make_sae": "aen_mini.sae", "VARIANTS": "aen_mini.sae",
    "TensorSource": "aen_mini.data.source", "SpikedSource": "aen_mini.data.synthetic",
    "TrainConfig": "aen_mini.train.loop", "load_sae": "aen_mini.io.checkpoint", "evaluate": "aen_mini.eval.metrics",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'aen_mini' has no attribute {name!r}")
