"""Spliced evaluation: how much of the model's behaviour survives replacing an activation by its SAE
reconstruction.

At ``hook_name`` the activation of every masked-in position is replaced by ``denormalize(sae(normalize(x)))``
(or by 0, or by the mean activation, for the two ablation baselines). Positions outside the mask (padding,
BOS / [CLS] / [SEP]) keep their clean activation: the SAE was never trained on them, and the BOS residual
of many models is an outlier that would dominate the loss. The rest of the forward pass runs as usual.

Causal models: next-token cross-entropy and KL(clean || patched) over every position whose target token is
not padding, and ``ce_recovered = (CE_ablate - CE_sae) / (CE_ablate - CE_clean)`` for both ablations
(1 = the SAE loses nothing, 0 = as bad as deleting the activation).

Encoders (MiniLM): the sentence embedding (mean over non-padding tokens of the last layer, L2-normalised,
as sentence-transformers computes it); the change is ``1 - cos`` and the squared distance between the clean
and patched embeddings, and ``embedding_recovered = (d_ablate - d_sae) / d_ablate`` with ``d = 1 - cos``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from aen_mini.data.activations import ActivationNormalizer, harvest
from aen_mini.data.text import TokenBatch, as_token_batch
from aen_mini.validate import check_positive_int

Patch = Callable[[torch.Tensor], torch.Tensor]  # (N, d) masked-in activations -> replacements


def sae_patch(sae: Any, normalizer: ActivationNormalizer | None) -> Patch:
    """The SAE reconstruction, computed in the normalised space the SAE was trained in and mapped back."""
    def patch(x: torch.Tensor) -> torch.Tensor:
        dtype = next(sae.parameters()).dtype
        if normalizer is None:
            return sae(x.to(dtype))[0].to(x.dtype)
        x_n, scale = normalizer.normalize(x.to(dtype))
        return normalizer.denormalize(sae(x_n)[0], scale).to(x.dtype)
    return patch


def _patched_output(model: Any, batch: TokenBatch, hook_name: str, patch: Patch | None) -> torch.Tensor:
    mask = batch.mask

    def hook(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[mask] = patch(x[mask])
        return out

    hooks = [] if patch is None else [(hook_name, hook)]
    return model.run_with_hooks(batch.tokens, batch.attention_mask, hooks=hooks).float()


def _next_token_log_probs(logits: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (M, vocab) at the M positions whose next token is not padding, and those tokens (M, 1)."""
    keep = batch.attention_mask[:, 1:]
    return F.log_softmax(logits[:, :-1][keep], dim=-1), batch.tokens[:, 1:][keep].unsqueeze(1)


def _sentence_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1), dim=-1)


@torch.no_grad()
def spliced_metrics(model: Any, sae: Any, tokens: TokenBatch | torch.Tensor, hook_name: str,
                    normalizer: ActivationNormalizer | None = None, *, batch_size: int = 8,
                    mean_activation: torch.Tensor | None = None, baselines: bool = True) -> dict[str, float]:
    """Spliced-in quality of ``sae`` at ``hook_name`` (see the module docstring for every key).

    ``normalizer``: the one the SAE was trained behind (None: the SAE sees raw activations).
    ``mean_activation``: the mean-ablation value (raw space); by default the mean over ``tokens``' mask.
    ``baselines=False``: the SAE's splice alone (half the forward passes); no ablations, no CE/embedding recovered.
    """
    check_positive_int("batch_size", batch_size)
    model.check_hook(hook_name)
    batch = as_token_batch(tokens)
    if not bool(batch.mask.any()):
        raise ValueError("the token mask selects no positions: nothing to splice")
    patches: dict[str, Patch] = {"sae": sae_patch(sae, normalizer)}
    if baselines:
        if mean_activation is None:
            mean_activation = harvest(model, batch, hook_name, batch_size).mean(0)
        mean_activation = mean_activation.to(model.device)
        patches["zero"] = lambda x: torch.zeros_like(x)
        patches["mean"] = lambda x: mean_activation.to(x.dtype).expand_as(x)
    sums: dict[str, torch.Tensor] = {}

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + value.double()

    for i in range(0, len(batch), batch_size):
        part = batch[i:i + batch_size].to(model.device)
        clean = _patched_output(model, part, hook_name, None)
        if model.kind == "causal":
            logp_clean, targets = _next_token_log_probs(clean, part)
            add("n", torch.tensor(len(targets)))
            add("ce_clean", -logp_clean.gather(1, targets).sum())
            for name, patch in patches.items():
                logp, _ = _next_token_log_probs(_patched_output(model, part, hook_name, patch), part)
                add(f"ce_{name}", -logp.gather(1, targets).sum())
                add(f"kl_{name}", (logp_clean.exp() * (logp_clean - logp)).sum())
        else:
            add("n", torch.tensor(len(part)))
            e_clean = _sentence_embedding(clean, part.attention_mask)
            for name, patch in patches.items():
                e = _sentence_embedding(_patched_output(model, part, hook_name, patch), part.attention_mask)
                add(f"cos_dist_{name}", (1 - (e * e_clean).sum(-1)).sum())
                add(f"mse_{name}", (e - e_clean).pow(2).sum(-1).sum())
    n = sums.pop("n")
    out = {key: float(value / n) for key, value in sums.items()}
    out["n_positions" if model.kind == "causal" else "n_contexts"] = int(n)
    if not baselines:
        return out
    if model.kind == "causal":
        for ablation in ("zero", "mean"):
            out[f"ce_recovered_{ablation}"] = _recovered(out[f"ce_{ablation}"] - out["ce_sae"], out[f"ce_{ablation}"] - out["ce_clean"])
    else:
        for ablation in ("zero", "mean"):
            out[f"embedding_recovered_{ablation}"] = _recovered(out[f"cos_dist_{ablation}"] - out["cos_dist_sae"], out[f"cos_dist_{ablation}"])
    return out


def _recovered(gain: float, gap: float) -> float:
    # An ablation that does not hurt leaves nothing to recover: the ratio is undefined.
    return gain / gap if abs(gap) > 1e-12 else float("nan")
