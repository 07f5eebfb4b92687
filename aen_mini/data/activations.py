"""Activations harvested from a language model at one hook, normalised, and served as an ActivationSource.

``harvest`` runs the model only up to the hooked block: the hook raises a private exception carrying the
activation, so later blocks (and the unembedding) never run. Positions outside the token mask (padding,
BOS / [CLS] / [SEP]) are dropped.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from aen_mini.data.buffer import ShuffleBuffer
from aen_mini.data.text import TokenBatch, as_token_batch
from aen_mini.validate import check_nonnegative_int, check_positive_int


class _Harvested(Exception):
    def __init__(self, activation: torch.Tensor) -> None:
        super().__init__("activation harvested")
        self.activation = activation


@torch.no_grad()
def harvest_contexts(model: Any, tokens: TokenBatch | torch.Tensor, hook_name: str) -> torch.Tensor:
    """The activation at ``hook_name`` for every position: ``(contexts, ctx, d_model)``, one forward pass."""
    model.check_hook(hook_name)
    batch = as_token_batch(tokens).to(model.device)

    def stop(x: torch.Tensor) -> None:
        raise _Harvested(x)

    try:
        model.run_with_hooks(batch.tokens, batch.attention_mask, hooks=[(hook_name, stop)])
    except _Harvested as done:
        return done.activation
    raise RuntimeError(f"hook {hook_name!r} did not fire during the forward pass")


def harvest(model: Any, tokens: TokenBatch | torch.Tensor, hook_name: str, batch_size: int = 32,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Activations at ``hook_name`` of the masked-in positions, ``(N, d_model)`` on the model's device.

    Rows are in context order, then position order. A plain tensor of tokens uses every position.
    """
    check_positive_int("batch_size", batch_size)
    batch = as_token_batch(tokens)
    parts = []
    for i in range(0, len(batch), batch_size):
        part = batch[i:i + batch_size]
        acts = harvest_contexts(model, part, hook_name)
        parts.append(acts[part.mask.to(acts.device)].to(dtype))
    return torch.cat(parts)


class ActivationNormalizer:
    """Rescale each token's activation to norm sqrt(d) and keep the factor, so reconstructions map back.

    ``x_n = x / scale`` with ``scale = ||x|| / sqrt(d)`` per row; ``denormalize(x_n, scale) = x_n * scale``.
    The SAE sees every token at the same scale, whatever the layer's typical norm.
    """

    def __init__(self, d: int) -> None:
        self.d = check_positive_int("d", d)

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != self.d:
            raise ValueError(f"x has {x.shape[-1]} features, the normalizer was made for d={self.d}")
        scale = x.norm(dim=-1, keepdim=True) / math.sqrt(self.d)
        return x / scale.clamp_min(torch.finfo(x.dtype).tiny), scale

    def denormalize(self, x_n: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x_n * scale


class DatasetNormalizer(ActivationNormalizer):
    """One scale for every token (SAELens-style): ``x_n = x / scale`` with a fixed ``scale``, e.g. the mean token
    norm over a dataset divided by sqrt(d). Unlike the per-token ``ActivationNormalizer``, splicing through it
    does not hand the SAE each token's norm: a token's norm must be reconstructed like any other feature."""

    def __init__(self, d: int, scale: float) -> None:
        super().__init__(d)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)

    @classmethod
    def fit(cls, x: torch.Tensor) -> "DatasetNormalizer":
        """The scale that gives the rows of ``x`` a mean norm of sqrt(d)."""
        return cls(x.shape[-1], float(x.norm(dim=-1).mean()) / math.sqrt(x.shape[-1]))

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != self.d:
            raise ValueError(f"x has {x.shape[-1]} features, the normalizer was made for d={self.d}")
        scale = torch.full((*x.shape[:-1], 1), self.scale, dtype=x.dtype, device=x.device)
        return x / scale, scale


