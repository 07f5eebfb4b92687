"""benchmarks/llm.py (a thin script over aen_mini/experiments/llm_*.py) at smoke size on the CPU: one shared
harvest, calibrated and TopK runs at two sizes, every record field, a continued call; the study's pieces."""
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
def test_benchmark_calibrates_each_size_in_priority_order_and_writes_every_record_field(tmp_path, tokens_file):
    """benchmarks/llm.py at smoke size: one harvest, the held-out window, probes for ReLU+L1 and AEN, both sizes in
    priority order, every record field; then a second call continues from the first without repeating a run."""
    smoke = ["--tokens-per-sae", "2048", "--batch-size", "64", "--latents", "64", "--latents32", "128", "--targets",
             "8", "--methods", "relu_l1", "aen", "topk", "--heldout-tokens", "200", "--ctx-len", "32",
             "--splice-contexts", "2", "--splice-batch", "2", "--feature-contexts", "2", "--harvest-batch", "8",
             "--harvest-dtype", "fp32", "--l1-from", ""]
    result = run_script("llm.py", tokens_file, *smoke, "--seeds", "0")
    meta, rows = result["metadata"], result["rows"]
    # the first seed at 64 latents, then 128 latents: ReLU+L1 and AEN before TopK
    assert [(r["method"], r["d_sae"]) for r in rows] == [("relu_l1", 64), ("aen", 64), ("topk", 64), ("relu_l1", 128),
                                                        ("aen", 128), ("topk", 128)]
    # the last ceil(200 / 31) = 7 contexts of 31 text tokens, the very last one partly padded
    assert 6 * 31 < meta["heldout_tokens"] <= 7 * 31 and meta["steps"] == 32
    for r in rows:
        assert all(f in r for f in FIELDS), sorted(set(FIELDS) - set(r))
        assert r["tokens_trained"] == 2048 and r["passes"] == pytest.approx(2048 / r["distinct_tokens"])
        assert r["dead_window_tokens"] == meta["heldout_tokens"]
        assert r["dead_by_window"]["windows"][-1] == r["dead_corpus_window_tokens"]
    relu = rows[0]
    # probes of 32 / 8 = 4 steps (secant), then one of 8 steps for the drift; the full run's l1 is not a probe's
    assert [t["steps"] for t in relu["calibration_trials"]][-1] == 8
    assert {t["steps"] for t in relu["calibration_trials"][:-1]} == {4} and relu["predicted_drift"] is not None
    assert rows[2]["l0"] == pytest.approx(8.0) and rows[2]["calibration_converged"] and rows[2]["l1"] is None
    md = (tmp_path / "out" / "llm.md").read_text()
    assert md.count("| ReLU + L1 | 64 | 8 | 0 |") == 2 and "## 128 latents" in md  # results and calibration tables

    again = run_script("llm.py", tokens_file, *smoke, "--seeds", "0", "1", "--latents32", "0", "--continue-from",
                       str(tmp_path / "out" / "llm.json"))
    new = again["rows"][len(rows):]
    assert again["rows"][:len(rows)] == rows and [(r["method"], r["seed"]) for r in new] == [
        ("relu_l1", 1), ("aen", 1), ("topk", 1)]
    assert new[0]["calibration_trials"] == [] and "first seed" in new[0]["calibration_how"]
    assert again["metadata"]["n_sae"] == 3 and again["metadata"]["earlier_calls"][0]["n_sae"] == 6
    # the second call ran no larger dictionary, but the study it continues still has one; nothing is left to run
    assert again["metadata"]["latents32"] == 128 and again["metadata"]["not_run"] == [] == meta["not_run"]


def test_a_continuing_call_narrows_its_own_plan_not_the_study():
    from aen_mini.experiments.llm_calibrated import study_design

    earlier = {"methods": ["relu_l1", "topk", "aen"], "seeds": [0], "targets": [32, 128], "latents32": 18432}
    call = {"methods": ["aen"], "seeds": [0, 1], "targets": [32], "latents32": 0}
    assert study_design(earlier, call) == {"methods": ["relu_l1", "topk", "aen"], "seeds": [0, 1],
                                           "targets": [32, 128], "latents32": 18432}


def test_heldout_window_takes_the_asked_tokens_and_leaves_one_context_to_train_on():
    from aen_mini.experiments.llm_study import heldout_split

    assert heldout_split(n_contexts=1000, body=127, heldout_tokens=10_000) == 79  # ceil(10000 / 127)
    assert heldout_split(n_contexts=100, body=127, heldout_tokens=10_000_000) == 99
    assert heldout_split(n_contexts=2, body=127, heldout_tokens=10) == 1


