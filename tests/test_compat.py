"""Checkpoints and run folders written before the spine refactor (issue 14) still load and compute the same.

The fixtures in tests/fixtures/pre_spine/ were written at commit 57cff18 by tests/fixtures/pre_spine/make.py: a
trained checkpoint of every variant (with Adam and trainer state), the codes and reconstructions it gave on a probe,
and one run folder written by ``python -m aen_mini train`` (flat config.json)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aen_mini.io.checkpoint import load_checkpoint, load_sae

HERE = Path(__file__).parent / "fixtures" / "pre_spine"
EXPECTED = json.loads((HERE / "expected.json").read_text())
VARIANTS = ["relu_l1", "topk", "batch_topk", "elastic_net", "adaptive_lasso", "aen"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_old_checkpoint_loads_with_the_same_config_and_outputs(variant):
    ckpt = load_checkpoint(HERE / f"{variant}.safetensors")
    want = EXPECTED[variant]
    assert ckpt.sae.variant == variant and ckpt.sae.config() == want["config"]
    assert ckpt.train_state["step"] == 4 and ckpt.optimizer_state is not None
    sae = ckpt.sae.eval()
    with torch.no_grad():
        x_hat, h = sae(torch.tensor(EXPECTED["probe"]))
    torch.testing.assert_close(h, torch.tensor(want["h"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_hat, torch.tensor(want["x_hat"]), rtol=1e-5, atol=1e-6)


def test_old_run_folder_reads_resumes_and_exports(tmp_path):
    from aen_mini.run.cli import main

    folder = tmp_path / "run"
    shutil.copytree(HERE / "run_spiked_aen", folder)
    sae = load_sae(folder / "checkpoint.safetensors")
    assert sae.variant == "aen" and sae.d_sae == 4
    # the flat config.json of the old CLI is a valid --config: resuming the finished run is accepted
    assert main(["train", "--config", str(folder / "config.json"), "--out", str(folder), "--resume"]) == 0
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 2
    assert torch.equal(load_sae(folder / "checkpoint.safetensors").W_dec, sae.W_dec)  # nothing left to train