class LMActivationSource:
    """An ActivationSource over a model's activations at one hook: harvest, normalise, mix, serve.

    The token contexts are cut into chunks of ``contexts_per_chunk`` contexts, harvested one chunk (one
    forward pass) at a time, in an order reshuffled every pass over the corpus; a ShuffleBuffer of
    ``buffer_rows`` rows mixes them. A pass serves every masked-in token of ``tokens`` exactly once.

    ``state_dict()`` is ``{"pass", "rows_served", "seed"}``. ``load_state_dict`` replays the pass from row
    counts alone (the mask says how many rows each chunk gives) to learn which rows the buffer held, then
    re-harvests just the chunks those rows came from: the resumed run sees exactly the batches an
    uninterrupted run would, at the cost of a few buffers' worth of forward passes.
    """

    def __init__(self, model: Any, tokens: TokenBatch, hook_name: str, *, buffer_rows: int = 65_536,
                 contexts_per_chunk: int = 8, normalize: bool = True, seed: int = 0,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(tokens, TokenBatch):
            raise TypeError(f"tokens must be a TokenBatch (see aen_mini.data.text), got {type(tokens).__name__}")
        model.check_hook(hook_name)
        self.model, self.tokens, self.hook_name = model, tokens, hook_name
        self.d_in: int = model.d_model
        self.normalizer = ActivationNormalizer(self.d_in) if normalize else None
        self.buffer_rows = check_positive_int("buffer_rows", buffer_rows)
        self.contexts_per_chunk = check_positive_int("contexts_per_chunk", contexts_per_chunk)
        self.seed, self.dtype = seed, dtype
        self.device = torch.device(device) if device is not None else model.device
        rows_per_context = tokens.mask.sum(dim=1)
        self._rows_per_chunk = [int(r.sum()) for r in rows_per_context.split(contexts_per_chunk)]
        if sum(self._rows_per_chunk) == 0:
            raise ValueError("the token mask selects no positions: there is nothing to harvest")
        # Global id of a chunk's first row: lets a replay track rows without their values.
        self._first_row = torch.tensor([0] + self._rows_per_chunk).cumsum(0).tolist()
        self._start_pass(0)

    @property
    def n_chunks(self) -> int:
        return len(self._rows_per_chunk)

    def _start_pass(self, index: int) -> None:
        self.pass_index, self.rows_served, self._cursor = index, 0, 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        self._order = torch.randperm(self.n_chunks, generator=g).tolist()
        self.buffer = ShuffleBuffer(self.buffer_rows, seed=self.seed * 1_000_003 + index)

    def _harvest_chunk(self, chunk: int) -> torch.Tensor:
        start = chunk * self.contexts_per_chunk
        part = self.tokens[start:start + self.contexts_per_chunk]
        x = harvest(self.model, part, self.hook_name, batch_size=self.contexts_per_chunk)
        if self.normalizer is not None:
            x = self.normalizer.normalize(x)[0]
        return x.to(device=self.device, dtype=self.dtype)

    def _row_ids(self, chunk: int) -> torch.Tensor:
        return torch.arange(self._first_row[chunk], self._first_row[chunk + 1])

    def _supplier(self, make: Any) -> Any:
        def supply() -> torch.Tensor | None:
            if self._cursor == self.n_chunks:
                return None
            chunk = self._order[self._cursor]
            self._cursor += 1
            return make(chunk)
        return supply

    def next_batch(self, batch_size: int) -> torch.Tensor:
        check_positive_int("batch_size", batch_size)
        parts, needed = [], batch_size
        supply = self._supplier(self._harvest_chunk)
        while needed:
            rows = self.buffer.draw(needed, supply)
            if rows is not None:
                parts.append(rows)
                self.rows_served += len(rows)
                needed -= len(rows)
            if needed:  # the pass ran dry: start the next one
                self._start_pass(self.pass_index + 1)
                supply = self._supplier(self._harvest_chunk)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_index, "rows_served": self.rows_served, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed={state['seed']}, this source has seed={self.seed}")
        self._start_pass(check_nonnegative_int("pass", int(state["pass"])))
        target = check_nonnegative_int("rows_served", int(state["rows_served"]))
        # 1. Replay the buffer on row ids: which rows does it hold now, and where is the chunk cursor?
        supply = self._supplier(self._row_ids)
        served = 0
        while served < target:
            ids = self.buffer.draw(target - served, supply)
            if ids is None:
                raise ValueError(f"rows_served={target} exceeds the {self._first_row[-1]} rows of a pass")
            served += len(ids)
        held = self.buffer.rows
        # 2. Re-harvest the chunks the held rows came from and put their values in the same order.
        if held is not None and len(held):
            chunk_of = torch.bucketize(held, torch.tensor(self._first_row[1:]), right=True)
            values = torch.empty(len(held), self.d_in, device=self.device, dtype=self.dtype)
            for chunk in chunk_of.unique().tolist():
                here = (chunk_of == chunk).nonzero().squeeze(1)
                rows = self._harvest_chunk(chunk)
                values[here.to(self.device)] = rows[(held[here] - self._first_row[chunk]).to(self.device)]
            held = values
        self.buffer.restore(held, self.buffer.refills, self.buffer.exhausted)
        self.rows_served = target
