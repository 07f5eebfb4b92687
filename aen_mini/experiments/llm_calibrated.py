"""The LLM study's first run (issue 12): one SAE at a time on the shared harvest, ReLU+L1 and AEN with l1 calibrated
per target L0 by ``search_l1`` (seed 1 reuses seed 0's l1), TopK with k = target; ``benchmarks/llm.py`` is its
command line. Its 20.48M-token runs chose the l1 that the grid run (``llm_grid_study.py``) reuses. Settings,
harvest and evaluation: ``llm_study.py``; Markdown: ``llm_report.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from aen_mini.eval.calibrate import power_law_start, search_l1
from aen_mini.experiments.llm_report import markdown
from aen_mini.experiments.llm_study import HOOK, LABELS, MODEL, Bench, metadata, method_settings, parse_args
from aen_mini.io.atomic import atomic_write_text


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="aen-llm-"))
    meta = metadata(args)
    meta.update(model_label=bench.model.label, hook=HOOK, d_in=bench.model.d_model, model_load_s=bench.model_load_s,
                harvest_s=bench.harvest_s, harvest_tokens=bench.distinct_train,
                harvest_tokens_per_s=bench.distinct_train / bench.harvest_s, heldout_tokens=int(bench.held_x.shape[0]),
                splice_contexts=len(bench.splice_tokens), splice_positions=None, ctx_len=args.ctx_len)
    rows: list[dict[str, Any]] = []
    features: dict[str, Any] = {}
    calibrated: dict[tuple[str, int], dict[str, Any]] = {}
    trials_of: dict[str, list[dict[str, float]]] = {}
    cut: list[str] = []
    n_run = 0

    def write() -> None:
        meta["wall_s"] = bench.elapsed()
        meta["cut"] = cut
        atomic_write_text(out_dir / "llm.json", json.dumps({"metadata": meta, "rows": rows}, indent=1))
        atomic_write_text(out_dir / "llm_features.json", json.dumps(features))

    def fits(runs: int) -> bool:
        per_run = max((r["train_wall_s"] + 2.0 for r in rows), default=15.0) + max((r["eval_wall_s"] for r in rows), default=5.0)
        return bench.elapsed() + runs * per_run < args.budget_s

    for seed in args.seeds:
        for target in sorted(args.targets, reverse=True):
            for method in args.methods:
                base = replace(bench.base_config(scratch / f"{method}-{target}-{seed}"), seed=seed)
                runs: list[dict[str, Any]] = []

                def measure(l1: float | None) -> float:
                    nonlocal n_run
                    n_run += 1
                    cfg = replace(base, out=f"{base.out}-{len(runs)}", **method_settings(method, l1, target, base.steps))
                    run = bench.train(cfg)
                    runs.append(run)
                    print(f"[{bench.elapsed():5.0f} s] {method} L0 target {target} seed {seed}: l1={l1} -> "
                          f"L0 {run['held_out']['l0']:.1f}, dead {run['held_out']['dead_pct']:.1f} % "
                          f"({run['train_wall_s']:.1f} s)", flush=True)
                    return run["held_out"]["l0"]

                key = (method, target)
                calibrating = method in ("relu_l1", "aen") and key not in calibrated
                if not fits(args.trials if calibrating else 1):
                    cut.append(f"{method} target {target} seed {seed}")
                    continue
                if method.startswith("topk"):
                    measure(None)
                    calibration = {"l1_coeff": None, "converged": True, "trials": [], "how": "k = target"}
                elif calibrating:
                    start = (power_law_start(trials_of.get(method, []), target)
                             or power_law_start(trials_of.get("relu_l1", []), target) or 0.5 * math.sqrt(bench.model.d_model / target))
                    calibration = search_l1(measure, target, start, trials=args.trials, rel_tol=args.rel_tol)
                    calibration["how"] = f"search_l1 on seed {seed}"
                    trials_of.setdefault(method, []).extend(calibration["trials"])
                    calibrated[key] = calibration
                else:
                    l0 = measure(calibrated[key]["l1_coeff"])
                    calibration = {"l1_coeff": calibrated[key]["l1_coeff"], "converged": abs(l0 / target - 1) <= args.rel_tol,
                                   "trials": [], "how": f"l1 of seed {args.seeds[0]}'s calibration"}
                run = min(runs, key=lambda r: abs(math.log(max(r["held_out"]["l0"], 1e-3) / target)))
                ev = bench.evaluate(run)
                cfg, held = run["config"], run["held_out"]
                row = {
                    "model": MODEL, "model_label": bench.model.label, "hook": HOOK, "method": method,
                    "label": LABELS[method], "target_l0": target, "seed": seed, "d_sae": cfg.latents,
                    "l1": cfg.l1, "l2": cfg.l2, "k": cfg.k, "l0": held["l0"],
                    "calibration_converged": bool(calibration["converged"]), "calibration_how": calibration["how"],
                    "calibration_trials": calibration["trials"],
                    "dead_pct": held["dead_pct"], "dead_window_tokens": int(bench.held_x.shape[0]),
                    "dead_pct_corpus": ev["dead_pct_corpus"], "dead_corpus_window_tokens": ev["dead_corpus_window_tokens"],
                    "dead_by_window": ev["dead_by_window"], "ev": held["ev"], "mse": held["mse"],
                    "shrinkage": held.get("shrinkage"),
                    "ce_clean": ev["ce_clean"], "ce_spliced": ev["ce_sae"], "delta_ce": ev["ce_sae"] - ev["ce_clean"],
                    "kl": ev["kl_sae"], "ce_zero": ev["ce_zero"], "ce_mean": ev["ce_mean"], "kl_zero": ev["kl_zero"],
                    "kl_mean": ev["kl_mean"], "ce_recovered_zero": ev["ce_recovered_zero"],
                    "ce_recovered_mean": ev["ce_recovered_mean"], "splice_positions": ev["n_positions"],
                    "density_histogram": ev["density_histogram"],
                    "tokens_trained": cfg.steps * cfg.batch_size, "distinct_tokens": bench.distinct_train,
                    "passes": cfg.steps * cfg.batch_size / bench.distinct_train, "batch_size": cfg.batch_size,
                    "lr": cfg.lr, "steps": cfg.steps, "lr_warmup_steps": cfg.lr_warmup_steps,
                    "train_wall_s": run["train_wall_s"], "step_ms": 1000 * run["train_wall_s"] / cfg.steps,
                    "calibration_runs": len(runs), "eval_wall_s": ev["eval_wall_s"],
                }
                rows.append(row)
                meta["splice_positions"] = ev["n_positions"]
                if seed == args.seeds[0] and target == min(args.targets):
                    features[method] = {"target_l0": target, "seed": seed,
                                        "latents": bench.top_contexts(ev["sae"], ev["counts"], seed=1234)}
                write()
    total_final = len(rows)
    meta["runs_trained"] = n_run
    meta["end_to_end_per_sae_s"] = ((bench.model_load_s + bench.harvest_s) / max(total_final, 1)
                                    + sum(r["train_wall_s"] * r["calibration_runs"] + r["eval_wall_s"] for r in rows) / max(total_final, 1))
    write()
    shutil.rmtree(scratch, ignore_errors=True)  # the SAE checkpoints: the records above are what is kept
    return {"metadata": meta, "rows": rows}


def main(argv: list[str] | None = None, description: str | None = None) -> None:
    """``benchmarks/llm.py``: run, write llm.json, llm_features.json and llm.md under --out (or only --markdown's .md)."""
    args = parse_args(argv, description or __doc__.splitlines()[0], grid=False)
    if args is None:
        return
    result = run_all(args)
    atomic_write_text(Path(args.out) / "llm.md", markdown(result))
    print(markdown(result))
