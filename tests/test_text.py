"""Corpora and token contexts: layouts checked token by token against a hand-built stream."""
import pytest
import torch

from aen_mini.data.text import ContextFormat, as_token_batch, load_corpus, read_text_corpus, stdlib_docstrings, tokenize_corpus


class CharTokenizer:
    """One token per character (its code point): streams are easy to write down by hand."""

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        assert not add_special_tokens  # contexts add their own special tokens
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


A, B, C, D, E = map(ord, "abcde")


def test_causal_contexts_have_bos_separators_and_padding():
    fmt = ContextFormat(prefix_id=1, suffix_id=None, separator_id=2, pad_id=0)
    batch = tokenize_corpus(["abc", "de"], CharTokenizer(), fmt, ctx_len=4)
    # stream: a b c SEP d e SEP, cut into bodies of 3 behind a BOS
    assert batch.tokens.tolist() == [[1, A, B, C], [1, 2, D, E], [1, 2, 0, 0]]
    assert batch.mask.tolist() == [[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]


def test_encoder_contexts_end_with_sep_and_mask_both_specials():
    fmt = ContextFormat(prefix_id=101, suffix_id=102, separator_id=102, pad_id=0)
    batch = tokenize_corpus(["abc", "de"], CharTokenizer(), fmt, ctx_len=5)
    # stream: a b c SEP d e SEP, cut into bodies of 3 between [CLS] and [SEP]
    assert batch.tokens.tolist() == [[101, A, B, C, 102], [101, 102, D, E, 102], [101, 102, 102, 0, 0]]
    assert batch.mask.tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 1, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 5, [1] * 5, [1, 1, 1, 0, 0]]


def test_max_contexts_stops_early_and_slicing_keeps_masks():
    fmt = ContextFormat(prefix_id=None, suffix_id=None, separator_id=None, pad_id=0)
    batch = tokenize_corpus(["abcde" * 10], CharTokenizer(), fmt, ctx_len=5, max_contexts=3)
    assert len(batch) == 3 and bool(batch.mask.all())
    assert batch[1:].tokens.tolist() == [[A, B, C, D, E]] * 2


def test_empty_corpus_is_an_error(tmp_path):
    fmt = ContextFormat(1, None, 2, 0)
    with pytest.raises(ValueError, match="empty"):
        tokenize_corpus(["", "   "], CharTokenizer(), fmt, ctx_len=4)
    with pytest.raises(ValueError, match="empty"):
        load_corpus(["", "\n"])
    with pytest.raises(ValueError, match="no non-empty text files"):
        read_text_corpus(tmp_path)
    with pytest.raises(ValueError, match="room"):
        tokenize_corpus(["abc"], CharTokenizer(), ContextFormat(101, 102, 102, 0), ctx_len=2)


def test_text_folder_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.bin").write_text("not text")
    assert load_corpus(tmp_path) == ["first", "second", "third"]
    assert load_corpus(tmp_path / "b.txt") == ["second"]


def test_stdlib_corpus_is_deterministic_and_bounded():
    first = stdlib_docstrings.__wrapped__(30_000)  # bypass the cache: walk the library twice
    again = stdlib_docstrings.__wrapped__(30_000)
    assert first == again
    total = sum(map(len, first))
    assert total >= 30_000 and total - len(first[-1]) < 30_000  # stops at the first docstring past the bound


def test_hand_made_tensor_uses_every_position():
    batch = as_token_batch(torch.zeros(2, 3, dtype=torch.long))
    assert bool(batch.mask.all()) and bool(batch.attention_mask.all())
    with pytest.raises(TypeError):
        as_token_batch([[0, 1]])


def test_stream_contexts_cuts_a_pretokenised_stream_like_tokenize_corpus():
    from aen_mini.data.text import ContextFormat, stream_contexts

    fmt = ContextFormat(prefix_id=0, suffix_id=None, separator_id=0, pad_id=0)
    batch = stream_contexts(range(1, 8), fmt, ctx_len=4)  # 7 tokens, 3 text tokens per context
    assert batch.tokens.tolist() == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 0, 0]]
    assert batch.mask.tolist() == [[False, True, True, True], [False, True, True, True], [False, True, False, False]]
    assert batch.attention_mask[2].tolist() == [True, True, False, False]
    assert len(stream_contexts(range(1, 100), fmt, ctx_len=4, max_contexts=2)) == 2
