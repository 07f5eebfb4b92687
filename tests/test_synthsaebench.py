"""benchmarks/synthsaebench.py: our SAEs on SAELens's SynthSAEBench, scored by SAELens's own evaluation.

The runs need sae-lens, so they go through the sae-lens venv (.venv-saelens, `make saelens-venv`) in a subprocess
and skip, naming it, where it is missing. The adapter and the method settings are checked here without it."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import synthsaebench as bench  # noqa: E402
from test_saelens import _saelens_python  # noqa: E402

from aen_mini.experiments.recipes import WARMUP_FRAC, WARMUP_START_FRAC  # noqa: E402


def test_view_hands_saelens_the_decoder_as_rows_and_our_map_unchanged():
    sae = bench.build_sae("batch_topk", bench.SIZES["tiny"], 0.0, steps=10, batch_size=8, seed=0)
    view = bench.SAELensView(sae).eval()
    assert not sae.training  # eval() reaches the SAE: BatchTopK scores with its inference threshold
    assert view.W_dec.shape == (sae.d_sae, sae.d_in) and torch.equal(view.W_dec[3], sae.W_dec[:, 3])
    x = torch.randn(5, sae.d_in)
    assert torch.equal(view.encode(x), sae.encode(x)) and torch.equal(view.decode(view.encode(x)), sae(x)[0])


def test_methods_get_the_sweep_settings_and_topk_the_target_l0():
    size = bench.SIZES["tiny"]
    aen = bench.build_sae("aen", size, 0.5, steps=400, batch_size=8, seed=0)
    assert (aen.l1_coeff, aen.l2_coeff) == (0.5, 0.05)
    assert (aen.warmup_start, aen.warmup_steps) == (int(WARMUP_START_FRAC * 400), int(WARMUP_FRAC * 400))
    assert bench.build_sae("elastic_net", size, 0.5, 400, 8, 0).l2_coeff == 0.05
    assert bench.build_sae("relu_l1", size, 0.5, 400, 8, 0).l1_coeff == 0.5
    for method in ("topk", "batch_topk"):
        sae = bench.build_sae(method, size, 0.0, 400, 8, 0)
        assert sae.k == size.target_l0 and sae.dead_after_tokens == 8 * 20


@pytest.fixture(scope="module")
def saelens_python() -> Path:
    return _saelens_python()


def test_adapter_scores_exactly_as_saelens_scores_the_exported_sae(saelens_python, tmp_path):
    """The same trained SAE, scored through SAELensView and as SAELens's own SAE class (export, load_from_disk)."""
    out = tmp_path / "scores.json"
    run = subprocess.run([str(saelens_python), str(REPO / "tests" / "synthsaebench_worker.py"), str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    for method, both in json.loads(out.read_text()).items():
        ours, theirs = both["ours"], both["saelens"]
        assert 0 < ours["mcc"] < 1 and ours["sae_l0"] > 0, method  # a real test: trained, not degenerate
        for key in ("mcc", "sae_l0", "dead_latents", "uniqueness", "explained_variance", "shrinkage"):
            assert math.isclose(ours[key], theirs[key], rel_tol=1e-5, abs_tol=1e-6), (method, key)
        for key, value in theirs["classification"].items():
            assert math.isclose(ours["classification"][key], value, rel_tol=1e-5, abs_tol=1e-6), (method, key)


def test_tiny_benchmark_writes_every_method_with_calibration_and_the_published_table(saelens_python, tmp_path):
    """The whole benchmark at tiny size, loading SAELens's files without its package __init__ (the GPU path)."""
    src = subprocess.run([str(saelens_python), "-c", "import importlib.util as u; "
                          "print(u.find_spec('sae_lens').submodule_search_locations[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    cmd = [str(saelens_python), str(REPO / "benchmarks" / "synthsaebench.py"), "--size", "tiny", "--steps", "150",
           "--stream",
           "--batch-size", "64", "--lr", "3e-3", "--calib-trials", "2", "--calib-samples", "512",
           "--eval-samples", "1024", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AEN_SAELENS_SRC": src, "AEN_SAELENS_FORCE_SRC": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "synthsaebench.json").read_text())
    records = {r["method"]: r for r in report["records"]}
    assert set(records) == set(bench.METHODS)
    assert records["topk"]["l0"] == bench.SIZES["tiny"].target_l0  # TopK fixes L0 = k on every sample
    for method, r in records.items():
        assert 0 < r["mcc"] <= 1 and 0 <= r["f1"] <= 1 and 0 <= r["dead_pct"] <= 100, method
        assert r["training_samples"] == 150 * 64 and r["saelens_eval"]["mcc"] == r["mcc"]
        if r["l1_coeff"] is not None:  # calibrated: the scored run is one of the trials, with its L0 recorded
            assert r["l1_coeff"] in [t["l1_coeff"] for t in r["calibration_trials"]]
            assert isinstance(r["calibration_converged"], bool) and 1 <= len(r["calibration_trials"]) <= 2
    assert report["model_config"]["seed"] == 42 and report["environment"]["sae_lens"] != "unknown"
    text = (tmp_path / "synthsaebench.md").read_text()
    assert "| Matryoshka | SAELens, published | 25 | 0.7927 ± 0.0006 |" in text
    assert "| Standard L1 | SAELens, published | 25 | 0.6039 ± 0.0012 |" in text
    assert "Reading: our runs had" in text and "What could not be run offline" in text
    assert f"{150 * 64:,} training samples per run" in text


class _FakeModel:
    """Stands in for SAELens's SyntheticModel: samples from the global RNG, as its sampler does."""
    device, cfg = "cpu", type("cfg", (), {"hidden_dim": 3})

    def sample(self, n: int) -> torch.Tensor:
        return torch.randn(n, 3)


def test_stream_repeats_its_samples_for_every_run_without_touching_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = bench.SyntheticStream(_FakeModel(), seed=5), bench.SyntheticStream(_FakeModel(), seed=5)
    first = [a.next_batch(4) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), before)  # the trainer's RNG (init, shuffles) is left alone
    assert all(torch.equal(x, b.next_batch(4)) for x in first)  # a second run sees the same samples
    assert not torch.equal(first[0], first[1])  # ... and they are fresh samples, not one batch repeated
    resumed = bench.SyntheticStream(_FakeModel(), seed=5)
    resumed.load_state_dict(a.state_dict())  # a resumed run continues where the saved one stopped
    assert torch.equal(resumed.next_batch(4), a.next_batch(4))
    assert not torch.equal(bench.SyntheticStream(_FakeModel(), seed=6).next_batch(4), first[0])
