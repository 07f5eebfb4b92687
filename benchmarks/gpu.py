"""GPU benchmark of SAE training (issue 5): matmul roofline, SAE step speed (fast path vs plain eager fp32),
fast-vs-fp32 numerics, activation harvesting, and the paper's Pythia-70M run end to end. All figures from one run.

    PYTHONPATH=. python3 benchmarks/gpu.py                    # everything (fits in ~8 minutes on one H100)
    PYTHONPATH=. python3 benchmarks/gpu.py --quick            # fewer steps, e2e on 20.48M tokens (extrapolated)
    PYTHONPATH=. python3 benchmarks/gpu.py --sections roofline,step --out /tmp/bench
    PYTHONPATH=. python3 benchmarks/gpu.py --smoke            # tiny sizes on the CPU: checks the code paths only

Writes ``gpu.json`` (every number) and ``gpu.md`` (tables) to ``--out`` after each section, so a run cut short
still leaves what it measured. Sections that cannot run (no transformer-lens, out of memory, out of time) are
recorded as ``skipped: reason``. Method and predictions: benchmarks/gpu_notes.md.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from aen_mini.experiments.report import provenance
from aen_mini.run.planning import flop_per_token
from aen_mini.sae import make_sae
from aen_mini.train.fast import FastStep
from aen_mini.train.step import Step
from gpu_common import (PAPER_TOKENS, STEP_VARIANTS, Timer, error_text, is_oom, peak_memory_gb, reset_compiler,
                        reset_memory)
from gpu_data import section_e2e, section_harvest, section_numerics
from gpu_report import _row_line, markdown, summary_table

SECTIONS = ("env", "roofline", "step", "profile", "numerics", "e2e", "harvest", "ablation")
STEP_IMPLS = ("fast", "fast_autotune", "eager_fp32")
AUTOTUNE_MODE = "max-autotune-no-cudagraphs"
SHAPES = ((512, 4096), (512, 16384), (4096, 131072))
# --- sections ----------------------------------------------------------------------------------------------
def section_env(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    info = provenance(sys.argv, device, packages=("transformers", "triton", "transformer_lens"))
    info["cuda"] = torch.version.cuda
    if device.type == "cuda":  # provenance names the GPU; its memory, SM count and cuDNN are this benchmark's own
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gb=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
    return info


def section_roofline(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Dense matmul throughput: 8192^3 random bf16 (and fp32 without TF32, the plain path's matmuls)."""
    n = 8192 if not args.smoke else 256
    out: dict[str, Any] = {"n": n}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(5):
            a @ b
        timer = Timer(device)
        times = [timer.time(lambda: a @ b, 1) for _ in range(30 if name == "bf16" else 8)]
        out[f"{name}_tflops"] = 2 * n**3 / statistics.median(times) / 1e12
        out[f"{name}_median_ms"] = statistics.median(times) * 1e3
        del a, b
    return out