def test_device_batches_draw_seeded_rows_of_the_harvest_and_refuse_to_resume():
    from aen_mini.experiments.llm_study import DeviceBatches

    x = torch.arange(40, dtype=torch.bfloat16).reshape(20, 2)
    a, b = DeviceBatches(x, seed=3).next_batch(64), DeviceBatches(x, seed=3).next_batch(64)
    assert a.shape == (64, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert set(a[:, 0].tolist()) <= set(x[:, 0].float().tolist()) and len(set(a[:, 0].tolist())) > 10
    with pytest.raises(ValueError, match="cannot be resumed"):
        DeviceBatches(x, seed=3).load_state_dict({"seed": 3})


def test_plan_puts_the_first_seed_then_the_large_dictionary_then_more_seeds():
    from argparse import Namespace

    from aen_mini.experiments.llm_calibrated import plan

    args = Namespace(seeds=[0, 1], targets=[32, 128], methods=["relu_l1", "topk", "topk_noaux", "aen"], latents=8,
                     latents32=32)
    keys = [j.key for j in plan(args)]
    assert keys[:6] == ["relu_l1:32:0:8", "topk:32:0:8", "aen:32:0:8", "relu_l1:128:0:8", "topk:128:0:8", "aen:128:0:8"]
    # then the large dictionary's ReLU+L1 and AEN, TopK without AuxK, TopK at the large dictionary
    assert keys[6:12] == ["relu_l1:32:0:32", "aen:32:0:32", "topk_noaux:32:0:8", "topk_noaux:128:0:8",
                          "topk:32:0:32", "topk_noaux:32:0:32"]
    assert keys[12:20] == [f"{m}:{t}:1:8" for t in (32, 128) for m in args.methods]
    assert keys[20:] == [f"{m}:128:0:32" for m in args.methods]
    assert "topk:32:0:8" not in [j.key for j in plan(args, {"topk:32:0:8"})]
    # the l1 warm-up control comes last, the larger dictionary first
    args.methods.append("relu_l1_warmup")
    assert [j.key for j in plan(args)][:24] == keys
    assert [j.key for j in plan(args)][24:] == [f"relu_l1_warmup:{t}:0:{w}" for w in (32, 8) for t in (32, 128)]


def test_explicit_jobs_replace_the_plan_in_their_order_and_bad_keys_fail_in_one_line():
    from argparse import Namespace

    from aen_mini.experiments.llm_calibrated import Job, plan

    args = Namespace(seeds=[0], targets=[32], methods=["relu_l1", "aen"], latents=8, latents32=0,
                     jobs=["aen:32:1:32", "relu_l1:128:1:8", "aen:32:0:8"])
    assert [j.key for j in plan(args, {"aen:32:0:8"})] == ["aen:32:1:32", "relu_l1:128:1:8"]
    assert Job.parse("topk_noaux:128:1:4608") == Job("topk_noaux", 128, 1, 4608)
    for bad in ("aen:32:1", "lasso:32:0:8", "aen:32:x:8"):
        with pytest.raises(ValueError, match="--jobs: .* is not METHOD:TARGET:SEED:LATENTS"):
            Job.parse(bad)


def test_secant_step_follows_the_measured_slope_and_falls_back_on_an_implausible_one():
    from aen_mini.eval.probes import secant_l1

    one = [{"l1": 1.0, "l0": 64.0}]
    l1, slope = secant_l1(one, 32.0, -1.0)  # L0 halves when l1 doubles
    assert l1 == pytest.approx(2.0) and slope == -1.0
    two = one + [{"l1": 2.0, "l0": 16.0}]  # measured slope -2: from L0 16 to 32 takes l1 / sqrt(2)
    l1, slope = secant_l1(two, 32.0, -1.0)
    assert slope == pytest.approx(-2.0) and l1 == pytest.approx(2.0 / 2 ** 0.5)
    flat = one + [{"l1": 2.0, "l0": 64.0}]  # no change: keep the given slope, the step bounded
    assert secant_l1(flat, 32.0, -1.0) == (pytest.approx(4.0), -1.0)


@pytest.mark.slow
def test_speed_only_times_the_harvest_settings_on_random_tokens(tmp_path, tokens_file):
    """--speed-only needs the model, not the corpus; off CUDA it times the eager settings and says why not the other."""
    folder = tmp_path / "speed"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llm.py"), "--speed-only", "--device", "cpu",
                           "--out", str(folder), "--ctx-len", "16", "--harvest-batch", "2"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    harvest = json.loads((folder / "llm_speed.json").read_text())["harvest"]
    assert harvest["tokens_timed"] == 8 * 16 and harvest["eager_fp32_tf32"] > 0 and harvest["eager_bf16"] > 0
    assert harvest["compiled_bf16"] is None and "CUDA" in harvest["compile_error"]


def test_committed_report_is_what_the_writer_makes_of_the_committed_results(tmp_path):
    """benchmarks/llm.md is write_markdown of benchmarks/llm.json (+ llm_speed.json beside it), byte for byte."""
    import shutil

    from aen_mini.experiments.llm_report import write_markdown

    for name in ("llm.json", "llm_speed.json"):
        shutil.copy(ROOT / "benchmarks" / name, tmp_path / name)
    assert write_markdown(tmp_path / "llm.json").read_text() == (ROOT / "benchmarks" / "llm.md").read_text()
    md = (ROOT / "benchmarks" / "llm.md").read_text()
    assert "| AEN | 18432 | 32 | 0 |" in md and "**no**" in md  # the missed AEN runs are flagged
    assert "- aen:32:2:18432 (planned" in md.split("## Not run")[1]  # the last call's cut, never run, is listed
    assert "own norm" in md  # the header says which splice the numbers come from


def test_not_run_lists_the_cuts_no_later_call_made():
    from aen_mini.experiments.llm_report import _not_run

    rows = [{"method": "aen", "target_l0": 32, "seed": 0, "d_sae": 64}]
    meta = {"not_run": ["topk:32:0:64"], "cut": ["relu_l1:32:1:64 (planned 9 s; 2 s left)"],
            "earlier_calls": [{"cut": ["aen:32:0:64 (planned 9 s; 1 s left)"]}]}
    lines = _not_run(meta, rows)
    assert "- topk:32:0:64" in lines and any(line.startswith("- relu_l1:32:1:64 (planned") for line in lines)
    assert not any("aen:32:0:64" in line for line in lines)  # cut by an earlier call, made by a later one
    assert _not_run({"not_run": [], "cut": []}, rows)[-1] == "- nothing"
