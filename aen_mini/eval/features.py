"""Feature inspection: which contexts make a latent fire, how often each latent fires, and how strongly.

``feature_stats`` makes one pass over the token contexts (harvest, normalise, encode) and keeps, per latent,
the firing count and the ``top_k`` strongest activations with where they happened. The rest works from
those numbers: ``top_contexts_html`` (the contexts around a latent's top activations, tokens shaded by the
latent's activation, the top token outlined), ``density_histogram`` (log10 firing frequency over latents)
and ``activation_histogram`` (one latent's nonzero activations). ``first_fire_index`` and ``dead_pct_by_window``
show how "dead %" depends on the number of tokens it is counted over. They return data and HTML, not figures:
drawing is ``aen_mini.book.plots``' job.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import torch

from aen_mini.data.activations import ActivationNormalizer, harvest_contexts
from aen_mini.data.text import TokenBatch, as_token_batch
from aen_mini.validate import check_positive_int


@dataclass
class FeatureStats:
    """Per latent: ``fire_counts (d_sae,)`` over ``n_tokens`` masked-in tokens; ``top_values / top_context /
    top_position (d_sae, top_k)``: the strongest activations, strongest first, and where they occurred
    (value 0 and context -1 where a latent fired fewer than ``top_k`` times)."""

    n_tokens: int
    fire_counts: torch.Tensor
    top_values: torch.Tensor
    top_context: torch.Tensor
    top_position: torch.Tensor

    def density(self) -> torch.Tensor:
        """Fraction of tokens on which each latent fires."""
        return self.fire_counts.double() / self.n_tokens

    def log10_density(self) -> torch.Tensor:
        """log10 of the firing frequency; -inf for latents that never fired."""
        return self.density().log10()


def _codes(model: Any, sae: Any, batch: TokenBatch, hook_name: str, normalizer: ActivationNormalizer | None) -> torch.Tensor:
    """SAE codes ``(contexts, ctx, d_sae)`` for every position (masked-out ones included)."""
    x = harvest_contexts(model, batch, hook_name)
    dtype = next(sae.parameters()).dtype
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    if normalizer is not None:
        flat = normalizer.normalize(flat)[0]
    return sae.encode(flat).reshape(*x.shape[:2], -1)


@torch.no_grad()
def feature_stats(model: Any, sae: Any, tokens: TokenBatch | torch.Tensor, hook_name: str,
                  normalizer: ActivationNormalizer | None = None, top_k: int = 10, batch_size: int = 8) -> FeatureStats:
    """Firing counts and top activations of every latent over the masked-in positions of ``tokens``."""
    check_positive_int("top_k", top_k)
    check_positive_int("batch_size", batch_size)
    batch = as_token_batch(tokens)
    counts = top_v = top_c = top_p = None
    n_tokens = 0
    for start in range(0, len(batch), batch_size):
        part = batch[start:start + batch_size].to(model.device)
        h = _codes(model, sae, part, hook_name, normalizer).float()
        where = part.mask.nonzero()  # (rows, 2): context within the part, position
        h = h[part.mask]  # (rows, d_sae)
        if counts is None:
            d_sae = h.shape[1]
            counts = torch.zeros(d_sae, dtype=torch.long, device=h.device)
            top_v = torch.zeros(d_sae, 0, device=h.device)
            top_c = torch.zeros(d_sae, 0, dtype=torch.long, device=h.device)
            top_p = torch.zeros(d_sae, 0, dtype=torch.long, device=h.device)
        counts += (h > 0).sum(0)
        n_tokens += h.shape[0]
        # Merge this batch's activations into the running top-k of every latent.
        values = torch.cat([top_v, h.T], dim=1)
        contexts = torch.cat([top_c, (where[:, 0] + start).expand(d_sae, -1)], dim=1)
        positions = torch.cat([top_p, where[:, 1].expand(d_sae, -1)], dim=1)
        top_v, idx = values.topk(min(top_k, values.shape[1]), dim=1)
        top_c, top_p = contexts.gather(1, idx), positions.gather(1, idx)
    if counts is None or n_tokens == 0:
        raise ValueError("the token mask selects no positions: no features to inspect")
    fired = top_v > 0
    return FeatureStats(n_tokens, counts.cpu(), top_v.cpu(), top_c.where(fired, -1).cpu(), top_p.where(fired, -1).cpu())


def _token_text(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    return text.replace("\n", "\u23ce").replace("\t", "\u21e5") or "\u2205"


def context_row_html(texts: list[str], acts: list[float], top: int, value: float, peak: float) -> str:
    """One table row: the tokens ``texts``, each shaded by its activation (``peak`` = full colour), token ``top``
    outlined, ``value`` in the first column."""
    cells = []
    for q, (text, a) in enumerate(zip(texts, acts)):
        alpha = max(0.0, a) / peak if peak > 0 else 0.0
        outline = "outline:2px solid #c00;" if q == top else ""
        cells.append(f'<span style="background:rgba(255,120,0,{alpha:.2f});{outline}white-space:pre-wrap;overflow-wrap:anywhere" '
                     f'title="{a:.3f}">{html.escape(text)}</span>')
    return f'<tr><td style="padding-right:1em">{value:.3f}</td><td>{"".join(cells)}</td></tr>'


@torch.no_grad()
def top_contexts_html(model: Any, sae: Any, stats: FeatureStats, tokens: TokenBatch | torch.Tensor, hook_name: str,
                      latent: int, normalizer: ActivationNormalizer | None = None, window: int = 8) -> str:
    """An HTML table of ``latent``'s top contexts: ``window`` tokens either side of the top token, each token
    shaded by the latent's activation there (max of the row = full colour), the top token outlined."""
    if not 0 <= latent < stats.fire_counts.shape[0]:
        raise ValueError(f"latent must be in [0, {stats.fire_counts.shape[0]}), got {latent}")
    batch = as_token_batch(tokens)
    found = stats.top_context[latent] >= 0
    contexts, positions, values = stats.top_context[latent][found], stats.top_position[latent][found], stats.top_values[latent][found]
    density = float(stats.density()[latent])
    rows = [f"<p><b>latent {latent}</b>: fires on {density:.3%} of {stats.n_tokens} tokens</p>"]
    if len(contexts) == 0:
        return rows[0] + "<p>never fires on these contexts</p>"
    acts = _codes(model, sae, batch[contexts].to(model.device), hook_name, normalizer)[..., latent].float().cpu()
    peak = float(values.max())
    rows.append('<table style="font-family:monospace;border-collapse:collapse">')
    for i, (c, p, v) in enumerate(zip(contexts.tolist(), positions.tolist(), values.tolist())):
        lo, hi = max(0, p - window), min(batch.tokens.shape[1], p + window + 1)
        keep = [q for q in range(lo, hi) if batch.attention_mask[c, q]]
        texts = [_token_text(model.tokenizer, int(batch.tokens[c, q])) for q in keep]
        rows.append(context_row_html(texts, [float(acts[i, q]) for q in keep], keep.index(p), v, peak))
    rows.append("</table>")
    return "\n".join(rows)


