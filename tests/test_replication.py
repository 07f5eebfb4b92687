"""benchmarks/replication.py's pipeline at a tiny size: records carry every field the issue asks for, the authors'
selection picks the grid point closest to the target, calibration interpolates and flags misses."""
import math
from dataclasses import replace

import pytest

import aen_mini.experiments.replication as R
import aen_mini.experiments.replication_grids as RG
import aen_mini.experiments.replication_report as RP

REQUIRED = ("protocol", "method", "rho", "seed", "init", "l1_warmup", "aux", "steps", "batch_size", "target_l0", "l0",
            "calibration_converged", "dead_pct", "dead_window_samples", "ev", "support_f1", "firing_density")
TINY = replace(R.SIZES["tiny"], step_scale=0.002, dead_window=2048, eval_samples=512)


def test_interpolation_is_log_linear_between_the_bracketing_trials():
    trials = [{"l1_coeff": 1.0, "l0": 32.0}, {"l1_coeff": 4.0, "l0": 8.0}, {"l1_coeff": 16.0, "l0": 1.0}]
    # log L0 falls by log 4 per log 4 of l1 between 1 and 4: L0 = 16 at l1 = 2
    assert RG.interpolate_l1(trials, 16.0) == pytest.approx(2.0)
    # no bracket: the closest trial
    assert RG.interpolate_l1([{"l1_coeff": 1.0, "l0": 40.0}, {"l1_coeff": 2.0, "l0": 30.0}], 16.0) == 2.0


def test_controlled_records_have_every_field_and_flag_misses():
    cells = [R.Cell("relu_l1", "relu_l1"), R.Cell("topk", "topk", init="authors")]
    records = RG.run_controlled(cells, [0.5], [0], replace(TINY, ours_batch=64, ours_steps=20), "cpu")
    assert {r["method"] for r in records} == {"relu_l1", "topk"}
    for r in records:
        assert all(key in r for key in REQUIRED)
        hist = r["firing_density"]
        assert sum(hist["counts"]) + hist["dead"] == TINY.d_sae
        assert r["dead_pct"] == pytest.approx(100 * hist["dead"] / TINY.d_sae)
        assert r["calibration_converged"] == (abs(r["l0"] / r["target_l0"] - 1) <= R.REL_TOL)
    relu = next(r for r in records if r["method"] == "relu_l1")
    assert len(relu["calibration_trials"]) == R.CALIBRATION_POINTS
    assert relu["l1_coeff_authors_scale"] == pytest.approx(relu["l1_coeff"] / TINY.n)
    text = RP.report_markdown(records, {"size": "tiny", "complete": True})
    row = next(line for line in text.splitlines() if line.startswith("| relu_l1 |"))
    assert (" !" in row) == (not relu["calibration_converged"])


def test_authors_selection_is_the_grid_point_closest_to_the_target(monkeypatch):
    monkeypatch.setattr(R, "AUTHORS_GRID", {"relu_l1": [{"l1_coeff": 0.05}, {"l1_coeff": 0.0005}], "elastic_net": [],
                                            "aen": [], "topk": [{"k": 16}]})
    records = RG.run_authors([0.9], [0], TINY, "cpu")
    relu = next(r for r in records if r["method"] == "relu_l1")
    assert all(key in relu for key in REQUIRED) and relu["init"] == "authors" and relu["loss_scale"] == "mean"
    best = min(relu["grid"], key=lambda g: abs(g["l0"] - relu["target_l0"]))
    assert math.isclose(relu["l1_coeff"], best["hyper"]["l1_coeff"])
    assert relu["l1_coeff"] in (0.05 * 256 / TINY.n, 0.0005 * 256 / TINY.n)  # kept in sum-scale units


def test_summary_table_by_hand():
    base = {"protocol": "ours", "method": "aen", "init": "ours", "centred": False, "rho": 0.0, "l0": 4.0, "ev": 0.5,
            "support_f1": 0.6}
    records = [{**base, "dead_pct": 10.0, "calibration_converged": True},
               {**base, "dead_pct": 30.0, "calibration_converged": False}]
    cell = R.summary_table(records)["ours|aen|ours|False|0.0"]
    assert cell["dead_pct_mean"] == 20.0 and cell["dead_pct_min"] == 10.0 and cell["dead_pct_max"] == 30.0
    assert cell["seeds"] == 2 and cell["converged"] is False


