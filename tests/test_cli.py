"""The command line: a run on spiked data end to end, the config-file form, and its errors."""
import json
import re

import pytest
import torch

from aen_mini.run.cli import main
from aen_mini.io.checkpoint import load_sae
from aen_mini.run.runs import RunConfig


def test_train_on_spiked_data_writes_a_results_folder(tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--model", "spiked", "--rho", "0.5", "--sae", "aen", "--latents", "64", "--tokens", "4096",
                 "--batch-size", "256", "--l1", "0.1", "--l2", "0.01", "--out", str(out), "--no-progress"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["sae"]["variant"] == "aen" and config["tokens"] == 4096 and config["sae_config"]["l1_coeff"] == 0.1
    assert metrics["steps"] == 16 and metrics["history"][-1]["step"] == 16
    assert 0.0 <= metrics["held_out"]["dead_pct"] <= 100.0 and metrics["held_out"]["ev"] > 0.0
    sae = load_sae(out / "checkpoint.safetensors")
    assert sae.d_sae == 64 and torch.allclose(sae.W_dec.norm(dim=0), torch.ones(64), atol=1e-5)


def test_config_file_and_flag_override(tmp_path):
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"model": "spiked", "sae": "topk", "k": 4, "latents": 32, "tokens": "2k",
                                    "batch_size": 500, "out": str(tmp_path / "a"), "progress": False}))
    assert main(["train", "--config", str(cfg_file), "--k", "8", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["sae_config"]["k"] == 8
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv,message", [
    (["--sae", "gated"], "unknown SAE variant 'gated'"),
    (["--sae", "aen", "--k", "4"], r"aen SAE has no hyperparameter\(s\) \['k'\]"),
    (["--tokens", "12q"], "cannot read '12q' as a count"),
    (["--tokens", "100"], "less than one batch"),
])
def test_bad_settings_are_named(tmp_path, capsys, argv, message):
    code = main(["train", "--model", "spiked", "--latents", "32", "--batch-size", "256", "--out", str(tmp_path),
                 "--no-progress", *argv])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_unknown_setting_in_a_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown run setting\(s\) \['lambda1'\]"):
        RunConfig.from_dict({"lambda1": 0.1})


def test_plan_prints_the_paper_pythia_plan(capsys):
    assert main(["plan", "--d-in", "512", "--latents", "4096", "--tokens", "204.8M"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 25_000


def test_train_runs_unchanged_under_torchrun(tmp_path):
    """Two data-parallel ranks (gloo): one results folder, written once, whose checkpoint loads in one process."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "aen_mini", "train", "--model", "spiked", "--sae", "aen", "--latents", "32",
           "--tokens", "4096", "--batch-size", "512", "--device", "cpu", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["history"][-1]["tokens"] == 4096
    assert load_sae(out / "checkpoint.safetensors").d_sae == 32
