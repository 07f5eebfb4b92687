"""Training from an activation cache under torchrun (gloo, 2 processes): data-parallel and latent-sharded."""
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from aen_mini.io.checkpoint import load_sae
from aen_mini.data.cache import cache_activations
from aen_mini.run.runs import RunConfig
from conftest import tiny_neox


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    model = tiny_neox(2, 32)
    tokens = torch.randint(1, 4000, (24, 16))
    cache_activations(model, tokens, "blocks.1.hook_resid_post", folder / "cache", shard_rows=128, dtype=torch.bfloat16)
    save_file({"x": torch.randn(64, 32)}, str(folder / "held_out.safetensors"))
    return folder


@pytest.mark.parametrize("parallel", ["data", "latent"])
def test_two_gloo_ranks_train_from_the_cache(cache, parallel, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = RunConfig(model="cache", hook="blocks.1.hook_resid_post", sae="topk", k=4, latents=64, tokens=1024,
                    batch_size=128, device="cpu", parallel=parallel, progress=False, out=str(tmp_path / "run"))
    (tmp_path / "run.json").write_text(json.dumps(asdict(cfg)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "aen_mini.run.cache_run", str(tmp_path / "run.json"), str(cache / "cache"),
           str(cache / "held_out.safetensors")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 8 and "2 process(es)" in metrics["data"] and f"parallel={parallel}" in metrics["data"]
    assert metrics["held_out"]["l0"] == pytest.approx(4.0)
    assert load_sae(tmp_path / "run" / "checkpoint.safetensors").d_sae == 64  # the whole SAE, also from shards
