"""The SAE base class: encoder, decoder, the reconstruction term, and the bookkeeping every variant shares.

A variant only says how codes are made from pre-activations (`activation`) and which penalties it adds
(`penalties`); the loss is always ``mse + sum(penalties)``.
"""
from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from aen_mini.validate import check_activations, check_choice, check_features, check_positive_int, check_seed

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


class StatReducer:
    """Turns statistics of what this process sees into statistics of the whole training step.

    One process sees the whole batch and every latent, so each method is the identity; ``aen_mini.train.distributed``
    supplies the data-parallel version (other processes hold other rows) and the latent-sharded one (other
    processes hold other latents)."""

    def batch_tokens(self, n: int) -> int:
        """Rows in the global batch, given this process's ``n``."""
        return n

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over the global batch, given the mean over this process's rows."""
        return t

    def batch_any(self, t: torch.Tensor) -> torch.Tensor:
        """True where true for any row of the global batch, given this process's rows (bool)."""
        return t

    def latent_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over all latents, given the sum over this process's latents."""
        return t

    def latent_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over all latents, given the mean over this process's latents."""
        return t

    def codes_min(self, t: torch.Tensor) -> torch.Tensor:
        """Minimum over every code of the step, given the minimum over this process's codes."""
        return t


LOCAL_STATS = StatReducer()


class SAE(nn.Module):
    """h = activation(W_enc (x - b_dec) + b_enc),  x_hat = W_dec h + b_dec, with unit-norm decoder columns."""

    variant: ClassVar[str] = ""
    l1_coeff: float = 0.0
    l2_coeff: float = 0.0

    def __init__(self, d_in: int, d_sae: int, *, dead_after_tokens: int = 1_000_000, seed: int = 0,
                 loss_scale: str = "sum") -> None:
        super().__init__()
        self.loss_scale = check_choice("loss_scale", loss_scale, LOSS_SCALES)
        self.d_in = check_positive_int("d_in", d_in)
        self.d_sae = check_positive_int("d_sae", d_sae)
        self.dead_after_tokens = check_positive_int("dead_after_tokens", dead_after_tokens)
        self.seed = check_seed("seed", seed)
        g = torch.Generator().manual_seed(seed)
        atoms = torch.randn(d_in, d_sae, generator=g)
        atoms /= atoms.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(atoms)  # columns are the dictionary atoms
        self.W_enc = nn.Parameter(atoms.T.contiguous())  # the decoder's transpose, row-major: fused Adam reads flat memory
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # Tokens seen since each latent last fired: the one dead-latent counter that the trainer,
        # resampling and AuxK all read.
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))
        self._last_codes: torch.Tensor | None = None
        # Multiplies the "l1" and "l2" terms: the trainer's coefficient warm-up (TrainConfig.l1_warmup_steps)
        # sets it each step. Not a hyperparameter: 1 outside training.
        self.penalty_scale = 1.0

    @torch.no_grad()
    def init_like_authors_(self, seed: int = 0) -> "SAE":
        """Re-draw the parameters as the authors' nn.Linear layers start (see INITS); returns self."""
        g = torch.Generator().manual_seed(check_seed("seed", seed))
        enc_bound, dec_bound = self.d_in ** -0.5, self.d_sae ** -0.5
        uniform = lambda shape, bound: (torch.rand(shape, generator=g) * 2 - 1) * bound  # noqa: E731
        atoms = uniform((self.d_in, self.d_sae), dec_bound)
        self.W_dec.copy_(atoms / atoms.norm(dim=0, keepdim=True).clamp_min(1e-12))
        self.W_enc.copy_(uniform((self.d_sae, self.d_in), enc_bound))
        self.b_enc.copy_(uniform((self.d_sae,), enc_bound))
        self.b_dec.zero_()
        return self

    # --- the map -----------------------------------------------------------------------------------
    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc.T + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (..., d_sae) of x (..., d_in); x is cast to the weights' dtype, as SAELens does."""
        x = check_features(x, self.W_enc.shape[1], "x").to(self.W_enc.dtype)
        return self.activation(self.pre_activation(x))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        # W_dec's width, not d_sae: a latent-sharded SAE decodes its own slice of the codes
        h = check_features(h, self.W_dec.shape[1], "h").to(self.W_dec.dtype)
        return self.decode_atoms(h) + self.b_dec

    def decode_atoms(self, h: torch.Tensor) -> torch.Tensor:
        """W_dec h without the bias: the sum over latents that latent-sharded training completes across processes."""
        return h @ self.W_dec.T

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode(x)
        return self.decode(h), h

    # --- the objective -----------------------------------------------------------------------------
    def penalties(self, h: torch.Tensor, pre: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The variant's terms, each already multiplied by its coefficient."""
        return {}

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch; ``"loss"`` is their sum, the quantity that is minimised."""
        x = check_activations(x, self.d_in, check_finite=False).to(self.W_enc.dtype)
        pre = self.pre_activation(x)
        h = self.activation(pre)
        x_hat = self.decode(h)
        terms = {"mse": self.reconstruction_error(x, x_hat)}
        terms.update(self.penalties(h, pre, x, x_hat))
        if self.penalty_scale != 1.0:
            terms.update({name: terms[name] * self.penalty_scale for name in ("l1", "l2") if name in terms})
        terms["loss"] = torch.stack(list(terms.values())).sum()
        self._last_codes = h.detach()
        return terms

    def reconstruction_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """||x - x_hat||^2 averaged over the batch ("sum") or over the batch and the features ("mean")."""
        error = (x - x_hat).pow(2).sum(-1).mean()
        return error / x.shape[-1] if self.loss_scale == "mean" else error

    # --- after each optimiser step -----------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, stats: StatReducer = LOCAL_STATS) -> None:
        """Renormalise decoder columns, count firing, update the variant's running state. ``stats`` makes the
        counters and running statistics those of the global batch when training is distributed."""
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))
        h = self._last_codes
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
        """JSON-serialisable constructor arguments (every argument is stored under its own name)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {"variant": self.variant, **{name: getattr(self, name) for name in names}}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "variant")
