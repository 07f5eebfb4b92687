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
``--budget-s`` here is a wall-clock limit on the whole run: when it is reached, no further batch is drawn; the full
runs in progress are scored as they stand and flagged (``stopped_at_step``), calibrations not finished are listed
with their probes, and everything is written (``synthsaebench.json`` / ``.md`` under ``--out``, as the other
command writes them; a folder holding results is not replaced unless ``--overwrite``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthsaebench as bench  # noqa: E402 (puts the repo root on the path too)
from aen_mini.eval.probes import (MAX_PROBES, PROBE_FRACTION, actual_drift, probe_calibration,  # noqa: E402
                                  worst_case_probe_steps)
from aen_mini.experiments import recipes  # noqa: E402
from aen_mini.io.atomic import atomic_write_text  # noqa: E402
from aen_mini.train.config import TrainConfig  # noqa: E402
from aen_mini.train.lanes import Lane  # noqa: E402
from aen_mini.train.step import WARMUP_STEPS  # noqa: E402

SLOPE = -1.5  # d log L0 / d log l1 until two probes measure it (the LLM study's starting guess)
TIMED_STEPS = {"cuda": 50, "cpu": 3}  # steps timed per method for the estimate, after compile and capture


class ChunkedStream:
    """Training batches sliced from chunks of ``chunk`` samples drawn from SAELens's sampler on a seeded RNG stream
    of their own (``synthsaebench.SyntheticStream``): the same samples for every run with the same seed and chunk."""

    def __init__(self, model: Any, seed: int, chunk: int, batch_size: int) -> None:
        if chunk % batch_size:
            raise ValueError(f"--chunk ({chunk}) must be a multiple of --batch-size ({batch_size})")
        self.source, self.chunk, self.batch_size = bench.SyntheticStream(model, seed), chunk, batch_size
        self._buffer, self._at, self.sample_s, self.batches = None, chunk, 0.0, 0

    def next_batch(self) -> torch.Tensor:
        if self._at >= self.chunk:
            t0 = time.perf_counter()
            self._buffer, self._at = self.source.next_batch(self.chunk), 0
            bench._sync(str(self._buffer.device))
            self.sample_s += time.perf_counter() - t0
        x = self._buffer[self._at:self._at + self.batch_size]
        self._at += self.batch_size
        self.batches += 1
        return x


@dataclass
class Run:
    """A lane and what it is for: a calibration probe (``l1`` set, ends early) or a method's full run."""

    method: str
    probe: bool
    lane: Lane
    l1: float | None
    started_at: int  # the stream's batch count when it started


def make_lane(method: str, size: bench.Size, l1: float | None, steps: int, args: Any) -> Lane:
    sae = bench.build_sae(method, size, l1 if l1 is not None else 0.0, steps, args.batch_size, args.seed)
    cuda = args.device.startswith("cuda")
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      precision="bf16" if cuda else "fp32", fast=True, log_every=max(1, steps // 10), progress=False)
    return Lane(sae, cfg)


def measure_costs(model: Any, size: bench.Size, methods: list[str], args: Any) -> dict[str, Any]:
    """Seconds per batch sampled one at a time, at the evaluation's batch and in chunks; per step of each method
    (after its compile and capture, synchronised); and a lane's start-up (compile, capture) on this device."""
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    sample: dict[str, float] = {}
    model.sample(args.batch_size)  # first-call costs (allocator, kernels) out of the timing
    for n in sorted({args.batch_size, min(args.eval_samples, 8192), args.chunk}):
        bench._sync(args.device)
        t0 = time.perf_counter()
        pool = model.sample(n)
        bench._sync(args.device)
        sample[str(n)] = (time.perf_counter() - t0) / (n / args.batch_size)  # seconds per batch of batch_size
    pool = model.sample(4 * args.batch_size).to(args.device)
    steps: dict[str, float] = {}
    startup: dict[str, float] = {}
    timed = TIMED_STEPS[kind]
    for method in methods:
        lane = make_lane(method, size, 1.0, WARMUP_STEPS + 2 + timed, args)
        t0 = time.perf_counter()
        for i in range(WARMUP_STEPS + 2):  # eager warm-up, capture, one replay
            lane.step(pool[(i % 4) * args.batch_size:(i % 4 + 1) * args.batch_size])
        bench._sync(args.device)
        startup[method] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(timed):
            lane.step(pool[(i % 4) * args.batch_size:(i % 4 + 1) * args.batch_size])
        bench._sync(args.device)
        steps[method] = (time.perf_counter() - t0) / timed
    return {"sample_s_per_batch": sample, "step_s": steps, "lane_startup_s": startup, "timed_steps": timed}


def predict(costs: dict[str, Any], methods: list[str], args: Any) -> dict[str, Any]:
    """Wall seconds of the whole run from measured costs: the worst case (every calibration takes its
    ``MAX_PROBES`` probes and the drift probe) and the best (one probe and the drift probe)."""
    n, calibrated = args.steps, [m for m in methods if recipes.method(bench.METHODS[m]).calibrated]
    per_batch = costs["sample_s_per_batch"][str(args.chunk)]
    eval_s = args.eval_samples / args.batch_size * costs["sample_s_per_batch"][str(min(args.eval_samples, 8192))]
    out = {}
    for case, probe_steps in (("worst", worst_case_probe_steps(n)), ("best", 3 * max(1, n // PROBE_FRACTION))):
        stream = n + (probe_steps if calibrated else 0)
        train = sum(costs["step_s"][m] * (n + (probe_steps if m in calibrated else 0)) for m in methods)
        lanes = len(methods) + len(calibrated) * (MAX_PROBES + 1 if case == "worst" else 2)
        startup = lanes * max(costs["lane_startup_s"].values())
        out[case] = {"stream_batches": stream, "sampling_s": stream * per_batch, "training_s": train,
                     "startup_s": startup, "eval_s": len(methods) * eval_s,
                     "total_s": stream * per_batch + train + startup + len(methods) * eval_s}
    out["one_pass_per_run_s"] = {  # the other command's way: a sampling pass per run, batches drawn one at a time
        "per_batch_sampling_s": costs["sample_s_per_batch"][str(args.batch_size)],
        "runs_worst": len(methods) - len(calibrated) + len(calibrated) * (MAX_PROBES + 2)}
    return out


def print_estimate(costs: dict[str, Any], prediction: dict[str, Any], args: Any) -> None:
    s = costs["sample_s_per_batch"]
    print("cost estimate on this device: sampling " + ", ".join(
        f"{v * 1e3:.2f} ms per batch of {args.batch_size} drawn {int(k):,} at a time" for k, v in s.items())
        + "; one step: " + ", ".join(f"{m} {v * 1e3:.2f} ms" for m, v in costs["step_s"].items()), flush=True)
    for case in ("worst", "best"):
        p = prediction[case]
        print(f"  {case} case: {p['stream_batches']:,} batches sampled {p['sampling_s']:.0f} s + training "
              f"{p['training_s']:.0f} s + lane start-up {p['startup_s']:.0f} s + evaluation {p['eval_s']:.0f} s "
              f"= {p['total_s']:.0f} s ({p['total_s'] / 60:.1f} min)", flush=True)


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


def train_side_by_side(model: Any, size: bench.Size, methods: list[str], x_cal: torch.Tensor, starts: dict[str, float],
                       args: Any, t_start: float) -> dict[str, Any]:
    """Every lane on one stream until all full runs end or ``--budget-s`` passes; returns the full runs, the
    calibrations' results and probes, and whether (and where) the budget stopped it."""
    n, stream = args.steps, ChunkedStream(model, args.seed, args.chunk, args.batch_size)
    calibrations = {m: probe_calibration(size.target_l0, starts[m], SLOPE, n) for m in starts}
    trials = {m: [] for m in starts}
    results: dict[str, dict[str, Any]] = {}
    runs = [Run(m, False, make_lane(m, size, None, n, args), None, 0) for m in methods if m not in starts]
    for m, calibration in calibrations.items():
        l1, steps = next(calibration)
        runs.append(Run(m, True, make_lane(m, size, l1, steps, args), l1, 0))
    finished: dict[str, Run] = {}
    stopped = None
    while runs:
        if args.budget_s and stream.batches % 16 == 0 and time.perf_counter() - t_start > args.train_until_s:
            stopped = {"at_batch": stream.batches, "after_s": time.perf_counter() - t_start}
            break
        x = stream.next_batch()
        for run in runs:
            run.lane.step(x)
        for run in [r for r in runs if r.lane.finished]:
            runs.remove(run)
            if not run.probe:
                finished[run.method] = run
                continue
            l0 = bench.held_out_l0(run.lane.sae.eval(), x_cal)
            trials[run.method].append({"l1": run.l1, "steps": run.lane.cfg.steps, "l0": l0})
            print(f"[{time.perf_counter() - t_start:6.0f} s] probe {run.method} l1 {run.l1:.4g}, "
                  f"{run.lane.cfg.steps} steps -> L0 {l0:.2f}", flush=True)
            try:
                l1, steps = calibrations[run.method].send({"l0": l0, "train_s": run.lane.train_s,
                                                           "started_at_batch": run.started_at})
                runs.append(Run(run.method, True, make_lane(run.method, size, l1, steps, args), l1, stream.batches))
            except StopIteration as done:
                results[run.method] = done.value
                print(f"  {run.method}: l1 {done.value['l1']:.4g} for the full run ({done.value['how']})", flush=True)
                runs.append(Run(run.method, False, make_lane(run.method, size, done.value["l1"], n, args),
                                done.value["l1"], stream.batches))
    for run in runs:  # stopped by the budget: the full runs in progress are scored as they stand
        if not run.probe:
            finished[run.method] = run
    return {"finished": finished, "results": results, "trials": trials, "stopped": stopped, "stream": stream,
            "pending_probes": {r.method: {"l1": r.l1, "steps_done": r.lane.done, "steps": r.lane.cfg.steps}
                               for r in runs if r.probe}}


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
    costs = measure_costs(model, size, methods, args)
    prediction = predict(costs, methods, args)
    print_estimate(costs, prediction, args)
    # training stops early enough to leave the predicted scoring time inside the budget
    args.train_until_s = args.budget_s - prediction["worst"]["eval_s"]
    estimate = {"costs": costs, "prediction": prediction, "model_build_s": build_s, "steps": args.steps,
                "batch_size": args.batch_size, "chunk": args.chunk, "methods": methods,
                "size": args.size, "orthogonalization_steps": size.orthogonalization_steps,
                "environment": {"device": bench._device_name(args.device), "torch": torch.__version__,
                                "sae_lens": sl.version, "commit": args.commit, "command": " ".join(sys.argv)}}
    if args.estimate_only:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "synthsaebench_cost.json", json.dumps(estimate, indent=1) + "\n")
        return estimate
    return train_and_score(sl, model, size, methods, estimate, args, t_start)


def train_and_score(sl: Any, model: Any, size: bench.Size, methods: list[str], estimate: dict[str, Any], args: Any,
                    t_start: float) -> dict[str, Any]:
    x_cal = bench.draw(model, args.calib_samples, seed=args.seed + 20_000).to(args.device)
    calibrated = [m for m in methods if recipes.method(bench.METHODS[m]).calibrated]
    starts = l1_starts(calibrated, x_cal, size, args)
    report = bench_report(model, size, methods, estimate, args)
    side = train_side_by_side(model, size, methods, x_cal, starts, args, t_start)
    stream = side["stream"]
    report["timing"].update(sampling_s=stream.sample_s, stream_batches=stream.batches,
                            training_wall_s=time.perf_counter() - t_start)
    if side["stopped"]:
        report["stopped"] = {**side["stopped"], "budget_s": args.budget_s, "pending_probes": side["pending_probes"]}
    for method in methods:
        run_ = side["finished"].get(method)
        if run_ is None:  # stopped while calibrating
            probes = side["trials"][method]
            report["skipped"] = report.get("skipped", []) + [
                f"{method} (calibration unfinished at the budget after {len(probes)} probes)"]
            report.setdefault("unfinished_calibrations", {})[method] = {"probes": probes,
                                                                        "in_progress": side["pending_probes"].get(method)}
            continue
        sae, lane = run_.lane.sae.eval(), run_.lane
        l0 = bench.held_out_l0(sae, x_cal)
        result = bench.score(sl, model, sae, args)
        calibration = calibration_record(side["results"].get(method), l0, args, size)
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
        "if > 0: wall seconds for the whole run; training stops in time to score what it has (flagged)")
    parser.add_argument("--chunk", type=int, default=0,
                        help="samples drawn per sampler call (default: 64 batches on CUDA, one batch on CPU)")
    parser.add_argument("--estimate-only", action="store_true", help="measure, print and write the cost estimate; stop")
    parser.add_argument("--orthogonalization-steps", type=int, default=None,
                        help="with --estimate-only: build the model with fewer orthogonalisation steps (sampling and "
                             "steps cost the same; the 16k model's 100 steps take ~100 min on one CPU core)")
    parser.add_argument("--l1-from", default=None, help="an earlier synthsaebench.json whose l1 start the probes")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    args = parser.parse_args(argv)
    unused = [flag for flag, given in (("--stream", args.stream), ("--render", args.render),
                                       ("--deadline-s", args.deadline_s)) if given]
    if unused:
        parser.error(f"{', '.join(unused)}: not used by this command (see benchmarks/synthsaebench.py)")
    args.chunk = args.chunk or (64 * args.batch_size if args.device.startswith("cuda") else args.batch_size)
    return run(args)


if __name__ == "__main__":
    main()
