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
import synthsaebench_lanes as lanes  # noqa: E402
from test_saelens import _saelens_python  # noqa: E402

from aen_mini.experiments import recipes  # noqa: E402
from aen_mini.experiments.recipes import WARMUP_FRAC, WARMUP_START_FRAC  # noqa: E402

DEFAULT_METHODS = bench.build_parser().get_default("methods")  # what a run trains unless told otherwise


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
    # the warm-up controls: the same SAE as the plain penalty; the trainer ramps the penalty in over half the run
    assert bench.build_sae("elastic_net_warmup", size, 0.5, 400, 8, 0).l2_coeff == 0.05
    assert type(bench.build_sae("relu_l1_warmup", size, 0.5, 400, 8, 0)) is type(bench.build_sae("relu_l1", size, 0.5, 400, 8, 0))
    assert [recipes.l1_warmup_steps(bench.METHODS[m], 400) for m in ("relu_l1_warmup", "elastic_net_warmup", "relu_l1", "aen")] \
        == [200, 200, 0, 0]


def test_a_warm_up_lane_ramps_its_penalty_in_linearly_and_ends_at_full_strength():
    import argparse
    args = argparse.Namespace(batch_size=8, lr=1e-3, seed=0, device="cpu")
    size = bench.SIZES["tiny"]
    lane = lanes.make_lane("relu_l1_warmup", size, 0.5, steps=6, args=args)
    plain = lanes.make_lane("relu_l1", size, 0.5, steps=6, args=args)
    assert lane.cfg.l1_warmup_steps == 3 and plain.cfg.l1_warmup_steps == 0
    g = torch.Generator().manual_seed(0)
    scales = []
    for _ in range(6):
        x = torch.randn(8, size.hidden_dim, generator=g)
        lane.step(x)
        plain.step(x)
        scales.append((float(lane.sae.penalty_scale), float(plain.sae.penalty_scale)))
    # (step + 1) / 3 during the warm-up, 1 after it; the plain lane is at 1 throughout
    assert [a for a, _ in scales] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0])
    assert all(b == 1.0 for _, b in scales)


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
    assert set(records) == set(DEFAULT_METHODS)
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


