"""Adaptive reweighting of the L1 penalty, shared by the adaptive lasso and the AEN-SAE.

Latents that fire strongly on average get a small L1 weight (less shrinkage); rarely active ones get a large
weight (spurious features suppressed):

    a_j   <- beta * a_j + (1 - beta) * batch_mean |h_j|          (EMA, detached, a_j = 1 at start)
    ref    = mean of the top ref_pct of a
    w_j    = clip((ref / max(a_j, 1e-5)) ** gamma, 0.01, w_max)       (w_max = 10 as the authors)
    w~_j   = 1 + (w_j - 1) * r(t),  r = 0 before warmup_start, then linear to 1 over warmup_steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aen_mini.sae.base import SAE, SAEConfig
from aen_mini.sae.collective import LOCAL_STATS, ONE_PROCESS, LatentComms, StatReducer
from aen_mini.validate import check_in_range, check_nonnegative, check_nonnegative_int, option

W_MIN, W_MAX, A_FLOOR = 0.01, 10.0, 1e-5  # W_MAX: the default of w_max


class AdaptiveL1Weights(nn.Module):
    """The running statistics and the rule above; its state (EMA, step) is saved with the SAE.

    ``n_latents`` and ``comms``: for a latent shard, the EMA holds that many latents and the reference is taken
    over every shard's (``d_sae`` is the whole SAE's count)."""

    def __init__(self, d_sae: int, gamma: float, ema_beta: float, ref_pct: float, warmup_start: int, warmup_steps: int,
                 w_max: float = W_MAX, *, n_latents: int | None = None, comms: LatentComms = ONE_PROCESS) -> None:
        super().__init__()
        self.w_max = check_in_range("w_max", w_max, W_MIN, math.inf)
        self.gamma = check_nonnegative("gamma", gamma)
        self.ema_beta = check_in_range("ema_beta", ema_beta, 0.0, 1.0, high_open=True)
        self.ref_pct = check_in_range("ref_pct", ref_pct, 0.0, 1.0, low_open=True)
        self.warmup_start = check_nonnegative_int("warmup_start", warmup_start)
        self.warmup_steps = check_nonnegative_int("warmup_steps", warmup_steps)
        self.n_ref = max(1, math.ceil(ref_pct * d_sae))
        self.comms = comms
        self.register_buffer("ema", torch.ones(d_sae if n_latents is None else n_latents))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def ramp(self) -> torch.Tensor:
        """r(t) as a tensor (no host sync)."""
        t = (self.step - self.warmup_start).float()
        if self.warmup_steps == 0:
            return (t >= 0).float()
        return (t / self.warmup_steps).clamp(0.0, 1.0)

    def reference(self) -> torch.Tensor:
        """Mean of the top ref_pct of the EMA: the activity level that gets weight 1."""
        return self.comms.top_sum(self.ema, self.n_ref) / self.n_ref

    def weights(self) -> torch.Tensor:
        """The effective per-latent weights w~ (detached)."""
        ref = self.reference()
        w = (ref / self.ema.clamp_min(A_FLOOR)).pow(self.gamma).clamp(W_MIN, self.w_max)
        return 1.0 + (w - 1.0) * self.ramp()

    @torch.no_grad()
    def update(self, h: torch.Tensor, stats: StatReducer = LOCAL_STATS) -> None:
        self.ema.lerp_(stats.batch_mean(h.abs().mean(dim=0)).to(self.ema.dtype), 1.0 - self.ema_beta)
        self.step.add_(1)


@dataclass
class AdaptiveLassoConfig(SAEConfig):
    l1_coeff: float = option(1e-3, "weight of the reweighted L1 penalty")
    gamma: float = option(1.0, "exponent of the reweighting rule")
    ema_beta: float = option(0.999, "decay of the running mean of |h_j|")
    ref_pct: float = option(0.01, "share of the most active latents whose mean activity gets weight 1")
    warmup_start: int = option(0, "step at which the reweighting begins")
    warmup_steps: int = option(0, "steps over which the reweighting ramps in")
    w_max: float = option(W_MAX, "largest L1 weight")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.l1_coeff = check_nonnegative("l1_coeff", self.l1_coeff)
        AdaptiveL1Weights(1, self.gamma, self.ema_beta, self.ref_pct, self.warmup_start, self.warmup_steps,
                          self.w_max)  # checks the rule's settings, naming the one that is wrong


class AdaptiveLasso(SAE):
    """loss = mean ||x - x_hat||^2 + l1 * mean sum_j w~_j |h_j|."""

    variant = "adaptive_lasso"
    config_class = AdaptiveLassoConfig
    latent_state = {**SAE.latent_state, "reweighting.ema": 0}
    penalty_reduction = {"l1": "latent_sum"}

    def __init__(self, cfg: AdaptiveLassoConfig, **shard) -> None:
        super().__init__(cfg, **shard)
        self.reweighting = AdaptiveL1Weights(cfg.d_sae, cfg.gamma, cfg.ema_beta, cfg.ref_pct, cfg.warmup_start,
                                             cfg.warmup_steps, cfg.w_max, n_latents=self.n_latents, comms=self.comms)

    # hyperparameters live on the reweighting module; expose them for config()
    gamma = property(lambda self: self.reweighting.gamma)
    ema_beta = property(lambda self: self.reweighting.ema_beta)
    ref_pct = property(lambda self: self.reweighting.ref_pct)
    warmup_start = property(lambda self: self.reweighting.warmup_start)
    warmup_steps = property(lambda self: self.reweighting.warmup_steps)
    w_max = property(lambda self: self.reweighting.w_max)

    def l1_weights(self) -> torch.Tensor:
        return self.reweighting.weights()

    def penalties(self, h, pre, x, x_hat):
        return {"l1": self.l1_coeff * (h.abs() * self.l1_weights()).sum(-1).mean()}

    def update_state(self, h: torch.Tensor, stats: StatReducer = LOCAL_STATS) -> None:
        self.reweighting.update(h, stats)


@dataclass
class AENConfig(AdaptiveLassoConfig):
    l2_coeff: float = option(1e-3, "weight of the squared L2 penalty on the codes")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.l2_coeff = check_nonnegative("l2_coeff", self.l2_coeff)


class AEN(AdaptiveLasso):
    """Adaptive Elastic Net: loss = mean ||x - x_hat||^2 + l1 * mean sum_j w~_j |h_j| + l2 * mean sum_j h_j^2."""

    variant = "aen"
    config_class = AENConfig
    penalty_reduction = {"l1": "latent_sum", "l2": "latent_sum"}

    def penalties(self, h, pre, x, x_hat):
        return {**super().penalties(h, pre, x, x_hat), "l2": self.l2_coeff * h.pow(2).sum(-1).mean()}