def random_batch(batch: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Gaussian rows rescaled to norm sqrt(d), as the harvester's normaliser leaves them."""
    x = torch.randn(batch, d, device=device, generator=torch.Generator(device).manual_seed(seed))
    return x * (math.sqrt(d) / x.norm(dim=-1, keepdim=True))


def time_step(impl: str, variant: str, d: int, m: int, batch: int, device: torch.device, steps: int,
              warmup: int) -> dict[str, Any]:
    """Tokens/s of one implementation of the training step ("eager_fp32", "eager_bf16", "fast", "fast_autotune"
    (inductor's max-autotune), "fast_nocompile", "fast_nograph")."""
    reset_memory(device)
    reset_compiler()
    sae = make_sae(variant, d, m, **STEP_VARIANTS[variant]).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    xs = [random_batch(batch, d, device, seed) for seed in range(2)]
    t_setup = time.perf_counter()
    if impl.startswith("eager"):  # the trainer's plain step (aen_mini.train.step.Step), one process, not compiled
        fast = Step(sae, optimizer, grad_clip=1.0, dtype=torch.bfloat16 if impl == "eager_bf16" else torch.float32)
    else:
        on_cuda = device.type == "cuda"
        fast = FastStep(sae, optimizer, 1.0, compile=on_cuda and impl != "fast_nocompile",
                        cuda_graph=on_cuda and impl != "fast_nograph",
                        compile_mode=AUTOTUNE_MODE if impl == "fast_autotune" and on_cuda else None)
    calls = iter(range(10**9))
    step = lambda: fast(xs[next(calls) % 2], 1e-3)  # noqa: E731
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t_setup
    seconds = Timer(device).time(step, steps)
    tokens_per_s = batch / seconds
    result = {
        "impl": impl, "variant": variant, "d": d, "m": m, "batch": batch, "ms_per_step": seconds * 1e3,
        "tokens_per_s": tokens_per_s, "model_tflops": flop_per_token(d, m, variant) * tokens_per_s / 1e12,
        "executed_tflops": flop_per_token(d, m, variant, fused=fast.fused) * tokens_per_s / 1e12,
        "peak_memory_gb": peak_memory_gb(device), "warmup_s_incl_compile": warmup_s, "timed_steps": steps,
        "describe": fast.describe(),
    }
    del sae, optimizer, xs, fast
    return result


def section_step(args: argparse.Namespace, device: torch.device, results: dict[str, Any], save: Callable[[], None],
                 deadline: float) -> dict[str, Any]:
    shapes = args.shapes
    rows: list[dict[str, Any]] = []
    out = {"batch": args.batch, "rows": rows}
    roof = results.get("roofline", {}).get("bf16_tflops")
    for d, m in shapes:
        big = d * m >= 2**28
        for variant in args.variants:
            for impl in args.step_impls:
                key = {"impl": impl, "variant": variant, "d": d, "m": m}
                if time.perf_counter() > deadline:
                    rows.append({**key, "skipped": "time budget of this run spent"})
                    continue
                steps = (3 if big else 20) if impl == "eager_fp32" else (10 if big else 200)
                if args.quick:
                    steps = max(2, steps // 2)
                warmup = 2 if impl == "eager_fp32" else 6
                try:
                    row = time_step(impl, variant, d, m, args.batch, device, steps, warmup)
                    if roof:
                        row["fraction_of_roofline"] = row["model_tflops"] / roof
                    rows.append(row)
                except Exception as err:  # one failed configuration must not lose the others
                    rows.append({**key, "skipped": ("out of memory: " if is_oom(err) else "error: ") + error_text(err),
                                 "traceback": traceback.format_exc(limit=6)})
                reset_memory(device)
                print(_row_line(rows[-1]), flush=True)
                save()
    for row in rows:  # speed-up of the fast path over the fp32 baseline, same run
        if row.get("impl", "").startswith("fast") and "tokens_per_s" in row:
            base = [r for r in rows if r.get("impl") == "eager_fp32" and r["variant"] == row["variant"]
                    and r["d"] == row["d"] and r["m"] == row["m"] and "tokens_per_s" in r]
            if base:
                row["speedup_vs_eager_fp32"] = row["tokens_per_s"] / base[0]["tokens_per_s"]
    return out


KERNEL_KINDS = (  # how a CUDA kernel's name says what it is (first match wins)
    ("matmul", ("gemm", "cutlass", "nvjet", "xmma", "gemv", "sm90_", "triton_tem")),
    ("topk/sort/scatter", ("topk", "radix", "sort", "scatter", "gather", "bitonic")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("elementwise/reduction (inductor)", ("triton_",)),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def section_profile(args: argparse.Namespace, device: torch.device, results: dict[str, Any], save: Callable[[], None],
                    deadline: float) -> dict[str, Any]:
    """torch.profiler over a few fast steps (compiled, without the CUDA graph so every kernel is visible; the
    graph replays the same kernels): GPU time per kernel, grouped into matmul / elementwise / other."""
    from torch.profiler import ProfilerActivity, profile

    variant, (d, m) = args.profile_variant, args.profile_shape
    reset_memory(device)
    reset_compiler()
    sae = make_sae(variant, d, m, **STEP_VARIANTS[variant]).to(device)
    fast = FastStep(sae, torch.optim.Adam(sae.parameters(), lr=1e-3), 1.0, cuda_graph=False)
    x = random_batch(args.batch, d, device)
    for _ in range(6):
        fast(x, 1e-3)
    steps = 10
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fast(x, 1e-3)
        if device.type == "cuda":
            torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(ev.name, []).append(ev.device_time / 1e3)  # ms
    rows = sorted(({"kernel": k, "kind": kernel_kind(k), "calls_per_step": len(v) / steps, "ms_per_step": sum(v) / steps}
                   for k, v in kernels.items()), key=lambda r: -r["ms_per_step"])
    by_kind: dict[str, float] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0.0) + r["ms_per_step"]
    out = {"variant": variant, "d": d, "m": m, "batch": args.batch, "steps": steps, "describe": fast.describe(),
           "kernels_per_step": sum(r["calls_per_step"] for r in rows), "gpu_ms_per_step": sum(by_kind.values()),
           "ms_by_kind": by_kind, "top_kernels": rows[:40]}
    lines = [f"{variant} d={d} m={m} batch={args.batch}, {fast.describe()}, {steps} steps profiled",
             f"kernels per step: {out['kernels_per_step']:.0f}, summed GPU kernel time per step: {out['gpu_ms_per_step']:.3f} ms",
             *(f"  {kind:34s} {ms:8.3f} ms" for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])), "",
             f"{'ms/step':>8s} {'calls':>5s}  kind / kernel"]
    lines += [f"{r['ms_per_step']:8.4f} {r['calls_per_step']:5.1f}  [{r['kind']}] {r['kernel'][:150]}" for r in rows]
    (Path(args.out) / "profile.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(by_kind)]), flush=True)
    del sae, fast, x
    return out


def section_ablation(args: argparse.Namespace, device: torch.device, results: dict[str, Any], save: Callable[[], None],
                     deadline: float) -> dict[str, Any]:
    """Which optimisation buys what, at one shape: AEN d=512 m=16384 (the issue's 0.34M / 0.77M tokens/s)."""
    d, m = args.ablation_shape
    rows = []
    for impl in ("eager_fp32", "eager_bf16", "fast_nocompile", "fast_nograph", "fast"):
        if time.perf_counter() > deadline:
            rows.append({"impl": impl, "skipped": "time budget of this run spent"})
            continue
        try:
            rows.append(time_step(impl, "aen", d, m, args.batch, device, 10 if impl.startswith("eager") else 50, 6))
        except Exception as err:
            rows.append({"impl": impl, "skipped": "error: " + error_text(err), "traceback": traceback.format_exc(limit=6)})
        print(_row_line({"variant": "aen", "d": d, "m": m, **rows[-1]}), flush=True)
        save()
    return {"d": d, "m": m, "rows": rows}


# --- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="fewer timed steps; e2e on 20.48M tokens (extrapolated)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: exercises every code path, times nothing useful")
    p.add_argument("--out", default="benchmarks", help="folder for gpu.json and gpu.md")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--shapes", default=None, help="d x m list for the step section, e.g. 512x4096,4096x131072")
    p.add_argument("--step-impls", default="fast,eager_fp32", help=f"comma-separated subset of {','.join(STEP_IMPLS)}")
    p.add_argument("--variants", default=",".join(STEP_VARIANTS), help="step section: comma-separated SAE variants")
    p.add_argument("--ablation-shape", default="512x16384")
    p.add_argument("--profile-shape", default="512x4096", help="profile section: d x m of the profiled fast step")
    p.add_argument("--profile-variant", default="aen")
    p.add_argument("--e2e-tokens", type=int, default=None, help=f"tokens for the e2e run (default {PAPER_TOKENS:,}; "
                   "fewer: the .md extrapolates to the paper's count)")
    p.add_argument("--numerics-steps", type=int, default=None)
    p.add_argument("--time-budget-s", type=float, default=510.0,
                   help="sections and configurations not started by then are skipped (the json/md still get written)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    parse_shape = lambda s: tuple(int(v) for v in s.lower().split("x"))  # noqa: E731
    if args.smoke:
        args.batch = 256
        args.shapes = args.shapes or "16x64,32x128"
        args.ablation_shape = "16x64"
        args.e2e_tokens = args.e2e_tokens or 256 * 12
        args.numerics_steps = args.numerics_steps or 30
    args.shapes = [parse_shape(s) for s in args.shapes.split(",")] if args.shapes else list(SHAPES)
    args.ablation_shape = parse_shape(args.ablation_shape)
    args.profile_shape = parse_shape(args.profile_shape) if not args.smoke else (16, 64)
    args.step_impls = [s.strip() for s in args.step_impls.split(",") if s.strip()]
    args.variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    if sorted(set(args.variants) - set(STEP_VARIANTS)):
        p.error(f"unknown variants {args.variants}; choose from {list(STEP_VARIANTS)}")
    if sorted(set(args.step_impls) - set(STEP_IMPLS)):
        p.error(f"unknown step implementations {args.step_impls}; choose from {list(STEP_IMPLS)}")
    args.e2e_tokens = args.e2e_tokens or (20_480_000 if args.quick else PAPER_TOKENS)
    args.numerics_steps = args.numerics_steps or (400 if args.quick else 1000)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.time_budget_s
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA device: run on the GPU machine, or pass --smoke to check the code paths on the CPU")
    if args.smoke:
        torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "smoke": args.smoke}

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - start
        (out_dir / "gpu.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / "gpu.md").write_text(markdown(results))

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "env": lambda: section_env(args, device),
        "roofline": lambda: section_roofline(args, device),
        "step": lambda: section_step(args, device, results, save, deadline),
        "numerics": lambda: section_numerics(args, device, results, save, deadline),
        "e2e": lambda: section_e2e(args, device, results, save, deadline),
        "harvest": lambda: section_harvest(args, device, results, save, deadline),
        "ablation": lambda: section_ablation(args, device, results, save, deadline),
        "profile": lambda: section_profile(args, device, results, save, deadline),
    }
    for name in SECTIONS:  # fixed order: what matters most runs first
        if name not in args.sections:
            continue
        if time.perf_counter() > deadline:
            results[name] = {"skipped": "time budget of this run spent"}
            continue
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            results[name] = runners[name]()
        except Exception as err:
            results[name] = {"skipped": ("out of memory: " if is_oom(err) else "error: ") + error_text(err),
                             "traceback": traceback.format_exc(limit=8)}
            print(results[name]["traceback"], flush=True)
        results[name]["section_s"] = time.perf_counter() - t0
        reset_memory(device)
        save()
    print("\n" + summary_table(results), flush=True)
    print(f"\nwrote {out_dir / 'gpu.json'} and {out_dir / 'gpu.md'} ({time.perf_counter() - start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
