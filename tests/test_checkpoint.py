"""Checkpoints round-trip exactly, and every damaged, foreign or mismatched file is refused with an error that
names the file and what is wrong."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aen_mini.io.checkpoint import FORMAT, load_checkpoint, load_sae_state, save_checkpoint
from aen_mini.data.source import TensorSource
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small AEN trained for a few steps with Adam, so every part of the file (weights, EMA, warm-up step,
    firing counters, optimiser moments, data position, history) holds non-trivial values."""
    path = tmp_path_factory.mktemp("ckpt") / "aen.safetensors"
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    sae = make_sae("aen", 4, 8, warmup_steps=4)
    train(sae, TensorSource(x), TrainConfig(steps=6, batch_size=16, log_every=3, checkpoint_every=6,
                                            checkpoint_path=str(path), progress=False))
    return path


def test_round_trip_is_exact(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    assert ckpt.sae.config()["variant"] == "aen" and ckpt.train_state["step"] == 6
    assert ckpt.train_state["source"] == {"epoch": 1, "position": 32}  # 6 batches of 16 from 64 rows
    assert int(ckpt.sae.reweighting.step) == 6 and not torch.equal(ckpt.sae.reweighting.ema, torch.ones(8))
    assert set(ckpt.optimizer_state["state"]) == {0, 1, 2, 3}
    path2 = checkpoint.with_name("again.safetensors")
    save_checkpoint(path2, ckpt.sae, train_state=ckpt.train_state)
    again = load_checkpoint(path2)
    for name, value in ckpt.sae.state_dict().items():
        assert torch.equal(again.sae.state_dict()[name], value), name
    assert again.train_state == ckpt.train_state and again.optimizer_state is None


def _assert_refused(path: Path, *messages: str) -> str:
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert str(path) in text, text
    assert any(m in text for m in messages), text
    return text


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def test_truncation_at_every_region_is_refused(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    end = _header_end(data)
    offsets = sorted({0, 1, 7, 8, 9, end // 2, end - 1, end, end + 1, (end + len(data)) // 2, len(data) - 4, len(data) - 1})
    for offset in offsets:
        damaged = tmp_path / f"cut{offset}.safetensors"
        damaged.write_bytes(data[:offset])
        _assert_refused(damaged, "truncated or not a safetensors file")


def test_bit_flips_anywhere_are_refused(checkpoint, tmp_path):
    """One flipped bit at 300 offsets spread over the header (JSON, metadata, checksum) and the tensor bytes."""
    data = checkpoint.read_bytes()
    rng = random.Random(0)
    end = _header_end(data)
    offsets = rng.sample(range(end), 200) + rng.sample(range(end, len(data)), 100)
    reasons = {"truncated or not a safetensors file": 0, "is corrupt": 0, "not an aen-mini checkpoint": 0}
    for offset in offsets:
        flipped = bytearray(data)
        flipped[offset] ^= 1 << rng.randrange(8)
        damaged = tmp_path / "flipped.safetensors"
        damaged.write_bytes(bytes(flipped))
        text = _assert_refused(damaged, *reasons)
        reasons[next(r for r in reasons if r in text)] += 1
    assert reasons["truncated or not a safetensors file"] > 0 and reasons["is corrupt"] > 0, reasons


def test_edited_metadata_is_caught_by_the_checksum(checkpoint, tmp_path):
    """A hand edit that keeps the file valid safetensors (here: a different l1_coeff) is still refused."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata["sae_config"])
    config["l1_coeff"] *= 3
    metadata["sae_config"] = json.dumps(config)
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata=metadata)
    _assert_refused(edited, "is corrupt")


def test_foreign_and_non_checkpoint_files_are_refused(checkpoint, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, str(foreign))
    _assert_refused(foreign, "is not an aen-mini checkpoint (format None")
    old = tmp_path / "old.safetensors"
    save_file({"weight": torch.ones(3)}, str(old), metadata={"format": "aen-mini-checkpoint/1"})
    _assert_refused(old, f"expected {FORMAT!r}")
    for name, content in (("empty.safetensors", b""), ("text.safetensors", b"not a checkpoint at all\n"),
                          ("huge_header.safetensors", (2**40).to_bytes(8, "little") + b"{}")):
        (tmp_path / name).write_bytes(content)
        _assert_refused(tmp_path / name, "truncated or not a safetensors file")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    _assert_refused(tmp_path, "is not a file")


def test_checkpoint_of_another_shape_is_refused_naming_file_and_tensors(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    wider = make_sae("aen", 4, 16, warmup_steps=4)
    with pytest.raises(ValueError) as err:
        load_sae_state(wider, ckpt.sae.state_dict(), source=str(checkpoint))
    text = str(err.value)
    assert str(checkpoint) in text and "W_enc: (8, 4) vs SAE (16, 4)" in text and "d_sae=16" in text
    other_variant = make_sae("relu_l1", 4, 8)
    with pytest.raises(ValueError, match=r"unexpected \['reweighting.ema', 'reweighting.step'\]"):
        load_sae_state(other_variant, ckpt.sae.state_dict(), source=str(checkpoint))


def test_resuming_into_a_different_sae_is_refused(checkpoint):
    x = torch.randn(64, 4)
    for sae in (make_sae("aen", 4, 16, warmup_steps=4), make_sae("aen", 4, 8, warmup_steps=5), make_sae("topk", 4, 8, k=2)):
        with pytest.raises(ValueError, match=f"checkpoint {checkpoint} holds a different SAE"):
            train(sae, TensorSource(x), TrainConfig(steps=8, batch_size=16, progress=False), resume=checkpoint)


def test_weights_with_nan_are_never_written(tmp_path):
    sae = make_sae("relu_l1", 4, 8)
    with torch.no_grad():
        sae.b_enc[3] = float("inf")
    with pytest.raises(ValueError, match="b_enc holds NaN or inf"):
        save_checkpoint(tmp_path / "bad.safetensors", sae)
    assert not any(tmp_path.iterdir())  # not even a temporary file is left behind
