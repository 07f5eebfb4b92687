"""The SAE family: one base class, one file per variant, one registry."""
from __future__ import annotations

import inspect
from typing import Any

from aen_mini.sae.adaptive import AEN, AdaptiveL1Weights, AdaptiveLasso
from aen_mini.sae.base import SAE
from aen_mini.sae.elastic_net import ElasticNet
from aen_mini.sae.relu_l1 import ReLUL1
from aen_mini.sae.topk import BatchTopK, TopK

VARIANTS: dict[str, type[SAE]] = {cls.variant: cls for cls in (ReLUL1, TopK, BatchTopK, ElasticNet, AdaptiveLasso, AEN)}


def hyperparameter_names(variant: str) -> list[str]:
    """The constructor arguments of a variant after d_in and d_sae."""
    cls = variant_class(variant)
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "d_in", "d_sae")]


def variant_class(variant: str) -> type[SAE]:
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"unknown SAE variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def make_sae(variant: str, d_in: int, d_sae: int, **hyperparameters: Any) -> SAE:
    """Build an SAE by variant name, rejecting hyperparameters the variant does not have."""
    allowed = hyperparameter_names(variant)
    unknown = sorted(set(hyperparameters) - set(allowed))
    if unknown:
        raise ValueError(f"{variant} SAE has no hyperparameter(s) {unknown}; allowed: {allowed}")
    return variant_class(variant)(d_in, d_sae, **hyperparameters)


def sae_from_config(config: dict[str, Any]) -> SAE:
    """Inverse of ``SAE.config()``."""
    config = dict(config)
    try:
        variant, d_in, d_sae = config.pop("variant"), config.pop("d_in"), config.pop("d_sae")
    except KeyError as missing:
        raise ValueError(f"SAE config lacks the field {missing}") from None
    return make_sae(variant, d_in, d_sae, **config)


__all__ = ["SAE", "ReLUL1", "TopK", "BatchTopK", "ElasticNet", "AdaptiveLasso", "AEN", "AdaptiveL1Weights",
           "VARIANTS", "make_sae", "sae_from_config", "variant_class", "hyperparameter_names"]
