"""The methods the book compares and how each is set, in one place: the synthetic sweep, SynthSAEBench and the
LLM benchmark read their recipes from here (the replication's "ours" protocol states the same numbers).

A method is an SAE variant plus its penalty settings and trainer options; its L1 strength is calibrated per
problem (TopK-style methods fix L0 = k instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aen_mini.sae import SAE, make_sae
from aen_mini.validate import check_choice

__all__ = ["AUX_COEFF", "EMA_BETA", "GAMMA", "L1_WARMUP_FRAC", "L2_RATIO", "MAIN_METHODS", "METHODS", "REF_PCT", "WARMUP_FRAC",
           "WARMUP_START_FRAC", "Method", "build_sae", "dead_after_tokens", "hyperparameters", "l1_warmup_steps",
           "method"]

# Adaptive reweighting, following the authors: gamma = 1, top-1% reference, warm-up from 25% of training,
# linear over the next 25%. beta = 0.99 rather than 0.999 because our runs are a few thousand steps, and an
# EMA with a 1000-step memory would still remember its initial value when the reweighting switches on.
GAMMA, EMA_BETA, REF_PCT = 1.0, 0.99, 0.01
WARMUP_START_FRAC, WARMUP_FRAC = 0.25, 0.25
# The control for the implicit penalty warm-up AEN's delayed reweighting gives it: a plain linear l1 (and l2)
# warm-up over the first half of training, where AEN's reweighting is fully on, offered to the other penalties.
L1_WARMUP_FRAC = 0.5
L2_RATIO = 0.1  # elastic net and AEN: l2_coeff = 0.1 l1_coeff (the authors keep l2 small relative to l1)
AUX_COEFF = 1 / 32  # TopK's AuxK coefficient, with the default k_aux = d_in / 2 (Gao et al. 2024)
FIXED_K_VARIANTS = ("topk", "batch_topk")


@dataclass(frozen=True)
class Method:
    """One row of a comparison: an SAE variant plus how its penalties and the trainer are set."""

    name: str
    variant: str
    label: str
    l2_ratio: float = 0.0  # l2_coeff = l2_ratio * l1_coeff
    adaptive: bool = False  # AdaptiveLasso / AEN: reweighting with the delayed warm-up above
    resample: bool = False  # dead-latent resampling by the trainer (Bricken et al.)
    aux: bool = True  # TopK-style methods: AuxK on (AUX_COEFF) or off
    l1_warmup: bool = False  # the trainer ramps l1 (and l2) in linearly over the first L1_WARMUP_FRAC of training

    @property
    def calibrated(self) -> bool:
        """Whether l1 is tuned to the target L0 (TopK and BatchTopK fix L0 = k by construction)."""
        return self.variant not in FIXED_K_VARIANTS


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("relu_l1", "relu_l1", "ReLU + L1"),
    Method("relu_l1_resample", "relu_l1", "ReLU + L1 + resampling", resample=True),
    Method("topk_auxk", "topk", "TopK + AuxK"),
    Method("batch_topk_auxk", "batch_topk", "BatchTopK + AuxK"),
    Method("elastic_net", "elastic_net", "Elastic net", l2_ratio=L2_RATIO),
    # The controls for AEN's implicit warm-up: the same penalties, ramped in by the trainer.
    Method("relu_l1_warmup", "relu_l1", "ReLU + L1 + warm-up", l1_warmup=True),
    Method("elastic_net_warmup", "elastic_net", "Elastic net + warm-up", l2_ratio=L2_RATIO, l1_warmup=True),
    Method("adaptive_lasso", "adaptive_lasso", "Adaptive lasso", adaptive=True),
    Method("aen", "aen", "AEN", l2_ratio=L2_RATIO, adaptive=True),
    # Supplementary: an L2 term as large as the L1 one, to see whether strong convexity changes starvation.
    Method("elastic_net_strong_l2", "elastic_net", "Elastic net (l2 = l1)", l2_ratio=1.0),
    Method("aen_strong_l2", "aen", "AEN (l2 = l1)", l2_ratio=1.0, adaptive=True),
)}
MAIN_METHODS: tuple[str, ...] = ("relu_l1", "relu_l1_resample", "topk_auxk", "elastic_net", "adaptive_lasso", "aen")


def method(name: str | Method) -> Method:
    """A method by name (or the method itself)."""
    if isinstance(name, Method):
        return name
    return METHODS[check_choice("method", name, METHODS)]


def dead_after_tokens(batch_size: int, steps: int) -> int:
    """Silent for 5% of training counts as dead for AuxK and resampling."""
    return batch_size * max(1, steps // 20)


def hyperparameters(recipe: str | Method, l1_coeff: float | None, steps: int, k: int) -> dict[str, Any]:
    """The variant's hyperparameters for a run of ``steps`` steps (the adaptive warm-up is a fraction of the run);
    ``k`` is used by TopK-style methods, ``l1_coeff`` by the others."""
    recipe = method(recipe)
    if not recipe.calibrated:
        return {"k": k, "aux_coeff": AUX_COEFF if recipe.aux else 0.0}
    if l1_coeff is None:
        raise ValueError(f"method {recipe.name!r} needs an l1_coeff (calibrate it first)")
    hyper: dict[str, Any] = {"l1_coeff": l1_coeff}
    if recipe.l2_ratio:
        hyper["l2_coeff"] = recipe.l2_ratio * l1_coeff
    if recipe.adaptive:
        hyper.update(gamma=GAMMA, ema_beta=EMA_BETA, ref_pct=REF_PCT, warmup_start=int(WARMUP_START_FRAC * steps),
                     warmup_steps=int(WARMUP_FRAC * steps))
    return hyper


def l1_warmup_steps(recipe: str | Method, steps: int) -> int:
    """The trainer's l1 warm-up (``TrainConfig.l1_warmup_steps``) for a run of ``steps`` steps: 0 unless the
    method asks for one."""
    return int(L1_WARMUP_FRAC * steps) if method(recipe).l1_warmup else 0


def build_sae(recipe: str | Method, d_in: int, d_sae: int, l1_coeff: float | None, steps: int, k: int,
              batch_size: int, seed: int) -> SAE:
    """The method's SAE for a run of ``steps`` steps of ``batch_size``."""
    return make_sae(method(recipe).variant, d_in, d_sae, **hyperparameters(recipe, l1_coeff, steps, k),
                    dead_after_tokens=dead_after_tokens(batch_size, steps), seed=seed)