def test_results_file_round_trips():
    import json
    records = [{"protocol": "ours", "method": "aen", "init": "ours", "centred": False, "rho": 0.0, "l0": 4.0, "ev": 0.5,
                "support_f1": 0.6, "dead_pct": 1.0, "calibration_converged": True, "grid": [[1, 2]]}]
    data = json.loads(R.dumps({"size": "tiny"}, records))
    assert data["records"] == records and data["metadata"] == {"size": "tiny"}
    assert data["summary"]["ours|aen|ours|False|0.0"]["seeds"] == 1


def test_narrowed_grid_holds_only_points_of_the_authors_grid():
    """AUTHORS_GRID_NARROW: each point is one of their sweep file's (AUTHORS_GRID, gamma 1 where not given)."""
    with_gamma = lambda point: {"gamma": 1.0, **point}  # noqa: E731
    for method, points in R.AUTHORS_GRID_NARROW.items():
        full = [with_gamma(q) if method in ("aen", "adaptive_lasso") else q for q in R.AUTHORS_GRID[method]]
        for point in points:
            point = with_gamma(point) if method in ("aen", "adaptive_lasso") else point
            assert point in full, (method, point)
    assert any(p.get("gamma") == 0.5 for p in R.AUTHORS_GRID_NARROW["aen"])


def test_the_authors_grid_is_their_sweep_file():
    """configs/spiked/spiked_model_sweep.yaml: 5 l1 values; 3 x 4 elastic net; 3 x 4 x 2 x 2 x 2 AEN (lambda_1,
    lambda_2, gamma, ema_beta, ref_k_top_pct); 3 x 2 x 2 x 2 adaptive lasso."""
    sizes = {method: len(points) for method, points in R.AUTHORS_GRID.items()}
    assert sizes == {"relu_l1": 5, "elastic_net": 12, "aen": 96, "adaptive_lasso": 24, "topk": 1}
    assert {p["gamma"] for p in R.AUTHORS_GRID["aen"]} == {0.5, 1.0}


def test_authors_run_on_a_given_grid_records_the_grid_and_the_authors_dead_count():
    grid = {"relu_l1": [{"l1_coeff": 0.005}], "aen": [{"l1_coeff": 0.001, "l2_coeff": 0.005, "gamma": 0.5}],
            "adaptive_lasso": [{"l1_coeff": 0.001, "ema_beta": 0.9999, "ref_pct": 0.05}]}
    records = RG.run_authors([0.0], [0], TINY, "cpu", grid=grid, families=(("relu_l1", "aen", "adaptive_lasso"),))
    assert sorted(r["method"] for r in records) == ["adaptive_lasso", "aen", "relu_l1"]
    aen = next(r for r in records if r["method"] == "aen")
    assert aen["gamma"] == 0.5 and aen["grid_name"] == "full"  # a custom grid is not the narrowed one
    for r in records:
        # the authors' count: the trainer's dead % (silent for dead_after_tokens) at the last step
        assert r["history"][-1]["step"] == r["steps"]
        assert R.training_window_dead(r) == r["history"][-1]["dead_pct"]
    assert R.training_window_dead({**records[0], "history": records[0]["history"][:-1]}) is None
    text = RP.report_markdown(records, {"size": "tiny", "complete": True})
    assert "dead % (last 10k steps)" in text and "| adaptive_lasso |" in text


