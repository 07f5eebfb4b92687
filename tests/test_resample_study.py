"""benchmarks/replication_resample.py's pipeline at a tiny size: both arms through aen_mini.train, the controlled
study's calibration and scoring reused, resampling revives latents that starve without it, files written."""
import json
from dataclasses import replace

import pytest
import torch

import aen_mini.experiments.replication as R
import aen_mini.experiments.replication_grids as RG
import aen_mini.experiments.resample_study as RS
from aen_mini.train.grid import SpikedStreams

TINY = replace(R.SIZES["tiny"], dead_window=2048, eval_samples=512)
REQUIRED = ("protocol", "method", "rho", "seed", "init", "resample", "resample_every", "steps", "batch_size",
            "target_l0", "l0", "calibration_converged", "dead_pct", "dead_window_samples", "ev", "support_f1",
            "firing_density", "calibration_trials")


def test_resampling_schedule_ends_before_the_lr_decay():
    protocol = R.ours_protocol(R.SIZES["cpu"])
    every = RS.default_resample_every(protocol)
    assert (protocol.steps, protocol.batch_size) == (1500, 256)  # the controlled study's CPU scale
    assert every * RS.RESAMPLINGS == int(protocol.steps * protocol.lr_decay_start)


def test_scoring_one_by_one_trained_saes_matches_their_own_encoder():
    protocol = R.ours_protocol(TINY)
    rc = RS.ResampleCell(R.Cell("topk", "topk", "authors"), resample=False)
    sae, _ = RS._train_one(rc, 0.9, 0, 0.0, TINY, protocol, 10)
    streams = SpikedStreams(TINY.n, TINY.m, TINY.k, [(0.9, 0)], seed=3)
    x, _ = streams.held_out(TINY.eval_samples, seed=1)
    with torch.no_grad():
        own = (sae.encode(x[0]) > 0).float().sum(-1).mean().item()
    assert RG.held_out_l0(RS._stacked([sae], [0]), streams, TINY)[0] == pytest.approx(own)


def test_records_and_resampling_revives_starved_latents():
    cells = [RS.ResampleCell(R.Cell("relu_l1", "relu_l1", "authors"), r) for r in (False, True)]
    records = RS.run_resample_study(cells, [0.9], [0], TINY)
    by = {r["method"]: r for r in records}
    assert set(by) == {"relu_l1", "relu_l1+resample"}
    for r in records:
        assert all(key in r for key in REQUIRED)
        assert len(r["calibration_trials"]) == R.CALIBRATION_POINTS
        assert r["dead_window_samples"] == TINY.dead_window
        assert r["calibration_converged"] == (abs(r["l0"] / r["target_l0"] - 1) <= R.REL_TOL)
    assert by["relu_l1+resample"]["resample_every"] > 0 and by["relu_l1"]["resample_every"] == 0
    # the authors' init starves the L1 SAE at rho = 0.9 even at this size; resampling brings latents back
    assert by["relu_l1"]["dead_pct"] > 30
    assert by["relu_l1+resample"]["dead_pct"] < by["relu_l1"]["dead_pct"] - 20


def test_main_writes_json_and_markdown(tmp_path):
    RS.main(["--size", "tiny", "--rhos", "0.9", "--seeds", "0", "--out", str(tmp_path), "--commit", "abc",
             "--dead-window", "5000"])
    data = json.loads((tmp_path / "replication_resample.json").read_text())
    assert data["metadata"]["git_commit"] == "abc" and data["metadata"]["complete"]
    assert data["metadata"]["sizes"]["dead_window"] == 5000  # the window the records were scored on
    assert {r["dead_window_samples"] for r in data["records"]} == {5000}
    assert data["metadata"]["command"].startswith("benchmarks/replication_resample.py")
    assert len(data["records"]) == len(RS.RESAMPLE_CELLS)
    text = (tmp_path / "replication_resample.md").read_text()
    assert "| authors | 0.9 | topk+resample |" in text and "abc" in text
