"""The LLM study at the paper's Pythia budget (issue 12): every SAE of one family trained at once as one batched model
on the shared harvest (``aen_mini.train.grid``), the budget planned from probed step times, l1 reused from the
calibrated run; ``benchmarks/llm_grid.py`` is its command line.

The offline English corpus (``benchmarks/corpus.py --tokens``) is cut into contexts of 128 tokens; the last
contexts, at least ``--heldout-tokens`` tokens (10M by default, or half the corpus if it is smaller), are held out
and the rest is the training split. The model (SmolLM2-135M-Instruct, its Q4_1 GGUF dequantised to float32, TF32
matmuls) is run once over both up to ``blocks.15.hook_resid_post``; activations are normalised per token (as the
book does); the training split stays on the GPU in bf16, the held-out split in float32 (``llm_study.Harvest``).

Training: ReLU+L1 and AEN at both targets and all seeds in one grid, TopK +/- AuxK per k in another (one CUDA graph
per step); each seed draws its own random batches from the harvest (``aen_mini.train.grid_tensor.TensorStreams``),
so an SAE of ``tokens_trained`` tokens makes ``tokens_trained / distinct_tokens`` passes over it. The protocol is
the calibrated run's: batch 8192, lr 1e-3 (the authors' Pythia config), lr warm-up over the first 16 % of steps,
linear decay over the last 20 %, b_dec at the first batch's mean, encoder tied to the decoder at init, gradient
clipping at 1, AEN's settings as there. The budget: ``--tokens-per-sae`` (204.8M, the paper's) unless the planned
step times (measured on the device before training) do not fit ``--budget-s``; then the largest number of steps
that fits, recorded with the reason. l1 is not searched again: ReLU+L1 and AEN reuse the l1 that ``search_l1``
chose at 20.48M tokens (``--l1-from``), and each record's ``calibration_converged`` says whether the achieved L0 is
still within 15 % of the target at this budget (drift is flagged, not hidden). 32x (``--latents32``): one seed at
L0 ~32, with whatever budget the 8x runs leave; AEN's l1 scaled from 8x by ReLU+L1's 32x/8x ratio.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch

from aen_mini.eval.metrics import evaluate_in_batches
from aen_mini.experiments.llm_report import markdown
from aen_mini.experiments.llm_study import (HOOK, LABELS, LR_WARMUP_FRAC, MODEL, Harvest, metadata, method_settings,
                                            parse_args, sync)
from aen_mini.io.atomic import atomic_write_text
from aen_mini.sae import make_sae
from aen_mini.train.grid import GridConfig, GridRun, GridTrainer
from aen_mini.train.grid_tensor import TensorStreams, passes

RELU_FAMILY = ("relu_l1", "aen")
TOPK_FAMILY = ("topk", "topk_noaux")
PROBE_STEPS = 20  # timed graph replays per grid before the plan is made
EVAL_S_PER_SAE = 6.0  # planning allowance for one SAE's evaluation (spliced CE, dead % over the corpus)


def l1_table(path: Path) -> dict[tuple[str, int], float]:
    """The l1 that search_l1 chose at seed 0 for each (method, target) in an earlier llm.json."""
    rows = json.loads(path.read_text())["rows"]
    return {(r["method"], r["target_l0"]): r["l1"] for r in rows if r["seed"] == min(x["seed"] for x in rows) and r["l1"]}


def build_runs(family: tuple[str, ...], methods: list[str], targets: list[int], seeds: list[int], d_in: int, d_sae: int,
               steps: int, batch_size: int, l1: dict[tuple[str, int], float]) -> list[tuple[dict[str, Any], GridRun]]:
    """(record fields, GridRun) for every (seed, target, method) of one family; one stream per seed."""
    out = []
    for s_i, seed in enumerate(seeds):
        for target in targets:
            for method in (m for m in methods if m in family):
                fields = method_settings(method, l1.get((method, target)), target, steps)
                variant = fields.pop("sae")
                hyper = {{"l1": "l1_coeff", "l2": "l2_coeff"}.get(k, k): v for k, v in fields.items()}
                sae = make_sae(variant, d_in, d_sae, dead_after_tokens=batch_size * max(1, steps // 20), seed=seed, **hyper)
                out.append(({"method": method, "target_l0": target, "seed": seed, "d_sae": d_sae, "l1": hyper.get("l1_coeff"),
                             "l2": hyper.get("l2_coeff"), "k": hyper.get("k")}, GridRun(sae, stream=s_i)))
    return out


def grid_config(args: argparse.Namespace, steps: int) -> GridConfig:
    return GridConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, lr_decay_start=0.8,
                      lr_warmup_steps=int(LR_WARMUP_FRAC * steps), device=args.device)


def probe_ms(runs: list[GridRun], data: TensorStreams, args: argparse.Namespace) -> float:
    """Milliseconds per step of this grid (after warm-up and graph capture), measured on a throwaway trainer."""
    trainer = GridTrainer(runs, data, grid_config(args, 1_000_000))
    for _ in range(5):
        trainer.step()
    sync()
    t = time.perf_counter()
    for _ in range(PROBE_STEPS):
        trainer.step()
    sync()
    ms = 1000 * (time.perf_counter() - t) / PROBE_STEPS
    del trainer
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return ms


def train(grid: list[tuple[dict[str, Any], GridRun]], data: TensorStreams, args: argparse.Namespace, steps: int,
          label: str, t0: float) -> tuple[list[Any], float, str | None]:
    trainer = GridTrainer([r for _, r in grid], data, grid_config(args, steps))
    t = time.perf_counter()
    for i in range(steps):
        trainer.step()
        if (i + 1) % max(1, steps // 5) == 0:
            sync()
            print(f"[{time.perf_counter() - t0:5.0f} s] {label}: step {i + 1}/{steps}, L0 "
                  f"{[round(v, 1) for v in trainer.last['l0'].tolist()]}", flush=True)
    sync()
    wall = time.perf_counter() - t
    saes = trainer.unstack()
    error = trainer.graph_error
    del trainer
    return saes, wall, error


def record(bench: Harvest, fields: dict[str, Any], sae: Any, steps: int, wall: float, grid_size: int,
           graph_error: str | None, args: argparse.Namespace, how: str) -> tuple[dict[str, Any], dict[str, Any]]:
    held = evaluate_in_batches(sae, bench.held_x, batch_size=65_536)
    ev = bench.evaluate_sae(sae)
    target = fields["target_l0"]
    converged = fields["method"].startswith("topk") or abs(held["l0"] / target - 1) <= args.rel_tol
    row = {**fields, "model": MODEL, "model_label": bench.model.label, "hook": HOOK,
           "label": LABELS[fields["method"]], "l0": held["l0"], "calibration_converged": bool(converged),
           "calibration_how": "k = target" if fields["method"].startswith("topk") else how, "calibration_trials": [],
           "dead_pct": held["dead_pct"], "dead_window_tokens": int(bench.held_x.shape[0]),
           "dead_pct_corpus": ev["dead_pct_corpus"], "dead_corpus_window_tokens": ev["dead_corpus_window_tokens"],
           "dead_by_window": ev["dead_by_window"], "ev": held["ev"], "mse": held["mse"], "shrinkage": held["shrinkage"],
           "ce_clean": ev["ce_clean"], "ce_spliced": ev["ce_sae"], "delta_ce": ev["ce_sae"] - ev["ce_clean"],
           "kl": ev["kl_sae"], "ce_zero": ev["ce_zero"], "ce_mean": ev["ce_mean"], "kl_zero": ev["kl_zero"],
           "kl_mean": ev["kl_mean"], "ce_recovered_zero": ev["ce_recovered_zero"],
           "ce_recovered_mean": ev["ce_recovered_mean"], "splice_positions": ev["n_positions"],
           "density_histogram": ev["density_histogram"], "tokens_trained": steps * args.batch_size,
           "distinct_tokens": bench.distinct_train, "passes": passes(steps, args.batch_size, bench.distinct_train),
           "batch_size": args.batch_size, "lr": args.lr, "steps": steps, "lr_warmup_steps": int(LR_WARMUP_FRAC * steps),
           "train_wall_s": wall / grid_size, "grid_wall_s": wall, "grid_size": grid_size,
           "step_ms": 1000 * wall / steps / grid_size, "calibration_runs": 1, "eval_wall_s": ev["eval_wall_s"],
           "cuda_graph_error": graph_error}
    return row, ev


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bench = Harvest(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata(args, "benchmarks/llm_grid.py")
    meta.update(model_label=bench.model.label, hook=HOOK, d_in=bench.model.d_model, model_load_s=bench.model_load_s,
                harvest_s=bench.harvest_s, harvest_tokens=bench.distinct_train, corpus_tokens=bench.corpus_tokens,
                harvest_tokens_per_s=bench.distinct_train / bench.harvest_s, heldout_tokens=int(bench.held_x.shape[0]),
                splice_contexts=len(bench.splice_tokens), splice_positions=None, ctx_len=args.ctx_len,
                matmul_precision="TF32 (fp32 storage)", trainer="aen_mini.train.grid (one batched model per family, CUDA graph)",
                corpus="offline English corpus (benchmarks/corpus.md): KJV Bible, Shakespeare + Milton, Python, Linux, "
                       "Perl and PostgreSQL documentation, the Debian Administrator's Handbook")
    l1 = l1_table(Path(args.l1_from))
    how = f"l1 chosen by search_l1 at 20.48M tokens ({args.l1_from}), reused; L0 at this budget checked against 15 %"
    data = TensorStreams(bench.train_x, streams=len(args.seeds), seed=0)
    d = bench.model.d_model
    max_steps = args.tokens_per_sae // args.batch_size
    grids = [("ReLU family", build_runs(RELU_FAMILY, args.methods, args.targets, args.seeds, d, args.latents, max_steps,
                                        args.batch_size, l1))]
    grids += [(f"TopK k={t}", build_runs(TOPK_FAMILY, args.methods, [t], args.seeds, d, args.latents, max_steps,
                                        args.batch_size, l1)) for t in args.targets]
    grids = [(name, g) for name, g in grids if g]
    ms = {name: probe_ms([r for _, r in g], data, args) for name, g in grids}
    n_sae = sum(len(g) for _, g in grids)
    room = (args.budget_s - bench.elapsed() - n_sae * EVAL_S_PER_SAE - 20.0) * (1 - args.reserve32 * bool(args.latents32))
    steps = min(max_steps, int(room / (sum(ms.values()) / 1000) // 100 * 100))
    meta["plan"] = {"probe_ms_per_step": ms, "max_steps": max_steps, "steps": steps, "n_sae": n_sae,
                    "why": "the paper's budget" if steps == max_steps else
                    f"{args.tokens_per_sae:,} tokens per SAE do not fit --budget-s {args.budget_s:g}: the largest number "
                    "of steps that does, from the probed step times"}
    print(f"plan: {meta['plan']}", flush=True)
    rows: list[dict[str, Any]] = []
    rows32: list[dict[str, Any]] = []
    features: dict[str, Any] = {}
    cut: list[str] = []

    def write() -> None:
        meta["wall_s"] = bench.elapsed()
        meta["cut"] = cut
        meta["tokens_per_sae"] = steps * args.batch_size
        atomic_write_text(out_dir / "llm.json", json.dumps({"metadata": meta, "rows": rows}, indent=1))
        atomic_write_text(out_dir / "llm_features.json", json.dumps(features))
        if rows32:
            atomic_write_text(out_dir / "llm_32x.json", json.dumps({"metadata": {**meta, "latents": args.latents32,
                                                                                  "tokens_per_sae": rows32[0]["tokens_trained"]},
                                                                    "rows": rows32}, indent=1))

    for name, grid in grids:
        # a fresh grid per family, rebuilt with the planned steps (AEN's reweighting schedule depends on them)
        grid = build_runs(RELU_FAMILY if name == "ReLU family" else TOPK_FAMILY, args.methods,
                          args.targets if name == "ReLU family" else [int(name.split("=")[1])], args.seeds, d,
                          args.latents, steps, args.batch_size, l1)
        saes, wall, error = train(grid, data, args, steps, name, bench.t0)
        for (fields, _), sae in zip(grid, saes):
            row, ev = record(bench, fields, sae, steps, wall, len(grid), error, args, how)
            rows.append(row)
            meta["splice_positions"] = ev["n_positions"]
            if fields["seed"] == args.seeds[0] and fields["target_l0"] == min(args.targets):
                features[fields["method"]] = {"target_l0": fields["target_l0"], "seed": fields["seed"],
                                              "latents": bench.top_contexts(sae, ev["counts"], seed=1234)}
            print(f"[{bench.elapsed():5.0f} s] {row['label']} L0 target {row['target_l0']} seed {row['seed']}: L0 "
                  f"{row['l0']:.1f}, dead {row['dead_pct']:.2f} % over {row['dead_window_tokens']:,}, EV {row['ev']:.3f}, "
                  f"dCE {row['delta_ce']:.3f}", flush=True)
        del saes
        gc.collect()
        write()
    if args.latents32:
        l1_32 = {("relu_l1", 32): args.relu_l1_32x,
                 ("aen", 32): l1[("aen", 32)] * args.relu_l1_32x / l1[("relu_l1", 32)]}
        grid32 = build_runs(RELU_FAMILY, args.methods, [32], args.seeds[:1], d, args.latents32, 1000, args.batch_size, l1_32)
        ms32 = probe_ms([r for _, r in grid32], data, args)
        room = args.budget_s - bench.elapsed() - len(grid32) * 2 * EVAL_S_PER_SAE - 15.0
        steps32 = min(max_steps, int(room / (ms32 / 1000) // 100 * 100))
        meta["plan_32x"] = {"probe_ms_per_step": ms32, "steps": steps32,
                            "l1": {f"{m}:{t}": v for (m, t), v in l1_32.items()}}
        if steps32 < 1000:
            cut.append(f"32x ({args.latents32} latents): {steps32} steps would fit, fewer than 1000")
        else:
            grid32 = build_runs(RELU_FAMILY, args.methods, [32], args.seeds[:1], d, args.latents32, steps32,
                                args.batch_size, l1_32)
            saes, wall, error = train(grid32, data, args, steps32, "32x ReLU family", bench.t0)
            how32 = (f"ReLU+L1: l1 {args.relu_l1_32x:g} (search_l1 at 32x, 10.24M tokens); AEN: its 8x l1 scaled by "
                     "ReLU+L1's 32x/8x ratio; L0 checked against 15 %")
            for (fields, _), sae in zip(grid32, saes):
                row, _ = record(bench, fields, sae, steps32, wall, len(grid32), error, args, how32)
                rows32.append(row)
                print(f"[{bench.elapsed():5.0f} s] 32x {row['label']}: L0 {row['l0']:.1f}, dead {row['dead_pct']:.2f} %", flush=True)
    n_rows = len(rows) + len(rows32)
    meta["end_to_end_per_sae_s"] = bench.elapsed() / max(n_rows, 1)
    meta["end_to_end_note"] = "whole run (model load, harvest, probes, training, evaluation) / SAEs trained"
    write()
    return {"metadata": meta, "rows": rows}


def main(argv: list[str] | None = None, description: str | None = None) -> None:
    """``benchmarks/llm_grid.py``: run, write llm.json (+ llm_32x.json), llm_features.json and their .md under --out
    (or only --markdown's .md)."""
    args = parse_args(argv, description or __doc__.splitlines()[0], grid=True)
    if args is None:
        return
    result = run_all(args)
    atomic_write_text(Path(args.out) / "llm.md", markdown(result))
    if args.latents32 and (Path(args.out) / "llm_32x.json").is_file():
        atomic_write_text(Path(args.out) / "llm_32x.md", markdown(json.loads((Path(args.out) / "llm_32x.json").read_text())))
    print(markdown(result))
