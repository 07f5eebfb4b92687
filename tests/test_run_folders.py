"""Run folders and resume (issue 15): every way found of training on the wrong data, into the wrong folder, or
leaving a folder that disagrees with itself, is refused with a message, and nothing is written before the checks."""
from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest
import torch

from aen_mini.io.checkpoint import load_checkpoint, save_checkpoint
from aen_mini.data.source import TensorSource
from aen_mini.train.fast import FastStep
from aen_mini.eval.metrics import evaluate, evaluate_in_batches
from aen_mini.run.runfolder import RunFolderError, RunFolderLock
from aen_mini.run.runs import RunConfig, run_training, sae_metrics
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train

SPIKED = dict(model="spiked", sae="aen", latents=32, tokens=2048, batch_size=256, rho=0.5, l1=1.0, progress=False)
# the offline tiny GPT-NeoX at the smallest size that still trains: seconds per run
LM = dict(model="tiny-neox", hook="blocks.3.hook_resid_post", sae="relu_l1", latents=32, tokens=1024, batch_size=128,
          ctx_len=16, max_contexts=24, eval_contexts=2, buffer_rows=256, contexts_per_chunk=4, l1=3.0, progress=False)


def spiked_run(tmp_path, name="run", **changes) -> RunConfig:
    return RunConfig(**{**SPIKED, "out": str(tmp_path / name), **changes})


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    cfg = RunConfig(**LM, out=str(tmp_path_factory.mktemp("lm") / "run"))
    run_training(cfg)
    return cfg


def test_the_checkpoint_records_the_data_settings(lm_run):
    data = load_checkpoint(f"{lm_run.out}/checkpoint.safetensors").train_state["data"]
    assert data["model"] == "tiny-neox" and data["hook"] == LM["hook"] and data["ctx_len"] == 16
    assert data["normalize"] is True and len(data["corpus_sha256"]) == 64


@pytest.mark.parametrize("change, named", [
    ({"hook": "blocks.2.hook_resid_post"}, "hook='blocks.3.hook_resid_post' there, 'blocks.2.hook_resid_post' here"),
    ({"ctx_len": 24}, "ctx_len=16 there, 24 here"),
    ({"normalize": False}, "normalize=True there, False here"),
    ({"max_contexts": 20}, "corpus_sha256="),  # another slice of the corpus: other token contexts
])
def test_resume_on_other_activations_is_refused_naming_the_setting(lm_run, change, named):
    """Item 1; item 3: the refused resume leaves config.json as it was."""
    config = f"{lm_run.out}/config.json"
    before = open(config).read()
    with pytest.raises(ValueError, match="trained on other data") as err:
        run_training(replace(lm_run, **change), resume=True)
    assert named in str(err.value)
    assert open(config).read() == before


def test_a_refused_resume_writes_nothing(tmp_path):
    """Item 3: config.json is written after every check (here a changed learning rate), and atomically."""
    cfg = spiked_run(tmp_path, checkpoint_every=4)
    run_training(cfg)
    files = lambda: {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.name != ".lock"}  # noqa: E731
    before = files()
    with pytest.raises(ValueError, match="lr=0.001"):
        run_training(replace(cfg, lr=0.002), resume=True)
    assert files() == before


def test_a_tensor_source_refuses_a_position_past_its_rows():
    """Item 2: today's code accepts it and then loops forever in next_batch with growing memory."""
    source = TensorSource(torch.randn(100, 4))
    with pytest.raises(ValueError, match="position=500"):
        source.load_state_dict({"epoch": 0, "position": 500})
    source.load_state_dict({"epoch": 2, "position": 100})  # the end of an epoch is a valid position
    assert source.next_batch(7).shape == (7, 4)


def test_a_folder_holding_a_run_is_not_replaced_without_overwrite(tmp_path):
    """Item 4."""
    cfg = spiked_run(tmp_path)
    run_training(cfg)
    checkpoint = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a run .*--resume .*--overwrite"):
        run_training(replace(cfg, seed=1))
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == checkpoint
    run_training(replace(cfg, seed=1), overwrite=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["seed"] == 1
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() != checkpoint


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    """Item 5: flock is per open file, so a second open in this process conflicts like another process would."""
    with RunFolderLock(tmp_path / "run"):
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()} on host "
                                                 rf"{socket.gethostname()}, started 20"):
            run_training(spiked_run(tmp_path))
    run_training(spiked_run(tmp_path))  # released: the folder takes a run again
    assert (tmp_path / "run" / "metrics.json").exists()


def test_a_refused_run_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ValueError):
        run_training(spiked_run(tmp_path, sae="topk", l1=None, k=40))  # k > latents: refused by the SAE
    assert not (tmp_path / "run").exists()


def test_fast_step_on_a_nan_batch_leaves_the_running_state_alone():
    """Item 6: the weights were already kept (fused Adam's found_inf); now the EMA, step and firing counters too."""
    sae = make_sae("aen", 8, 16, warmup_steps=4, ema_beta=0.5)
    step = FastStep(sae, torch.optim.Adam(sae.parameters(), lr=1e-2), dtype=torch.float32)
    step(torch.randn(32, 8), 1e-2)
    before = {name: b.clone() for name, b in sae.named_buffers()}
    x = torch.randn(32, 8)
    x[5, 1] = float("nan")
    assert not torch.isfinite(step(x, 1e-2).terms["loss"])
    for name, buffer in sae.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_a_checkpoint_without_trainer_state_is_refused_with_a_message(tmp_path):
    """Item 7: today a KeyError 'step'."""
    sae = make_sae("relu_l1", 4, 8)
    path = save_checkpoint(tmp_path / "weights.safetensors", sae)
    with pytest.raises(ValueError, match="holds no trainer state"):
        train(sae, TensorSource(torch.randn(64, 4)), TrainConfig(steps=4, batch_size=16, progress=False), resume=path)


def test_stale_temporaries_of_the_run_are_swept_on_start(tmp_path):
    """Item 8: a killed run's full-size temporary checkpoint is removed; other files are not touched."""
    cfg = spiked_run(tmp_path, checkpoint_every=4)
    run_training(cfg)
    stale = tmp_path / "run" / ".checkpoint.safetensors.tmp-999999"
    stale.write_bytes(b"\0" * 4096)
    mine = tmp_path / "run" / ".notes.txt.tmp-1"
    mine.write_text("not ours")
    run_training(cfg, resume=True)
    assert not stale.exists() and mine.exists()


def test_held_out_evaluation_runs_in_batches_and_matches_the_whole_set():
    """Item 9: sae_metrics never encodes more than batch_size rows at once, and gives evaluate's numbers."""
    sae = make_sae("relu_l1", 16, 64, seed=3).eval()
    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    seen = []
    sae.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    batched = sae_metrics(sae, x, batch_size=128)
    assert max(seen) == 128 and sum(seen) == 1000
    whole = evaluate(sae, x)
    assert batched.keys() == whole.keys()
    for key in whole:
        assert batched[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12), key
    assert evaluate_in_batches(sae, x, batch_size=1000) == pytest.approx(whole, rel=1e-12)


def test_a_results_config_json_resumes_its_run_from_the_command_line(tmp_path):
    """The book's resume command (`train --config runs/x/config.json --resume`): config.json's own records (data,
    sae_config, data_settings) are dropped when it is read back as settings."""
    from aen_mini.run.cli import main

    out = run_training(spiked_run(tmp_path, checkpoint_every=4))
    assert main(["train", "--config", str(out / "config.json"), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8
