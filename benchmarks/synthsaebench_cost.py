"""The cost of benchmarks/synthsaebench_shared.py's run, measured on the device before it starts: sampling per batch
one at a time, at the evaluation's batch and in chunks; one fused step of each method after its compile and capture;
what one sampler call launches. From these, the predicted wall time of the whole run, worst and best case.
"""
from __future__ import annotations

import time
from typing import Any

import torch

import synthsaebench as bench
from aen_mini.experiments import recipes
from aen_mini.train.step import WARMUP_STEPS
import synthsaebench_report as report
from synthsaebench_lanes import make_lane

TIMED_STEPS = {"cuda": 50, "cpu": 3}  # steps timed per method for the estimate, after compile and capture


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
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.sample(args.batch_size)  # what one call launches: fixed per call, whatever the batch
    ops = {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}
    sampler_ops = {"aten_ops": sum(ops.values()), "nonzero": ops.get("aten::nonzero", 0),
                   "item": ops.get("aten::_local_scalar_dense", 0)}
    steps: dict[str, float] = {}
    startup: dict[str, float] = {}
    graph: dict[str, str] = {}
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
        graph[method] = lane.step_fn.describe()
    return {"sample_s_per_batch": sample, "step_s": steps, "lane_startup_s": startup, "timed_steps": timed,
            "step_path": graph, "sampler_ops_per_call": sampler_ops}


def predict(costs: dict[str, Any], methods: list[str], args: Any) -> dict[str, Any]:
    """``synthsaebench_report.predict`` for this run's settings."""
    calibrated = [m for m in methods if recipes.method(bench.METHODS[m]).calibrated]
    return report.predict(costs, methods, calibrated, args.steps, args.batch_size, args.chunk, args.eval_samples)


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
