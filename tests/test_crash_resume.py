"""Crash safety: a training process SIGKILLed after a checkpoint exists, then resumed with
``train(..., resume=path)``, ends bitwise equal to an uninterrupted run (weights, buffers, Adam state, data
position, history). benchmarks/reliability.py runs more kill cycles and variants."""
from __future__ import annotations

import pytest
import torch

from aen_mini.io.checkpoint import load_checkpoint, save_checkpoint
from aen_mini.data.source import TensorSource
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train
from aen_mini.run.crash_worker import compare, nothing_lost, train_with_kills


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    result = train_with_kills(tmp_path, n_kills=1, seed=0)
    (kill,) = result["kills"]
    assert kill["killed"], "the process finished before the kill: nothing was tested"
    step = kill["resumes_from_step"]
    assert 0 < step < result["steps"] and step % 10 == 0
    # what the resumed process starts from: the warm-up position and the data stream at the checkpointed step
    assert kill["warmup_position"] == step and kill["source_state"]["batches_drawn"] == step
    assert result["diff"] == {"sae_tensors_differing": [], "optimizer_tensors_differing": [],
                              "optimizer_groups_equal": True, "data_position_equal": True, "step_equal": True,
                              "history_equal": True}
    assert nothing_lost(result["diff"])


def test_compare_sees_a_lost_buffer_or_moment(tmp_path):
    """The comparison itself can fail: a checkpoint differing only in the warm-up position or one Adam moment."""
    sae = make_sae("aen", 4, 8, warmup_steps=4)
    cfg = TrainConfig(steps=3, batch_size=8, progress=False, checkpoint_every=3, checkpoint_path=str(tmp_path / "a"))
    train(sae, TensorSource(torch.randn(32, 4)), cfg)
    ckpt = load_checkpoint(tmp_path / "a")
    ckpt.sae.reweighting.step.add_(1)
    optimizer = torch.optim.Adam(ckpt.sae.parameters())
    optimizer.load_state_dict(ckpt.optimizer_state)
    optimizer.state[ckpt.sae.b_enc]["exp_avg"][0] += 1e-7
    save_checkpoint(tmp_path / "b", ckpt.sae, optimizer, ckpt.train_state)
    diff = compare(tmp_path / "a", tmp_path / "b")
    assert diff["sae_tensors_differing"] == ["reweighting.step"]
    assert len(diff["optimizer_tensors_differing"]) == 1 and not nothing_lost(diff)
