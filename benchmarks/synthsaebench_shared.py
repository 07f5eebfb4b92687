"""SynthSAEBench-16k at the published budget (200M samples per SAE) in one pass of the sampler: every SAE of the
benchmark trained side by side on one stream of samples, each sample drawn once.

    .venv-saelens/bin/python benchmarks/synthsaebench_shared.py --device cuda --budget-s 840 --out benchmarks
    .venv-saelens/bin/python benchmarks/synthsaebench_shared.py --device cuda --estimate-only --out OUT

What ``benchmarks/synthsaebench.py`` does with one sampling pass per run, this does with one in all:

* the samples come from SAELens's sampler in chunks of ``--chunk`` (on a GPU one call's cost is mostly fixed: 625
  kernels and 41 host syncs per call, whatever the batch), sliced into training batches;
* every SAE is a lane (``aen_mini.train.lanes``) stepped on each batch: the fixed-k methods' full runs from the
  first batch on; each penalised method's calibration probes (``aen_mini.eval.probes``: short runs of the same
  schedule shape, secant on log L0, a drift probe, the l1 moved by the drift) and, once its l1 is known, its full run.
  A lane starts on whatever batch comes next: every batch is a fresh i.i.d. draw, so no lane needs the first ones;
* the fused step (``TrainConfig(fast=True)``: bf16, compiled, one CUDA graph per lane on CUDA; fp32 eager on CPU).

Before training it measures what things cost here (sampling per batch in chunks and one at a time, one step of each
method, a lane's compile and capture) and prints the predicted wall time of the worst case (every calibration
taking all its probes); ``--estimate-only`` writes that to ``OUT/synthsaebench_cost.json`` and stops.
``--budget-s`` here is a wall-clock limit on this call (a call continuing from ``--state`` counts only its own time):
when it is reached, no further batch is drawn; with ``--state`` everything is saved there for the next call,
otherwise the full runs in progress are scored as they stand and flagged (``stopped_at_step``), calibrations not
finished are listed with their probes, and everything is written (``synthsaebench.json`` / ``.md`` under ``--out``, as the other
command writes them; a folder holding results is not replaced unless ``--overwrite``).
``--probes-from`` hands each calibration the probes a stopped run finished (its ``synthsaebench_progress.json``), so
that a new run goes on from there instead of running them again.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthsaebench as bench  # noqa: E402 (puts the repo root on the path too)
from synthsaebench_cost import measure_costs, predict, print_estimate  # noqa: E402
from synthsaebench_lanes import SideBySide  # noqa: E402
from aen_mini.eval.probes import MAX_PROBES, PROBE_FRACTION, actual_drift  # noqa: E402
from aen_mini.experiments import recipes  # noqa: E402
from aen_mini.io.atomic import atomic_write_text  # noqa: E402



def calibration_record(result: dict[str, Any] | None, l0: float | None, args: Any, size: bench.Size) -> dict[str, Any]:
    """The record's calibration fields, as synthsaebench.py writes them, plus the probes' own."""
    if result is None:  # a fixed-k method
        return {"l1_coeff": None, "calibration_l0": l0, "calibration_converged": True, "calibration_trials": [],
                "calibration_stopped": None}
    converged = l0 is not None and abs(l0 / size.target_l0 - 1) <= args.rel_tol
    return {"l1_coeff": result["l1"], "calibration_l0": l0, "calibration_converged": bool(converged),
            "calibration_trials": [{"l1_coeff": t["l1"], **{k: v for k, v in t.items() if k != "l1"}}
                                   for t in result["trials"]],
            "calibration_stopped": None, "calibration_how": result["how"], "slope": result["slope"],
            "probe_steps": result["probe_steps"], "drift_per_doubling": result["drift_per_doubling"],
            "predicted_drift": result["predicted_drift"],
            "actual_drift": actual_drift(result, l0) if l0 is not None else None}


def run(args: Any) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(args.out)
    if not args.estimate_only and (out / "synthsaebench.json").exists() and not args.overwrite:
        raise SystemExit(f"{out / 'synthsaebench.json'} exists; pass --overwrite to replace it, or another --out")
    if args.orthogonalization_steps is not None and not args.estimate_only:
        raise SystemExit("--orthogonalization-steps changes the benchmark's model: only with --estimate-only")
    if args.device.startswith("cuda"):  # one compiled loss per lane: more than dynamo's default of 8
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    sl = bench.saelens_synthetic.load()
    size = bench.SIZES[args.size]
    if args.orthogonalization_steps is not None:
        size = replace(size, orthogonalization_steps=args.orthogonalization_steps)
    model = sl.SyntheticModel(bench.model_config(sl, size), device=args.device)
    build_s = time.perf_counter() - t_start
    methods = list(args.methods)
    saved = Path(f"{args.state}.estimate.json") if args.state else None
    if saved is not None and saved.is_file() and not args.estimate_only:  # a continuing call: measured by the first
        estimate = json.loads(saved.read_text())
        print(f"cost estimate of the first call ({saved}):", flush=True)
        print_estimate(estimate["costs"], estimate["prediction"], args)
    else:
        costs = measure_costs(model, size, methods, args)
        prediction = predict(costs, methods, args)
        print_estimate(costs, prediction, args)
        estimate = {"costs": costs, "prediction": prediction, "model_build_s": build_s, "steps": args.steps,
                    "batch_size": args.batch_size, "chunk": args.chunk, "methods": methods,
                    "size": args.size, "orthogonalization_steps": size.orthogonalization_steps,
                    "environment": {"device": bench._device_name(args.device), "torch": torch.__version__,
                                    "sae_lens": sl.version, "commit": args.commit, "command": " ".join(sys.argv)}}
    # training stops early enough to leave the predicted scoring time inside the budget
    args.train_until_s = args.budget_s - estimate["prediction"]["worst"]["eval_s"]
    if args.estimate_only:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "synthsaebench_cost.json", json.dumps(estimate, indent=1) + "\n")
        return estimate
    if saved is not None and not saved.is_file():
        saved.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(estimate, indent=1) + "\n")
    return train_and_score(sl, model, size, methods, estimate, args, t_start)


def train_and_score(sl: Any, model: Any, size: bench.Size, methods: list[str], estimate: dict[str, Any], args: Any,
                    t_start: float) -> dict[str, Any]:
    x_cal = bench.draw(model, args.calib_samples, seed=args.seed + 20_000).to(args.device)
    calibrated = [m for m in methods if recipes.method(bench.METHODS[m]).calibrated]
    starts = l1_starts(calibrated, x_cal, size, args)
    report = bench_report(model, size, methods, estimate, args)
    side = SideBySide(model, size, methods, x_cal, starts, args, earlier_probes(args.probes_from, calibrated))
    state = Path(args.state) if args.state else None
    if state is not None and state.is_file():
        side.restore(state)
        print(f"continuing from {state}: batch {side.stream.batches:,}, {len(side.runs)} lanes running", flush=True)
    else:
        side.start()
    stopped = side.run(t_start, args.train_until_s if args.budget_s else 0.0, args.stop_at_batch)
    elapsed = time.perf_counter() - t_start
    if stopped and state is not None:  # a later call goes on from here: nothing is scored yet
        side.save(state, elapsed)
        progress = {"stopped": stopped, "state": str(state), "wall_s_all_calls": side.elapsed_before_s + elapsed,
                    "stream_batches": side.stream.batches, "lanes": {r.method: [r.probe, r.lane.done, r.lane.cfg.steps]
                                                                     for r in side.runs},
                    "probes": {m: side.probes(m) for m in starts}, "estimate": estimate}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out) / "synthsaebench_progress.json", json.dumps(progress, indent=1) + "\n")
        print(f"stopped at batch {side.stream.batches:,} after {elapsed:.0f} s; saved to {state}", flush=True)
        return progress
    stream = side.stream
    Path(args.out).mkdir(parents=True, exist_ok=True)  # this run's measured costs: the report's cost section reads them
    atomic_write_text(Path(args.out) / "synthsaebench_cost.json", json.dumps(estimate, indent=1) + "\n")
    report["timing"].update(sampling_s=stream.sample_s, stream_batches=stream.batches, training_wall_s=elapsed,
                            wall_s_earlier_calls=side.elapsed_before_s)
    if stopped:  # the full runs in progress are scored as they stand
        side.finished.update({r.method: r for r in side.runs if not r.probe})
        report["stopped"] = {**stopped, "budget_s": args.budget_s, "stop_at_batch": args.stop_at_batch,
                             "pending_probes": side.pending_probes()}
    for method in methods:
        run_ = side.finished.get(method)
        if run_ is None:  # stopped while calibrating
            probes = side.probes(method)
            report["skipped"] = report.get("skipped", []) + [
                f"{method} (calibration unfinished at the budget after {len(probes)} probes)"]
            report.setdefault("unfinished_calibrations", {})[method] = {"probes": probes,
                                                                        "in_progress": side.pending_probes().get(method)}
            continue
        sae, lane = run_.lane.sae.eval(), run_.lane
        l0 = bench.held_out_l0(sae, x_cal)
        result = bench.score(sl, model, sae, args)
        calibration = calibration_record(side.results.get(method), l0, args, size)
        record = {"method": method, "label": bench.LABELS[method], "variant": recipes.method(bench.METHODS[method]).variant,
                  **calibration, "l2_coeff": getattr(sae, "l2_coeff", 0.0), "steps": lane.done,
                  "planned_steps": args.steps, "stopped_at_step": None if lane.finished else lane.done,
                  "started_at_batch": run_.started_at, "batch_size": args.batch_size,
                  "training_samples": lane.done * args.batch_size, "l0": result["sae_l0"], "mcc": result["mcc"],
                  "f1": result["classification"]["f1_score"], "dead_pct": result["dead_pct"],
                  "dead_latents": result["dead_latents"], "ev": result["explained_variance"],
                  "uniqueness": result["uniqueness"], "saelens_eval": result, "train_s": lane.train_s,
                  "history": [{k: round(h[k], 4) for k in ("step", "mse", "l0", "dead_pct") if k in h}
                              for h in lane.history]}
        report["records"].append(record)
        print(f"{method}: L0 {record['l0']:.2f} MCC {record['mcc']:.4f} F1 {record['f1']:.4f} dead "
              f"{record['dead_pct']:.2f}%{' (stopped at step %d)' % lane.done if not lane.finished else ''}", flush=True)
        bench.write(report, Path(args.out))
    report["timing"]["total_s"] = time.perf_counter() - t_start
    bench.write(report, Path(args.out))
    return report


def l1_starts(calibrated: list[str], x_cal: torch.Tensor, size: bench.Size, args: Any) -> dict[str, float]:
    """Each penalised method's first probe: its l1 in ``--l1-from`` (an earlier synthsaebench.json), else the scale
    of the data over the square root of the target L0 (synthsaebench.py's start)."""
    earlier = {}
    if args.l1_from and Path(args.l1_from).is_file():
        earlier = {r["method"]: r["l1_coeff"] for r in json.loads(Path(args.l1_from).read_text())["records"]
                   if r.get("l1_coeff")}
    default = 0.5 * float(x_cal.norm(dim=1).mean()) / math.sqrt(size.target_l0)
    return {m: earlier.get(m, default) for m in calibrated}


def earlier_probes(path: str | None, calibrated: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The probes a stopped run finished (its synthsaebench_progress.json), to start each calibration where that run
    had got to; a run continuing from ``--state`` has them in its state already."""
    if not path:
        return {}
    if not Path(path).is_file():
        raise SystemExit(f"--probes-from {path}: no such file")
    probes = json.loads(Path(path).read_text()).get("probes")
    if not isinstance(probes, dict):
        raise SystemExit(f"--probes-from {path}: no 'probes' in it (a synthsaebench_progress.json has them)")
    return {m: trials for m, trials in probes.items() if m in calibrated}


def bench_report(model: Any, size: bench.Size, methods: list[str], estimate: dict[str, Any], args: Any) -> dict[str, Any]:
    """synthsaebench.py's report header for a run of this command (same fields; the protocol says what differs)."""
    from synthsaebench_report import PUBLISHED_L0_25, PUBLISHED_PROTOCOL

    true_l0 = float(((model.activation_generator.sample(4096) > 0).float().sum(-1)).mean())
    vectors = model.feature_dict.feature_vectors.detach()
    cuda = args.device.startswith("cuda")
    return {
        "benchmark": "SynthSAEBench-16k" if args.size == "16k" else f"SynthSAEBench config at size {args.size!r}",
        "model_source": "built from the published configuration (seed 42) with SAELens's SyntheticModel on "
                        f"{args.device}; the Hugging Face copy (decoderesearch/synth-sae-bench-16k-v2) was not downloaded",
        "model_config": model.cfg.to_dict(), "model_true_l0": true_l0, "size": size.__dict__, "target_l0": size.target_l0,
        "model_fingerprint": {"feature_vectors_sum": float(vectors.double().sum()),
                              "feature_vectors_00": float(vectors[0, 0]),
                              "bias_norm": float(model.feature_dict.bias.detach().norm())},
        "protocol": {"training_samples": args.steps * args.batch_size, "steps": args.steps, "batch_size": args.batch_size,
                     "lr": args.lr, "optimizer": "Adam (0.9, 0.999), constant lr, grad-norm clip 1.0, fused step "
                     + ("(bf16, compiled, CUDA graph per SAE)" if cuda else "(fp32, CPU)"),
                     "init": "aen_mini default: W_enc = W_dec^T (unit random atoms), b_dec = first-batch mean",
                     "precision": "bf16 autocast" if cuda else "fp32",
                     "samples": f"one stream drawn in chunks of {args.chunk:,} on a seeded RNG stream, shared by every "
                                "SAE (each trained on the batches from its start on, each batch seen once)",
                     "calibration_by": "short probes side by side",
                     "calibration": f"probes of 1/{PROBE_FRACTION} of the steps, secant on log L0 (at most "
                                    f"{MAX_PROBES}), a drift probe at twice that length, the held-out L0 of "
                                    f"{args.calib_samples} samples; full run judged, rel_tol {args.rel_tol}",
                     "eval_samples": args.eval_samples, "seed": args.seed, "topk_k": size.target_l0, "aux_coeff": 1 / 32,
                     "l2_ratio": {m: recipes.method(bench.METHODS[m]).l2_ratio for m in methods}},
        "published_l0_25": PUBLISHED_L0_25, "published_protocol": PUBLISHED_PROTOCOL,
        "timing": {"model_build_s": estimate["model_build_s"], "cost_estimate": estimate["prediction"],
                   "costs": estimate["costs"]},
        "environment": {**estimate["environment"], "python": bench.platform.python_version()},
        "records": [],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = bench.build_parser("benchmarks/synthsaebench_shared.py", __doc__.split("\n\n")[0])
    parser._option_string_actions["--budget-s"].help = (
        "if > 0: wall seconds of this call (not of earlier calls of a --state run); training stops in time to "
        "save its state (--state) or to score what it has (flagged)")
    parser.add_argument("--chunk", type=int, default=0,
                        help="samples drawn per sampler call (default: 64 batches on CUDA, one batch on CPU)")
    parser.add_argument("--estimate-only", action="store_true", help="measure, print and write the cost estimate; stop")
    parser.add_argument("--orthogonalization-steps", type=int, default=None,
                        help="with --estimate-only: build the model with fewer orthogonalisation steps (sampling and "
                             "steps cost the same; the 16k model's 100 steps take ~100 min on one CPU core)")
    parser.add_argument("--l1-from", default=None, help="an earlier synthsaebench.json whose l1 start the probes")
    parser.add_argument("--probes-from", default=None,
                        help="a synthsaebench_progress.json of an earlier run stopped with the same settings and "
                             "--l1-from: its finished probes are not run again")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--stop-at-batch", type=int, default=0,
                        help="if > 0: stop as --budget-s does once the stream has reached this many batches")
    parser.add_argument("--state", default=None,
                        help="a file: where a run stopped by --budget-s saves everything (nothing is scored), and "
                             "where the next call with the same settings goes on from (a device call lasts <= 10 min)")
    args = parser.parse_args(argv)
    unused = [flag for flag, given in (("--stream", args.stream), ("--render", args.render),
                                       ("--deadline-s", args.deadline_s)) if given]
    if unused:
        parser.error(f"{', '.join(unused)}: not used by this command (see benchmarks/synthsaebench.py)")
    args.chunk = args.chunk or (64 * args.batch_size if args.device.startswith("cuda") else args.batch_size)
    return run(args)


if __name__ == "__main__":
    main()