def test_authors_protocol_gradient_is_their_formula():
    """One step of the grid under the authors' protocol has the gradient of their loss as their code writes it:
    mean over batch and features of (x - x_hat)^2 plus lambda_1 times the batch mean of ||h||_1."""
    import torch

    from aen_mini.train.grid import GridConfig, GridRun, GridTrainer, SpikedStreams

    sae = RG.protocol_sae("relu_l1", TINY, R.PROTOCOLS["authors"], 0, {"l1_coeff": 0.01})
    streams = SpikedStreams(TINY.n, TINY.m, TINY.k, [(0.5, 0)], seed=0)
    trainer = GridTrainer([GridRun(sae, init="authors")], streams, GridConfig(steps=1, batch_size=64, grad_clip=None))
    trainer._draw()
    x = trainer.x[0].clone()
    p = {k: v.detach()[0].clone().requires_grad_() for k, v in trainer.params.items()}
    h = torch.relu((x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"])
    x_hat = h @ p["W_dec"].T + p["b_dec"]
    (((x - x_hat) ** 2).mean() + 0.01 * h.abs().sum(1).mean()).backward()
    trainer._relu_forward_backward()
    for name, value in p.items():
        assert torch.allclose(value.grad, trainer.params[name].grad[0], rtol=1e-5, atol=1e-7), name


def test_authors_csv_run_names_decode_to_the_grid_of_their_csv_commit():
    """Their CSV names runs <model>_sweepNNN: NNN indexes the product of configs/spiked/p1.yaml's lists at 467cae4."""
    assert R.authors_csv_point("vanilla_l1_sweep001") == ("relu_l1", {"l1_coeff": 0.005})
    assert R.authors_csv_point("topk_baseline_sweep001") == ("topk", {"k": 16})
    assert R.authors_csv_point("elastic_net_sweep005") == ("elastic_net", {"l1_coeff": 0.005, "l2_coeff": 0.0001})
    assert R.authors_csv_point("adaptive_elastic_net_sweep066") == (
        "aen", {"l1_coeff": 0.001, "l2_coeff": 0.0001, "gamma": 0.5, "ema_beta": 0.9999, "ref_pct": 0.05})
    for bad in ("vanilla_l1_sweep004", "relu_sweep000", "vanilla_l1"):
        with pytest.raises(ValueError, match="model_type"):
            R.authors_csv_point(bad)


def test_authors_csv_selection_is_the_run_nearest_16_and_says_how_much_was_read():
    runs = [{"method": "relu_l1", "rho": 0.9, "l0": l0, "run": name} for name, l0 in (("a", 1.48), ("b", 1.54), ("c", 60.4))]
    runs.append({"method": "topk", "rho": 0.9, "l0": 14.9, "run": "k16"})
    picks = {p["method"]: p for p in R.authors_csv_selection(runs)}
    assert picks["relu_l1"]["run"] == "b" and picks["relu_l1"]["points_read"] == 3
    assert picks["relu_l1"]["grid_points"] == 4 and picks["topk"]["grid_points"] == 5


def test_committed_csv_picks_are_the_script_applied_to_the_committed_rows():
    import importlib.util
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("paper_spiked_csv", root / "benchmarks" / "paper_spiked_csv.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = script.points(root / "benchmarks" / "paper_spiked_csv_rows.tsv")
    committed = json.loads((root / "benchmarks" / "paper_spiked_csv.json").read_text())
    assert committed["points"] == runs and len({(p["run"], p["rho"]) for p in runs}) == len(runs)
    assert committed["records"] == R.authors_csv_selection(runs)
    # every run of their CSV was read: 5 methods' whole grids at 5 rho, each pick made among the whole grid
    assert len(runs) == 5 * sum(math.prod(map(len, axes.values())) for _, axes in R.AUTHORS_CSV_GRID.values())
    assert all(p["points_read"] == p["grid_points"] for p in committed["records"])
    assert {r["method"] for r in committed["records"]} == {"relu_l1", "topk", "elastic_net", "adaptive_lasso", "aen"}
    relu = {r["rho"]: r for r in committed["records"] if r["method"] == "relu_l1"}
    assert {r["l1_coeff"] for r in relu.values()} == {0.005} and relu[0.9]["dead_pct"] == pytest.approx(90.52734375)


def test_gpu_runs_at_their_pick_are_at_the_full_transcriptions_picks():
    """The GPU runs "at their pick" took the picks from a partial reading of their CSV (29 of AEN's 72 points);
    the full reading picks the same grid point at every rho, so those runs are at their pick of the whole grid."""
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    grids = R.csv_pick_grids(json.loads((root / "paper_spiked_csv.json").read_text())["records"])
    for name in ("replication_full_picks_ours.json", "replication_full_picks_ours_init.json"):
        runs = [r for r in R.load_results(root / name)[0] if r.get("grid_name") == "csv_pick"]
        assert sorted({r["rho"] for r in runs}) == sorted(grids) and len(runs) == 15
        for r in runs:
            assert [g["hyper"] for g in r["grid"]] == grids[r["rho"]]["aen"], (name, r["rho"])


def test_report_puts_a_shared_grid_point_side_by_side():
    record = {"protocol": "authors", "method": "relu_l1", "rho": 0.9, "seed": 0, "l0": 1.6, "dead_pct": 97.0, "ev": 0.3,
              "support_f1": 0.0, "calibration_converged": False, "grid": [{"hyper": {"l1_coeff": 0.005}, "l0": 1.6},
                                                                           {"hyper": {"l1_coeff": 0.05}, "l0": 0.2}]}
    paper = {"source": "their CSV", "records": [{"method": "relu_l1", "rho": 0.9, "point": "l1 = 0.005", "l0": 1.54,
                                                 "dead_pct": 90.5, "ev": 0.382, "points_read": 4, "grid_points": 4}],
             "points": [{"method": "relu_l1", "rho": 0.9, "l1_coeff": 0.005, "point": "l1 = 0.005", "l0": 1.54}]}
    text = RP.report_markdown([record], {"size": "full", "complete": True}, paper)
    assert "| relu_l1 | 0.9 | l1 = 0.005 | 1.60 (1 seeds) | 1.54 |" in text
    assert "The paper's side: their CSV" in text and "l1 = 0.05" not in text  # ours only: no row


def test_their_aen_pick_is_trained_alone_and_scored_with_its_coefficients():
    import json
    from pathlib import Path
    picks = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "paper_spiked_csv.json").read_text())
    grids = R.csv_pick_grids(picks["records"])
    assert sorted(grids) == [0.0, 0.3, 0.5, 0.7, 0.9] and all(list(g) == ["aen"] for g in grids.values())
    assert grids[0.9]["aen"] == [{"l1_coeff": 0.001, "l2_coeff": 0.0001, "gamma": 0.5, "ema_beta": 0.9999, "ref_pct": 0.05}]
    (record,) = RG.run_authors([0.9], [0], TINY, "cpu", grid=grids[0.9], families=(("aen",),), grid_name="csv_pick")
    assert record["grid_name"] == "csv_pick" and record["gamma"] == 0.5 and record["ema_beta"] == 0.9999
    assert record["l2_coeff"] == pytest.approx(0.0001 * 256 / TINY.n) and len(record["grid"]) == 1


def test_adaptive_lasso_picks_and_per_part_rhos_on_the_command_line(tmp_path):
    """--csv-methods adaptive_lasso trains the authors' adaptive-lasso pick at every rho (one job); --part-rhos gives
    one controlled part its own rhos; a malformed --part-rhos is a one-line error."""
    import json
    from pathlib import Path
    from aen_mini.experiments.replication_run import main
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    grids = R.csv_pick_grids(json.loads((root / "paper_spiked_csv.json").read_text())["records"], ("adaptive_lasso",))
    assert sorted(grids) == [0.0, 0.3, 0.5, 0.7, 0.9] and all(list(g) == ["adaptive_lasso"] for g in grids.values())
    assert grids[0.9]["adaptive_lasso"] == [{"l1_coeff": 0.001, "gamma": 0.5, "ema_beta": 0.9999, "ref_pct": 0.05}]
    main(["--size", "tiny", "--parts", "authors_csv_picks", "--csv-methods", "adaptive_lasso", "--seeds", "0",
          "--out", str(tmp_path / "al"), "--commit", "abc"])
    records, meta = R.load_results(tmp_path / "al" / "replication.json")
    assert sorted(r["rho"] for r in records) == [0.0, 0.3, 0.5, 0.7, 0.9] and meta["git_commit"] == "abc"
    assert {r["method"] for r in records} == {"adaptive_lasso"} and all(r["grid_name"] == "csv_pick" for r in records)
    assert {r["rho"]: r["gamma"] for r in records}[0.9] == 0.5
    main(["--size", "tiny", "--parts", "collapse", "--part-rhos", "collapse=0.5", "--rhos", "0.9", "--seeds", "0",
          "--out", str(tmp_path / "c")])
    assert {r["rho"] for r in R.load_results(tmp_path / "c" / "replication.json")[0]} == {0.5}
    with pytest.raises(SystemExit):
        main(["--part-rhos", "authors=0.5"])
    with pytest.raises(SystemExit):
        main(["--part-rhos", "ours=high"])


def test_centring_table_sets_each_centred_cell_next_to_the_same_uncentred_cell():
    def rec(method, centred, dead, converged=True):
        return {"protocol": "ours", "method": method, "init": "authors", "rho": 0.9, "centred": centred,
                "dead_pct": dead, "l0": 16.0, "ev": 0.5, "support_f1": 0.4, "calibration_converged": converged}
    centred = [rec("relu_l1", True, 10.0), rec("relu_l1", True, 20.0), rec("aen", True, 1.0)]
    plain = [rec("relu_l1", False, 60.0, converged=False), rec("topk", False, 90.0)]
    lines = RP.centring_table(centred, plain)
    assert len(lines) == 4  # header, rule, one row per centred cell; topk (no centred cell) has none
    assert "| relu_l1 | authors | 0.9 | 60.0 | 15.0 ± 7.1 | 16.0 ! | 16.0 ± 0.0 |" in lines[3]
    assert lines[2].startswith("| aen | authors | 0.9 | – | 1.0 |")


def test_every_committed_controlled_cell_counts_dead_over_262144_held_out_samples():
    """Issue 11 asks for dead % over >= 262,144 held-out samples in every cell of the controlled study."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    names = ("replication.json", "replication_full_ours.json", "replication_full_picks_ours.json",
             "replication_full_centred.json", "replication_full_collapse.json")
    for name in names:
        records, meta = R.load_results(root / name)
        scored = [r for r in records if r["protocol"] == "ours" or name == "replication.json"]  # CPU scale: every part
        assert scored and min(r["dead_window_samples"] for r in scored) >= 262_144, name
        assert meta["sizes"]["dead_window"] >= 262_144, name


def test_refinement_places_points_inside_the_bracket_and_stops_near_the_target():
    # the committed miss: L0 22.1 at l1 1.202 and 1.9 at 2.404 (ReLU + L1, our init, rho 0)
    trials = [{"l1_coeff": 0.601, "l0": 32.3}, {"l1_coeff": 1.202, "l0": 22.1}, {"l1_coeff": 2.404, "l0": 1.9}]
    points = RG.refine_l1(trials, 16.0, points=3)
    assert points == pytest.approx([1.202 * 2 ** 0.25, 1.202 * 2 ** 0.5, 1.202 * 2 ** 0.75])
    assert RG.refine_l1(trials + [{"l1_coeff": 1.5, "l0": 16.5}], 16.0) == []  # within REL_TOL / 2: done
    assert RG.refine_l1([{"l1_coeff": 1.0, "l0": 40.0}, {"l1_coeff": 2.0, "l0": 30.0}], 16.0) == []  # no bracket


def test_calibration_rounds_narrow_the_bracket_and_hit_the_target(monkeypatch):
    # a stand-in held-out L0 of 12 / l1 (target 3 at tiny size: l1 = 4, which the first grid does not contain)
    monkeypatch.setattr(RG, "held_out_l0", lambda trainer, streams, size: [12.0 / r.sae.l1_coeff for r in trainer.runs])
    size = replace(TINY, ours_batch=64, ours_steps=20)
    records = RG.run_controlled([R.Cell("relu_l1", "relu_l1")], [0.5], [0], size, "cpu", refine_rounds=1)
    trials = records[0]["calibration_trials"]
    first = sorted(t["l1_coeff"] for t in trials if t["round"] == 0)
    later = sorted(t["l1_coeff"] for t in trials if t["round"] == 1)
    assert len(first) == R.CALIBRATION_POINTS and len(later) == R.REFINE_POINTS
    lo, hi = max(v for v in first if v < 4.0), min(v for v in first if v > 4.0)  # the first grid's bracket
    assert lo < later[0] and later[-1] < hi and later[-1] / later[0] == pytest.approx((hi / lo) ** 0.5)
    assert records[0]["refine_rounds"] == 1 and records[0]["l1_coeff"] == pytest.approx(4.0)


def test_a_rerun_supersedes_whole_cells_and_keeps_the_others():
    cell = {"protocol": "ours", "method": "relu_l1", "init": "ours", "centred": False, "rho": 0.0}
    older = [{**cell, "seed": s, "l0": 21.0} for s in range(3)] + [{**cell, "method": "topk", "seed": 0, "l0": 16.0}]
    newer = [{**cell, "seed": 0, "l0": 16.0}]
    merged = R.supersede(older, newer)
    assert [(r["method"], r["seed"], r["l0"]) for r in merged] == [("topk", 0, 16.0), ("relu_l1", 0, 16.0)]
    assert R.supersede(older, []) == older
