"""benchmarks/llm.py and llm_grid.py (thin scripts over aen_mini/experiments/llm_*.py) at smoke size on the CPU: one
shared harvest, calibrated, TopK and grid runs, every record field."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("model", "hook", "method", "target_l0", "l0", "calibration_converged", "dead_pct", "dead_window_tokens", "ev",
          "ce_clean", "ce_spliced", "delta_ce", "kl", "ce_recovered_zero", "ce_recovered_mean", "tokens_trained",
          "distinct_tokens", "passes", "seed", "dead_by_window", "density_histogram")


@pytest.fixture
def tokens_file(tmp_path):
    """600 SmolLM2 tokens of English in tmp_path/tokens.safetensors (skips without the offline SmolLM2)."""
    from safetensors.torch import save_file

    from aen_mini.lm import smollm2

    try:
        tokenizer = smollm2.load_tokenizer()
    except RuntimeError as err:
        pytest.skip(f"SmolLM2 offline is not installed: {err}")
    text = "In the beginning God created the heaven and the earth. " * 40
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:600]
    path = tmp_path / "tokens.safetensors"
    save_file({"tokens": torch.tensor(ids, dtype=torch.int32).to(torch.uint16)}, str(path))
    return path


def run_script(script, tokens_file, *flags):
    """Run benchmarks/SCRIPT at smoke size on the CPU (out: tokens_file's folder / out); returns the result JSON."""
    folder = tokens_file.parent
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--tokens-file", str(tokens_file), "--device", "cpu",
           "--out", str(folder / "out"), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=folder,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((folder / "out" / "llm.json").read_text())


@pytest.mark.slow
def test_benchmark_writes_every_record_field(tmp_path, tokens_file):
    result = run_script("llm.py", tokens_file, "--tokens-per-sae", "512", "--batch-size", "128", "--latents", "64",
                        "--targets", "8", "--methods", "relu_l1", "topk", "--seeds", "0", "--trials", "2", "--ctx-len",
                        "32", "--splice-contexts", "2", "--splice-batch", "2", "--feature-contexts", "2",
                        "--harvest-batch", "8")
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["relu_l1", "topk"]
    for r in rows:
        assert all(f in r for f in FIELDS), [f for f in FIELDS if f not in r]
        assert r["distinct_tokens"] == result["metadata"]["harvest_tokens"] and r["tokens_trained"] == 512
        assert r["dead_by_window"]["windows"][-1] == r["dead_corpus_window_tokens"]
    assert rows[1]["l0"] == pytest.approx(8.0) and rows[1]["calibration_converged"]
    assert (tmp_path / "out" / "llm.md").read_text().count("| ReLU + L1 |") == 1


@pytest.mark.slow
def test_grid_benchmark_trains_families_at_once_and_records_passes_and_the_window(tmp_path, tokens_file):
    """benchmarks/llm_grid.py: one harvest, ReLU-family and TopK grids, the planned budget, every record field."""
    result = run_script("llm_grid.py", tokens_file, "--tokens-per-sae", "1024", "--batch-size", "128", "--latents", "64",
                        "--targets", "32", "--methods", "relu_l1", "aen", "topk", "--seeds", "0", "--heldout-tokens",
                        "200", "--ctx-len", "32", "--splice-contexts", "2", "--splice-batch", "2", "--feature-contexts",
                        "2", "--harvest-batch", "8", "--budget-s", "3000")
    meta, rows = result["metadata"], result["rows"]
    assert [r["method"] for r in rows] == ["relu_l1", "aen", "topk"]
    # the last ceil(200 / 31) = 7 contexts of 31 text tokens, the very last one partly padded
    assert meta["plan"]["steps"] == 8 and 6 * 31 < meta["heldout_tokens"] <= 7 * 31
    for r in rows:
        assert all(f in r for f in FIELDS), sorted(set(FIELDS) - set(r))
        assert r["tokens_trained"] == 1024 and r["passes"] == pytest.approx(1024 / r["distinct_tokens"])
        assert r["dead_window_tokens"] == meta["heldout_tokens"]
    assert (tmp_path / "out" / "llm.md").read_text().count("| ReLU + L1 | 32 | 0 |") == 1
