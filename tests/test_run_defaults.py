"""First contact (issue 15): run defaults that give a sparse SAE, --target-l0 calibration, and a warning when a
trained SAE is far from sparse."""
from __future__ import annotations

import json

import pytest

from aen_mini.run.cli import main
from aen_mini.io.checkpoint import load_sae
from aen_mini.run.runs import RunConfig, run_training, warn_if_not_sparse

SPIKED = dict(model="spiked", sae="aen", latents=64, tokens=32768, batch_size=256, lr=4e-3, rho=0.5, progress=False)


def test_adaptive_reweighting_does_not_start_at_step_0_by_default():
    cfg = RunConfig(sae="aen", tokens=409_600, batch_size=4096)  # 100 steps
    chosen = cfg.sae_hyperparameters()
    assert chosen["warmup_start"] == 25 and chosen["warmup_steps"] == 25 and chosen["ema_beta"] == 0.99
    assert chosen["l1_coeff"] >= 0.1 and chosen["l2_coeff"] == pytest.approx(0.1 * chosen["l1_coeff"])
    assert RunConfig(sae="aen", l1=0.5, warmup_start=0).sae_hyperparameters()["warmup_start"] == 0  # given wins
    assert RunConfig(sae="topk", latents=64).sae_hyperparameters() == {"k": 16}
    assert RunConfig(sae="relu_l1").sae_hyperparameters() == {"l1_coeff": 1.0}


def test_far_from_sparse_is_warned_about():
    with pytest.warns(UserWarning, match="far from sparse: held-out L0 300 of 1024 latents"):
        assert warn_if_not_sparse(300.0, 1024) is not None
    assert warn_if_not_sparse(200.0, 1024) is None
    with pytest.warns(UserWarning, match=r"\(target 32\)"):
        warn_if_not_sparse(130.0, 1024, target_l0=32)


def test_the_cli_warns_in_one_line_when_the_penalty_is_too_weak(tmp_path, capsys):
    argv = ["train", "--model", "spiked", "--sae", "relu_l1", "--latents", "32", "--tokens", "2048", "--batch-size",
            "256", "--l1", "1e-4", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the trained SAE is far from sparse")


def test_target_l0_calibrates_l1_and_the_run_reproduces_the_chosen_trial(tmp_path):
    cfg = RunConfig(**SPIKED, target_l0=8, calibration_trials=4, out=str(tmp_path / "run"))
    out = run_training(cfg)
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    calibration = config["calibration"]
    assert calibration["target_l0"] == 8 and 1 <= len(calibration["trials"]) <= 4
    assert config["sae"]["hyperparameters"]["l1_coeff"] == calibration["l1_coeff"] == load_sae(out / "checkpoint.safetensors").l1_coeff
    # every trial trained on the batches the final run trains on, so the final run lands where its trial did
    assert metrics["held_out"]["l0"] == pytest.approx(calibration["l0"], rel=1e-4)
    best = min(calibration["trials"], key=lambda t: abs(t["l0"] / 8 - 1))
    assert best["l1_coeff"] == calibration["l1_coeff"]


def test_target_l0_and_l1_together_are_refused():
    with pytest.raises(ValueError, match="either l1 or target_l0"):
        RunConfig(sae="aen", l1=0.1, target_l0=8)
    with pytest.raises(ValueError, match="topk SAE has no l1"):
        RunConfig(sae="topk", target_l0=8)
