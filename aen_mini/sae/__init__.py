"""The SAE family: one base class, one file per variant (the class and its config dataclass side by side), one
registry. Adding a variant: write its file, add one ``register_variant`` line here (or in your own code)."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from aen_mini.sae.adaptive import AEN, AdaptiveL1Weights, AdaptiveLasso, AdaptiveLassoConfig, AENConfig
from aen_mini.sae.base import SAE, SAEConfig
from aen_mini.sae.elastic_net import ElasticNet, ElasticNetConfig
from aen_mini.sae.relu_l1 import ReLUL1, ReLUL1Config
from aen_mini.sae.topk import BatchTopK, BatchTopKConfig, TopK, TopKConfig

VARIANTS: dict[str, type[SAE]] = {}


def register_variant(cls: type[SAE]) -> type[SAE]:
    """Make ``cls`` (with its ``variant`` name and ``config_class``) buildable by name: make_sae, checkpoints,
    SAELens export, latent sharding and the command line read it from here."""
    if not (isinstance(cls, type) and issubclass(cls, SAE)) or not cls.variant:
        raise TypeError(f"a variant is an SAE subclass with a `variant` name, got {cls!r}")
    if not (issubclass(cls.config_class, SAEConfig) and cls.config_class is not SAEConfig):
        raise TypeError(f"{cls.__name__}.config_class must be its own SAEConfig subclass")
    if VARIANTS.get(cls.variant, cls) is not cls:
        raise ValueError(f"the variant name {cls.variant!r} is taken by {VARIANTS[cls.variant].__name__}")
    VARIANTS[cls.variant] = cls
    return cls


for _cls in (ReLUL1, TopK, BatchTopK, ElasticNet, AdaptiveLasso, AEN):
    register_variant(_cls)


def variant_class(variant: str) -> type[SAE]:
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"unknown SAE variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def config_class(variant: str) -> type[SAEConfig]:
    """The config dataclass of a variant."""
    return variant_class(variant).config_class


def hyperparameter_names(variant: str) -> list[str]:
    """The fields of a variant's config after d_in and d_sae."""
    return [f.name for f in fields(config_class(variant)) if f.name not in ("d_in", "d_sae")]


def make_sae(variant: str, d_in: int, d_sae: int, **hyperparameters: Any) -> SAE:
    """Build an SAE by variant name, rejecting hyperparameters the variant does not have."""
    allowed = hyperparameter_names(variant)
    unknown = sorted(set(hyperparameters) - set(allowed))
    if unknown:
        raise ValueError(f"{variant} SAE has no hyperparameter(s) {unknown}; allowed: {allowed}")
    cls = variant_class(variant)
    return cls(cls.config_class(d_in=d_in, d_sae=d_sae, **hyperparameters))


def sae_from_config(config: dict[str, Any]) -> SAE:
    """Inverse of ``SAE.config()``."""
    config = dict(config)
    try:
        variant, d_in, d_sae = config.pop("variant"), config.pop("d_in"), config.pop("d_sae")
    except KeyError as missing:
        raise ValueError(f"SAE config lacks the field {missing}") from None
    return make_sae(variant, d_in, d_sae, **config)


__all__ = ["SAE", "SAEConfig", "ReLUL1", "ReLUL1Config", "TopK", "TopKConfig", "BatchTopK", "BatchTopKConfig",
           "ElasticNet", "ElasticNetConfig", "AdaptiveLasso", "AdaptiveLassoConfig", "AEN", "AENConfig",
           "AdaptiveL1Weights", "VARIANTS", "register_variant", "make_sae", "sae_from_config", "variant_class",
           "config_class", "hyperparameter_names"]
