"""The SAE base class: encoder, decoder, the reconstruction term, and the bookkeeping every variant shares.

A variant only says how codes are made from pre-activations (`activation`) and which penalties it adds
(`penalties`); the loss is always ``mse + sum(penalties)``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from aen_mini.sae.collective import LOCAL_STATS, ONE_PROCESS, LatentComms, StatReducer
from aen_mini.validate import check_activations, check_choice, check_features, check_positive_int, check_seed, option

# How the reconstruction error is reduced over features. "sum" (ours): ||x - x_hat||^2 averaged over the batch.
# "mean" (the authors'): averaged over the batch and the d_in features, i.e. "sum" / d_in. The same run in both
# conventions therefore needs penalty coefficients lambda_sum = d_in * lambda_mean (see coefficients_for_scale).
LOSS_SCALES = ("sum", "mean")
# The two initialisations. "ours": encoder = decoder transposed, b_enc = 0 (and the trainer puts b_dec at the
# first batch's mean, TrainConfig.init_b_dec). "authors": torch.nn.Linear's default init for an untied encoder
# (weights and b_enc uniform in +-1/sqrt(d_in)) and decoder (uniform in +-1/sqrt(d_sae), columns then
# normalised), b_dec = 0, as in the authors' saes/base.py.
INITS = ("ours", "authors")


def coefficients_for_scale(coeff: float, d_in: int, from_scale: str, to_scale: str) -> float:
    """A penalty coefficient converted between loss scales: lambda_sum = d_in * lambda_mean."""
    check_choice("from_scale", from_scale, LOSS_SCALES)
    check_choice("to_scale", to_scale, LOSS_SCALES)
    factor = {("mean", "sum"): float(d_in), ("sum", "mean"): 1.0 / d_in}.get((from_scale, to_scale), 1.0)
    return coeff * factor


@dataclass
class SAEConfig:
    """What every variant's config holds: the sizes and the bookkeeping. A variant's config subclasses this beside
    its class (``ReLUL1Config`` next to ``ReLUL1``) and adds its hyperparameters, each with a default."""

    d_in: int
    d_sae: int
    dead_after_tokens: int = option(1_000_000, "a latent silent for this many tokens counts as dead")
    seed: int = option(0, "seed of the initialisation")
    loss_scale: str = option("sum", "the reconstruction error summed ('sum', ours) or averaged ('mean', the "
                                    "authors') over features")

    def __post_init__(self) -> None:
        self.d_in = check_positive_int("d_in", self.d_in)
        self.d_sae = check_positive_int("d_sae", self.d_sae)
        self.dead_after_tokens = check_positive_int("dead_after_tokens", self.dead_after_tokens)
        self.seed = check_seed("seed", self.seed)
        self.loss_scale = check_choice("loss_scale", self.loss_scale, LOSS_SCALES)


class SAE(nn.Module):
    """h = activation(W_enc (x - b_dec) + b_enc),  x_hat = W_dec h + b_dec, with unit-norm decoder columns.

    Built from its config: ``ReLUL1(ReLUL1Config(d_in, d_sae, l1_coeff=0.1))`` (or ``make_sae``). ``latents`` (a
    slice of range(d_sae)) and ``comms`` build one process's shard for latent-sharded training: it holds those
    latents' encoder rows, decoder columns and per-latent state (``latent_state``), and completes sums and
    selections over the latent axis through ``comms``; its config stays the whole SAE's."""

    variant: ClassVar[str] = ""
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    # Which axis of each per-latent state tensor indexes latents (the axis a latent shard holds a slice of);
    # every other tensor (b_dec, a variant's scalars) is replicated on every shard.
    latent_state: ClassVar[dict[str, int]] = {"W_enc": 0, "b_enc": 0, "W_dec": 1, "tokens_since_fired": 0}
    # How each penalty term is completed across latent shards (collective.PENALTY_REDUCTIONS).
    penalty_reduction: ClassVar[dict[str, str]] = {}
    # Matmuls of 2 d_in d_sae FLOP per token in one training step (aen_mini.run.planning.flop_per_token): encoder
    # and decoder, each forward, input gradient and weight gradient.
    matmuls_per_token: ClassVar[int] = 6
    # The SAELens inference architecture that computes the same map (aen_mini.io.saelens); see saelens_export.
    saelens_architecture: ClassVar[str] = "standard"
    l1_coeff: float = 0.0
    l2_coeff: float = 0.0

    def __init__(self, cfg: SAEConfig, *, latents: slice | None = None, comms: LatentComms = ONE_PROCESS) -> None:
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} is built from a {self.config_class.__name__}, got "
                            f"{type(cfg).__name__} (use make_sae(variant, d_in, d_sae, **hyperparameters))")
        super().__init__()
        for f in fields(cfg):  # hyperparameters as attributes (a variant may expose some as properties instead)
            if not isinstance(getattr(type(self), f.name, None), property):
                setattr(self, f.name, getattr(cfg, f.name))
        self.latent_slice = slice(0, cfg.d_sae) if latents is None else latents
        if not (0 <= self.latent_slice.start < self.latent_slice.stop <= cfg.d_sae):
            raise ValueError(f"latents {self.latent_slice} is not a non-empty slice of range({cfg.d_sae})")
        self.comms = comms
        g = torch.Generator().manual_seed(cfg.seed)
        atoms = torch.randn(cfg.d_in, cfg.d_sae, generator=g)[:, self.latent_slice]  # a shard: its own columns
        atoms /= atoms.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(atoms)  # columns are the dictionary atoms
        self.W_enc = nn.Parameter(atoms.T.contiguous())  # the decoder's transpose, row-major: fused Adam reads flat memory
        self.b_enc = nn.Parameter(torch.zeros(self.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        # Tokens seen since each latent last fired: the one dead-latent counter that the trainer,
        # resampling and AuxK all read.
        self.register_buffer("tokens_since_fired", torch.zeros(self.n_latents, dtype=torch.long))
        # Multiplies the "l1" and "l2" terms: the trainer's coefficient warm-up (TrainConfig.l1_warmup_steps)
        # fills it each step. A tensor, so a compiled or CUDA-graph step reads its current value. Not a
        # hyperparameter (not saved): 1 outside training.
        self.register_buffer("penalty_scale", torch.ones(()), persistent=False)

    @property
    def n_latents(self) -> int:
        """Latents held here: d_sae, or the shard's share of them."""
        return self.latent_slice.stop - self.latent_slice.start

    @property
    def cfg(self) -> SAEConfig:
        """The config this SAE was built from (a fresh copy: editing it changes nothing)."""
        return self.config_class(**{f.name: getattr(self, f.name) for f in fields(self.config_class)})

    @torch.no_grad()
    def init_like_authors_(self, seed: int = 0) -> "SAE":
        """Re-draw the parameters as the authors' nn.Linear layers start (see INITS); returns self."""
        g = torch.Generator().manual_seed(check_seed("seed", seed))
        enc_bound, dec_bound = self.d_in ** -0.5, self.d_sae ** -0.5
        uniform = lambda shape, bound: (torch.rand(shape, generator=g) * 2 - 1) * bound  # noqa: E731
        own = self.latent_slice  # drawn whole, then this shard's part: the same SAE for any number of shards
        atoms = uniform((self.d_in, self.d_sae), dec_bound)[:, own]
        self.W_dec.copy_(atoms / atoms.norm(dim=0, keepdim=True).clamp_min(1e-12))
        self.W_enc.copy_(uniform((self.d_sae, self.d_in), enc_bound)[own])
        self.b_enc.copy_(uniform((self.d_sae,), enc_bound)[own])
        self.b_dec.zero_()
        return self

    # --- the map -----------------------------------------------------------------------------------
    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.comms.shared(self.b_dec)) @ self.W_enc.T + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (..., d_sae) of x (..., d_in); x is cast to the weights' dtype, as SAELens does."""
        x = check_features(x, self.W_enc.shape[1], "x").to(self.W_enc.dtype)
        return self.activation(self.pre_activation(x))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        # W_dec's width, not d_sae: a latent shard decodes its own slice of the codes
        h = check_features(h, self.W_dec.shape[1], "h").to(self.W_dec.dtype)
        return self.decode_atoms(h) + self.b_dec

    def decode_atoms(self, h: torch.Tensor) -> torch.Tensor:
        """W_dec h without the bias: a sum over latents (completed across latent shards by ``comms``)."""
        return self.comms.sum(h @ self.W_dec.T)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode(x)
        return self.decode(h), h

    # --- the objective -----------------------------------------------------------------------------
    def penalties(self, h: torch.Tensor, pre: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The variant's terms, each already multiplied by its coefficient."""
        return {}

    def scaled_penalties(self, h: torch.Tensor, pre: torch.Tensor, x: torch.Tensor,
                         x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``penalties`` with "l1" and "l2" multiplied by the warm-up factor ``penalty_scale`` (what every loss uses)."""
        return {name: t * self.penalty_scale.to(t.dtype) if name in ("l1", "l2") else t
                for name, t in self.penalties(h, pre, x, x_hat).items()}

    def loss_and_codes(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Named loss terms for a batch (``"loss"`` is their sum, the quantity that is minimised) and the batch's
        codes (detached), which ``after_step`` and the trainer's log read."""
        x = check_activations(x, self.d_in, check_finite=False).to(self.W_enc.dtype)
        pre = self.pre_activation(x)
        h = self.activation(pre)
        x_hat = self.decode(h)
        terms = {"mse": self.reconstruction_error(x, x_hat)}
        terms.update(self.comms.reduce_penalties(self.scaled_penalties(h, pre, x, x_hat), self.penalty_reduction))
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms, h.detach()

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch; ``"loss"`` is their sum."""
        return self.loss_and_codes(x)[0]

    def reconstruction_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """||x - x_hat||^2 averaged over the batch ("sum") or over the batch and the features ("mean")."""
        error = (x - x_hat).pow(2).sum(-1).mean()
        return error / x.shape[-1] if self.loss_scale == "mean" else error

    # --- after each optimiser step -----------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, h: torch.Tensor | None = None, stats: StatReducer = LOCAL_STATS) -> None:
        """Renormalise decoder columns; given the step's codes ``h``, count firing and update the variant's running
        state. ``stats`` makes the counters and running statistics those of the global batch when training is
        distributed."""
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))
        if h is None:
            return
        fired = stats.batch_any((h > 0).any(dim=0))
        # (count + batch) where the latent stayed silent, 0 where it fired; no host sync.
        self.tokens_since_fired.add_(stats.batch_tokens(h.shape[0])).mul_(~fired)
        self.update_state(h, stats)

    def update_state(self, h: torch.Tensor, stats: StatReducer = LOCAL_STATS) -> None:
        """Variant hook: running statistics updated from the last batch's codes (default: none)."""

    def dead_mask(self) -> torch.Tensor:
        """Latents that have not fired for ``dead_after_tokens`` tokens."""
        return self.tokens_since_fired >= self.dead_after_tokens

    # --- configuration -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The config as JSON: the variant's name and every field of its config dataclass (a shard: the whole SAE's)."""
        return {"variant": self.variant, **{f.name: getattr(self, f.name) for f in fields(self.config_class)}}

    def saelens_export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What SAELens needs beyond the four standard tensors: extra cfg.json fields and extra weights."""
        return {}, {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "variant")