def _shared(saelens_python: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """benchmarks/synthsaebench_shared.py at tiny size in the sae-lens venv."""
    cmd = [str(saelens_python), str(REPO / "benchmarks" / "synthsaebench_shared.py"), "--size", "tiny", "--steps", "160",
           "--batch-size", "64", "--lr", "3e-3", "--calib-samples", "512", "--eval-samples", "1024", "--out", str(out),
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_shared_stream_trains_every_lane_once_per_batch_with_probes_and_prints_its_cost_first(saelens_python, tmp_path):
    run = _shared(saelens_python, tmp_path, "--chunk", "256")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.index("cost estimate on this device") < run.stdout.index("probe ")  # printed before training
    report = json.loads((tmp_path / "synthsaebench.json").read_text())
    records = {r["method"]: r for r in report["records"]}
    assert set(records) == set(DEFAULT_METHODS) and "stopped" not in report
    batches = report["timing"]["stream_batches"]
    for method, r in records.items():
        assert r["steps"] == 160 and r["stopped_at_step"] is None and 0 < r["mcc"] <= 1, method
        assert r["history"][-1]["step"] == 160
        if r["l1_coeff"] is None:
            assert r["started_at_batch"] == 0
            continue
        probes = r["calibration_trials"]  # short probes of 160 // 8 steps, the last one (drift) twice as long
        assert [t["steps"] for t in probes[:-1]] == [20] * (len(probes) - 1) and probes[-1]["steps"] == 40
        assert 2 <= len(probes) <= 4 and r["predicted_drift"] is not None
        # the full run starts on the batch after its last probe ends: the probes ran on the same stream, in sequence
        assert r["started_at_batch"] == sum(t["steps"] for t in probes)
        assert r["calibration_converged"] == (abs(r["calibration_l0"] / 5 - 1) <= 0.1)
    # one stream for all: as long as the longest chain of probes plus a full run, not the sum of the runs
    assert batches == max(r["started_at_batch"] for r in records.values()) + 160
    estimate = report["timing"]["cost_estimate"]["worst"]
    assert estimate["stream_batches"] == 160 + 5 * 20 >= batches
    assert "probes side by side" in (tmp_path / "synthsaebench.md").read_text()
    assert "## Cost of the published budget" in (tmp_path / "synthsaebench.md").read_text()  # this run's costs
    again = _shared(saelens_python, tmp_path, "--chunk", "256")
    assert again.returncode != 0 and "pass --overwrite" in again.stderr  # results are not silently replaced
    # the same run in two calls (a device call lasts at most 10 min): stopped at batch 50, saved, continued
    split, state = tmp_path / "split", tmp_path / "split" / "state.pt"
    first = _shared(saelens_python, split, "--chunk", "256", "--stop-at-batch", "50", "--state", str(state))
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (split / "synthsaebench.json").exists()  # nothing scored yet
    assert json.loads((split / "synthsaebench_progress.json").read_text())["stream_batches"] == 50
    second = _shared(saelens_python, split, "--chunk", "256", "--state", str(state))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "cost estimate of the first call" in second.stdout  # not measured again: device time
    continued = {r["method"]: r for r in json.loads((split / "synthsaebench.json").read_text())["records"]}
    for method, r in records.items():  # exactly the run straight through (fp32 on CPU)
        for key in ("l1_coeff", "started_at_batch", "steps", "mcc", "f1", "l0", "dead_pct"):
            assert continued[method][key] == (r[key] if r[key] is None else pytest.approx(r[key], rel=1e-6)), (method, key)
        assert continued[method]["calibration_trials"] == [
            {**t, "train_s": pytest.approx(t["train_s"], abs=1e9)} for t in r["calibration_trials"]]
    other = _shared(saelens_python, split, "--chunk", "128", "--state", str(state), "--overwrite")
    assert other.returncode != 0 and "other settings (chunk)" in other.stderr
    # a fresh run told the probes the stopped run finished (--probes-from) runs only the rest of each calibration
    progress_file = split / "synthsaebench_progress.json"
    done = json.loads(progress_file.read_text())["probes"]
    seeded = _shared(saelens_python, tmp_path / "seeded", "--chunk", "256", "--probes-from", str(progress_file))
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    resumed = {r["method"]: r for r in json.loads((tmp_path / "seeded" / "synthsaebench.json").read_text())["records"]}
    assert set(done) == {m for m, r in records.items() if r["l1_coeff"] is not None} and all(done.values())
    for method, earlier in done.items():
        trials, straight, n = resumed[method]["calibration_trials"], records[method]["calibration_trials"], len(done[method])
        assert [(t["l1_coeff"], t["steps"], t["l0"]) for t in trials[:n]] == [(p["l1"], p["steps"], p["l0"]) for p in earlier]
        assert all(t["earlier_run"] for t in trials[:n]) and not any(t.get("earlier_run") for t in trials[n:])
        # it asks what the run straight through asked next, and its stream holds only the probes it ran itself
        assert trials[n]["l1_coeff"] == pytest.approx(straight[n]["l1_coeff"], rel=1e-9), method
        assert resumed[method]["started_at_batch"] == sum(t["steps"] for t in trials[n:])
    wrong = json.loads(progress_file.read_text())
    wrong["probes"]["aen"][0]["l1"] *= 1.5
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    refused = _shared(saelens_python, tmp_path / "wrong", "--probes-from", str(tmp_path / "wrong.json"))
    assert refused.returncode != 0 and "--probes-from: aen's probe 1 ran l1" in refused.stderr
    assert not (tmp_path / "wrong" / "synthsaebench.json").exists()


def test_shared_budget_stops_cleanly_and_writes_what_it_has(saelens_python, tmp_path):
    run = _shared(saelens_python, tmp_path, "--budget-s", "0.001")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "synthsaebench.json").read_text())
    assert report["stopped"]["at_batch"] == 0
    assert {r["method"] for r in report["records"]} == {"topk", "batch_topk"}  # the runs in progress, as they stand
    assert all(r["stopped_at_step"] == 0 and r["training_samples"] == 0 for r in report["records"])
    assert set(report["unfinished_calibrations"]) == {"relu_l1", "aen", "elastic_net"}
    text = (tmp_path / "synthsaebench.md").read_text()
    assert "(stopped by the time limit)" in text and "calibration unfinished at the budget" in text