def density_histogram(stats: FeatureStats, bins: int = 40, low: float = -7.0) -> dict[str, Any]:
    """Histogram of log10 firing frequency over the latents that fired, plus the number that never did."""
    check_positive_int("bins", bins)
    log_d = stats.log10_density()
    alive = log_d[torch.isfinite(log_d)]
    edges = torch.linspace(low, 0.0, bins + 1, dtype=torch.float64)
    counts = torch.histc(alive.clamp(low, 0.0), bins=bins, min=low, max=0.0).long()
    return {"edges": edges.tolist(), "counts": counts.tolist(), "dead": int((~torch.isfinite(log_d)).sum()),
            "xlabel": "log10 firing frequency", "ylabel": "latents"}


@torch.no_grad()
def activation_histogram(model: Any, sae: Any, tokens: TokenBatch | torch.Tensor, hook_name: str, latent: int,
                         normalizer: ActivationNormalizer | None = None, bins: int = 40, batch_size: int = 8) -> dict[str, Any]:
    """Histogram of ``latent``'s nonzero activations over the masked-in positions of ``tokens``."""
    check_positive_int("bins", bins)
    batch = as_token_batch(tokens)
    values = []
    for start in range(0, len(batch), batch_size):
        part = batch[start:start + batch_size].to(model.device)
        h = _codes(model, sae, part, hook_name, normalizer)[..., latent][part.mask].float()
        values.append(h[h > 0].cpu())
    nonzero = torch.cat(values)
    top = float(nonzero.max()) if len(nonzero) else 1.0
    counts = torch.histc(nonzero, bins=bins, min=0.0, max=top).long()
    return {"edges": torch.linspace(0.0, top, bins + 1).tolist(), "counts": counts.tolist(), "n_nonzero": len(nonzero),
            "n_tokens": int(batch.mask.sum()), "xlabel": f"latent {latent} activation", "ylabel": "tokens"}


@torch.no_grad()
def first_fire_index(sae: Any, x: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """For each latent, the index of the first row of ``x`` (SAE inputs, in order) on which it fires;
    ``len(x)`` for a latent that never fires. One pass, ``chunk`` rows at a time."""
    check_positive_int("chunk", chunk)
    param = next(sae.parameters())
    first = torch.full((sae.d_sae,), len(x), dtype=torch.long, device=param.device)
    for start in range(0, len(x), chunk):
        fires = sae.encode(x[start:start + chunk].to(param.device, param.dtype)) > 0
        rows = torch.arange(start, start + len(fires), device=param.device).unsqueeze(1)
        first = torch.minimum(first, torch.where(fires, rows, len(x)).min(dim=0).values)
    return first.cpu()


def dead_pct_by_window(first_fire: torch.Tensor, windows: list[int], n_rows: int) -> list[float]:
    """Dead % counted over the first ``w`` tokens, for each ``w`` in ``windows`` (at most ``n_rows``, the rows
    ``first_fire`` was computed on): the share of latents whose first firing comes at index ``w`` or later. It can only fall as the window grows: a rare latent looks dead on a
    short window (a latent firing on a fraction p of tokens is missed by w tokens with probability (1 - p)^w)."""
    if first_fire.ndim != 1 or first_fire.numel() == 0:
        raise ValueError("first_fire must be a non-empty 1-D tensor (first_fire_index(...))")
    for w in windows:
        check_positive_int("window", w)
        if w > n_rows:
            raise ValueError(f"window {w} is longer than the {n_rows} rows first_fire was computed on")
    return [100.0 * float((first_fire >= w).double().mean()) for w in windows]