def test_estimate_only_writes_measured_costs_and_refuses_a_changed_model_for_results(saelens_python, tmp_path):
    run = _shared(saelens_python, tmp_path, "--estimate-only", "--orthogonalization-steps", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    cost = json.loads((tmp_path / "synthsaebench_cost.json").read_text())
    assert set(cost["costs"]["step_s"]) == set(DEFAULT_METHODS) and all(v > 0 for v in cost["costs"]["step_s"].values())
    worst, best = cost["prediction"]["worst"], cost["prediction"]["best"]
    assert worst["total_s"] >= best["total_s"] > 0 and cost["orthogonalization_steps"] == 0
    assert not (tmp_path / "synthsaebench.json").exists()
    (tmp_path / "synthsaebench.json").write_text((REPO / "benchmarks" / "synthsaebench.json").read_text())
    bench.main(["--render", "--out", str(tmp_path)])  # the committed rows, now with the cost section
    text = (tmp_path / "synthsaebench.md").read_text()
    assert text.startswith((REPO / "benchmarks" / "synthsaebench.md").read_text().split("## Cost of the published")[0])
    assert "## Cost of the published budget" in text and "Measured on CPU" in text and "Device calls" in text
    refused = _shared(saelens_python, tmp_path / "x", "--orthogonalization-steps", "0")
    assert refused.returncode != 0 and "only with --estimate-only" in refused.stderr


def test_chunked_stream_slices_chunks_into_the_same_batches_every_time():
    a = lanes.ChunkedStream(_FakeModel(), seed=3, chunk=8, batch_size=4)
    b = lanes.ChunkedStream(_FakeModel(), seed=3, chunk=8, batch_size=4)
    xs = [a.next_batch() for _ in range(5)]
    assert all(torch.equal(x, b.next_batch()) for x in xs) and a.batches == 5
    assert torch.equal(torch.cat(xs[:2]), bench.SyntheticStream(_FakeModel(), seed=3).next_batch(8))  # one draw
    assert len({tuple(x[0].tolist()) for x in xs}) == 5  # fresh samples in every batch
    with pytest.raises(ValueError, match="multiple of --batch-size"):
        lanes.ChunkedStream(_FakeModel(), seed=3, chunk=6, batch_size=4)


def test_report_counts_the_batches_a_run_started_from_finished_probes_saves():
    import synthsaebench_report as report

    progress = {"probes": {"relu_l1": [{"l1": 4.0, "steps": 100, "l0": 14.9}, {"l1": 3.0, "steps": 100, "l0": 24.4}],
                           "aen": [{"l1": 1.0, "steps": 100, "l0": 18.6}], "elastic_net": []}}
    line, = report.resumed_lines(progress, {"steps": 800})
    # only relu_l1's last probe is within 8 % of L0 25; a run of 800 steps has probes of 100 and a drift probe of 200
    assert "relu_l1 begin at their drift probe" in line and "aen" not in line
    assert "the stream is 1,000 batches, 100 fewer than in the best case" in line
    assert report.resumed_lines({"probes": {"aen": [{"l1": 1.0, "steps": 100, "l0": 18.6}]}}, {"steps": 800}) == []
