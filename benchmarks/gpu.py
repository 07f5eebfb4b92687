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
import contextlib
import gc
import json
import math
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from aen_mini.data.prefetch import PrefetchSource
from aen_mini.data.source import TensorSource
from aen_mini.data.synthetic import spiked_dictionary
from aen_mini.train.fast import FastStep
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train

SECTIONS = ("env", "roofline", "step", "profile", "numerics", "e2e", "harvest", "ablation")
STEP_IMPLS = ("fast", "fast_autotune", "eager_fp32")
AUTOTUNE_MODE = "max-autotune-no-cudagraphs"
SHAPES = ((512, 4096), (512, 16384), (4096, 131072))
# One set of hyperparameters for every section: torch.compile bakes them into the graph, so the numerics and e2e
# runs at d=512, m=4096 reuse the step section's compiled kernels (inductor's cache). Speed does not depend on them.
STEP_VARIANTS = {"aen": {"l1_coeff": 0.3, "l2_coeff": 0.01}, "relu_l1": {"l1_coeff": 0.3}, "topk": {"k": 32}}
PAPER_TOKENS = 204_800_000
PYTHIA = {"model": "pythia-70m-shaped", "hook": "blocks.3.hook_resid_post", "d_sae": 4096, "batch": 8192}
HARVEST_MODELS = {"pythia-70m-shaped": ("blocks.3.hook_resid_post", 512), "llama-3.1-8b-shaped": ("blocks.16.hook_resid_post", 32)}
CTX_LEN = 128
# Agreement of the fast bf16 path with the fp32 path (numerics section; tests/test_fast.py uses the same).
TOLERANCE = {"dead_pct": 2.0, "l0_rel": 0.05, "ev": 0.01}


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """aen_mini.eval.metrics.explained_variance, restated: that module needs scipy, which the GPU machine lacks."""
    x64 = x.double()
    return 1.0 - ((x64 - x_hat.double()).pow(2).sum() / (x64 - x64.mean(dim=0)).pow(2).sum()).item()


# --- FLOP model --------------------------------------------------------------------------------------------
def model_flops_per_token(variant: str, d: int, m: int) -> int:
    """FLOPs of the plain implementation per token: every matmul is 2 d m per token; dense variants run 6
    (encoder fwd, its input gradient, its weight gradient; decoder fwd, its input gradient, its weight gradient).
    TopK's AuxK adds a decoder matmul on the dead latents and its two gradients: 9."""
    return (18 if variant in ("topk", "batch_topk") else 12) * d * m


def fast_flops_per_token(variant: str, d: int, m: int) -> int:
    """The fast step skips the encoder's input gradient (b_dec's gradient is a matrix-vector product)."""
    return model_flops_per_token(variant, d, m) - 2 * d * m


# --- timing helpers ----------------------------------------------------------------------------------------
class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], Any], repeats: int) -> float:
        """Seconds per call of ``fn`` (mean over ``repeats`` back-to-back calls, CUDA events on a GPU)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    gc.collect()  # a finished configuration's CUDA graph pool is freed with the graph
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def reset_compiler() -> None:
    """Each FastStep compiles fast_loss for its SAE; dynamo caches per code object with a recompile limit (8),
    so a benchmark that builds many SAEs starts every configuration from a clean cache (inductor's on-disk
    cache still makes a repeated shape cheap)."""
    torch._dynamo.reset()


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"


# --- sections ----------------------------------------------------------------------------------------------
def section_env(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "device": str(device), "argv": sys.argv[1:]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
    for module in ("transformers", "triton", "transformer_lens"):
        try:
            info[module] = __import__(module).__version__
        except Exception as err:  # absent on the GPU machine (transformer_lens): say so
            info[module] = f"not available ({type(err).__name__})"
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


def plain_step(sae: Any, optimizer: torch.optim.Optimizer, x: torch.Tensor, lr: float, bf16: bool) -> None:
    """The trainer's plain path (aen_mini/train/loop.py, one process), as the baseline."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        terms = sae.loss(x)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    optimizer.step()
    sae.after_step()


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
    if impl.startswith("eager"):
        bf16 = impl == "eager_bf16"
        calls = iter(range(10**9))
        step = lambda: plain_step(sae, optimizer, xs[next(calls) % 2], 1e-3, bf16)  # noqa: E731
        describe = "plain eager, " + ("bf16 autocast" if bf16 else "fp32") + ", foreach Adam, clip_grad_norm_"
    else:
        on_cuda = device.type == "cuda"
        fast = FastStep(sae, optimizer, 1.0, compile=on_cuda and impl != "fast_nocompile",
                        cuda_graph=on_cuda and impl != "fast_nograph",
                        compile_mode=AUTOTUNE_MODE if impl == "fast_autotune" and on_cuda else None)
        calls = iter(range(10**9))
        step = lambda: fast(xs[next(calls) % 2], 1e-3)  # noqa: E731
        describe = None
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t_setup
    seconds = Timer(device).time(step, steps)
    tokens_per_s = batch / seconds
    result = {
        "impl": impl, "variant": variant, "d": d, "m": m, "batch": batch, "ms_per_step": seconds * 1e3,
        "tokens_per_s": tokens_per_s, "model_tflops": model_flops_per_token(variant, d, m) * tokens_per_s / 1e12,
        "executed_tflops": (model_flops_per_token(variant, d, m) if impl.startswith("eager") else
                            fast_flops_per_token(variant, d, m)) * tokens_per_s / 1e12,
        "peak_memory_gb": peak_memory_gb(device), "warmup_s_incl_compile": warmup_s, "timed_steps": steps,
        "describe": describe if describe is not None else fast.describe(),
    }
    del sae, optimizer, xs
    return result


def section_step(args: argparse.Namespace, device: torch.device, results: dict[str, Any], save: Callable[[], None],
                 deadline: float) -> dict[str, Any]:
    shapes = args.shapes
    rows: list[dict[str, Any]] = []
    out = {"batch": args.batch, "rows": rows}
    roof = results.get("roofline", {}).get("bf16_tflops")
    for d, m in shapes:
        big = d * m >= 2**28
        for variant in STEP_VARIANTS:
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


# --- synthetic data with ground truth, on the device ----------------------------------------------------------
def spiked_tensor(rows: int, d: int, m_true: int, k: int, device: torch.device, seed: int) -> torch.Tensor:
    """x = D c (c k-sparse, entries in [1, 3]), rows rescaled to norm sqrt(d): the structure of
    aen_mini.data.synthetic.SpikedSource, generated on the device in one go."""
    D = spiked_dictionary(d, m_true, 0.3, seed).to(device)
    g = torch.Generator(device).manual_seed(seed)
    parts = []
    for start in range(0, rows, 65536):
        n = min(65536, rows - start)
        support = torch.rand(n, m_true, device=device, generator=g).topk(k, dim=1).indices
        values = 1.0 + 2.0 * torch.rand(n, k, device=device, generator=g)
        codes = torch.zeros(n, m_true, device=device).scatter_(1, support, values)
        x = codes @ D.T
        parts.append(x * (math.sqrt(d) / x.norm(dim=-1, keepdim=True)))
    return torch.cat(parts)


def section_numerics(args: argparse.Namespace, device: torch.device, results: dict[str, Any], save: Callable[[], None],
                     deadline: float) -> dict[str, Any]:
    """Train each variant with the plain fp32 trainer and with the fast bf16 trainer on the same batches; compare
    dead %, L0 and explained variance (held-out rows, fp32 forward). A second fp32 run with another SAE seed shows
    the run-to-run spread the tolerance should be read against."""
    d, m = (512, 4096) if not args.smoke else (16, 32)
    steps = args.numerics_steps
    batch = args.batch
    data = spiked_tensor(2**20 if not args.smoke else 4096, d, 2 * m, 16 if not args.smoke else 3, device, seed=0)
    held_out = spiked_tensor(16384 if not args.smoke else 512, d, 2 * m, 16 if not args.smoke else 3, device, seed=0)
    held_out = held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(5))]
    out: dict[str, Any] = {"d": d, "m": m, "steps": steps, "batch": batch, "tolerance": TOLERANCE, "runs": []}
    for variant, hyper in STEP_VARIANTS.items():
        runs = {}
        for name, precision, fast, sae_seed in (("fp32", "fp32", False, 0), ("fast_bf16", "bf16", True, 0),
                                                ("fp32_seed1", "fp32", False, 1)):
            if time.perf_counter() > deadline:
                runs[name] = {"skipped": "time budget of this run spent"}
                continue
            reset_compiler()
            sae = make_sae(variant, d, m, dead_after_tokens=min(1_000_000, steps * batch // 2), seed=sae_seed, **hyper)
            cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, device=str(device), precision=precision, fast=fast,
                              log_every=steps, progress=False)
            t0 = time.perf_counter()
            try:
                result = train(sae, TensorSource(data, seed=1), cfg)
            except Exception as err:
                runs[name] = {"skipped": "error: " + error_text(err), "traceback": traceback.format_exc(limit=6)}
                continue
            with torch.no_grad():
                x_hat, h = result.sae.float()(held_out)
            runs[name] = {"dead_pct": result.history[-1]["dead_pct"], "l0": (h > 0).float().sum(-1).mean().item(),
                          "ev": explained_variance(held_out, x_hat), "wall_s": time.perf_counter() - t0}
        ref, fast_run = runs.get("fp32", {}), runs.get("fast_bf16", {})
        row: dict[str, Any] = {"variant": variant, "hyperparameters": hyper, **runs}
        if "ev" in ref and "ev" in fast_run:
            diff = {"dead_pct": abs(fast_run["dead_pct"] - ref["dead_pct"]),
                    "l0_rel": abs(fast_run["l0"] - ref["l0"]) / max(ref["l0"], 1e-9),
                    "ev": abs(fast_run["ev"] - ref["ev"])}
            row["difference"] = diff
            row["within_tolerance"] = all(diff[k] <= TOLERANCE[k] for k in TOLERANCE)
        out["runs"].append(row)
        print(f"numerics {variant}: " + json.dumps({k: v for k, v in row.items() if k != "hyperparameters"}, default=str)[:400], flush=True)
        save()
    del data, held_out
    return out


# --- harvesting ----------------------------------------------------------------------------------------------
class HFHookModel:
    """What aen_mini.data.activations needs of a model (check_hook, device, d_model, run_with_hooks), on a bare
    transformers model: used when transformer-lens (the package's TransformerBridge path) is not installed.
    ``blocks.{i}.hook_resid_post`` is the output of decoder layer i, as in TransformerLens."""

    def __init__(self, hf_model: Any) -> None:
        self.hf = hf_model
        self.layers = hf_model.base_model.layers
        self.d_model = int(hf_model.config.hidden_size)
        self.n_layers = len(self.layers)
        self.hook_names = tuple(f"blocks.{i}.hook_resid_post" for i in range(self.n_layers))

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def check_hook(self, hook_name: str) -> int:
        if hook_name not in self.hook_names:
            raise ValueError(f"unknown hook {hook_name!r}; valid hooks: {list(self.hook_names)}")
        return int(re.match(r"blocks\.(\d+)\.", hook_name).group(1))

    def run_with_hooks(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       hooks: Any = ()) -> Any:
        handles = []
        for name, fn in hooks:
            layer = self.layers[self.check_hook(name)]
            handles.append(layer.register_forward_hook(
                lambda module, inputs, output, fn=fn: fn(output[0] if isinstance(output, tuple) else output)))
        try:
            mask = None if attention_mask is None else attention_mask.long()
            with torch.no_grad():
                return self.hf(input_ids=tokens, attention_mask=mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()


def build_model(name: str, device: torch.device, smoke: bool) -> tuple[Any, str]:
    """The random-init stand-in in bf16: through aen_mini.lm.models.load_model (TransformerBridge) when
    transformer-lens is installed, else the same transformers model behind HFHookModel."""
    from aen_mini.lm.models import load_model, shaped_config

    overrides = ({"num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                  **({"num_key_value_heads": 2} if "llama" in name else {})} if smoke else {})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        import transformer_lens  # noqa: F401
        return load_model(name, device=device, dtype=dtype, config_overrides=overrides or None), "aen_mini.lm.models.load_model (TransformerBridge)"
    except ImportError as err:
        reason = f"transformer-lens not installed ({err}); bare transformers model + HFHookModel"
    from transformers import AutoModelForCausalLM

    config = shaped_config(name, **overrides)
    with torch.device(device):
        torch.manual_seed(0)
        try:
            hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # transformers 4.x spells it torch_dtype
            hf = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    return HFHookModel(hf.eval()), reason


def vocab_size(model: Any) -> int:
    return int(model.hf.config.vocab_size if isinstance(model, HFHookModel) else model.bridge.cfg.d_vocab)


def harvest_source(model: Any, hook: str, contexts_per_chunk: int, n_contexts: int, device: torch.device,
                   vocab: int) -> Any:
    """aen_mini.data.activations.LMActivationSource over random token ids (throughput does not depend on them)."""
    from aen_mini.data.activations import LMActivationSource
    from aen_mini.data.text import as_token_batch

    tokens = torch.randint(0, vocab, (n_contexts, CTX_LEN), generator=torch.Generator().manual_seed(0))
    return LMActivationSource(model, as_token_batch(tokens), hook, buffer_rows=4 * contexts_per_chunk * CTX_LEN,
                              contexts_per_chunk=contexts_per_chunk, device=device)


def section_harvest(args: argparse.Namespace, device: torch.device, results: dict[str, Any], save: Callable[[], None],
                    deadline: float) -> dict[str, Any]:
    out: dict[str, Any] = {"ctx_len": CTX_LEN, "batch": args.batch, "models": {}}
    for name, (hook, contexts_per_chunk) in HARVEST_MODELS.items():
        if time.perf_counter() > deadline:
            out["models"][name] = {"skipped": "time budget of this run spent"}
            continue
        reset_memory(device)
        try:
            t0 = time.perf_counter()
            model, path = build_model(name, device, args.smoke)
            if args.smoke:
                hook, contexts_per_chunk = "blocks.1.hook_resid_post", 4
            build_s = time.perf_counter() - t0
            source = harvest_source(model, hook, contexts_per_chunk, contexts_per_chunk * 16, device, vocab_size(model))
            batch = args.batch if not args.smoke else 256
            source.next_batch(batch)  # first fill: cuBLAS/attention kernels, buffer
            n = max(4, (3 if args.quick else 6) * contexts_per_chunk * CTX_LEN // batch)
            seconds = Timer(device).time(lambda: source.next_batch(batch), n)
            out["models"][name] = {"hook": hook, "path": path, "contexts_per_forward": contexts_per_chunk,
                                   "tokens_per_s": batch / seconds, "batches_timed": n, "build_s": build_s,
                                   "peak_memory_gb": peak_memory_gb(device), "d_model": model.d_model}
            del source, model
        except Exception as err:
            out["models"][name] = {"skipped": ("out of memory: " if is_oom(err) else "error: ") + error_text(err),
                                   "traceback": traceback.format_exc(limit=6)}
        print(f"harvest {name}: {json.dumps(out['models'][name], default=str)[:300]}", flush=True)
        save()
    return out


class _OutOfTime(Exception):
    pass


def section_e2e(args: argparse.Namespace, device: torch.device, results: dict[str, Any], save: Callable[[], None],
                deadline: float) -> dict[str, Any]:
    """The paper's Pythia-70M configuration on the Pythia-70M-shaped model: harvest (producer thread, own CUDA
    stream) overlapped with the fast AEN trainer."""
    tokens = args.e2e_tokens
    batch = PYTHIA["batch"] if not args.smoke else 256
    steps = max(1, tokens // batch)
    reset_memory(device)
    t0 = time.perf_counter()
    model, path = build_model(PYTHIA["model"], device, args.smoke)
    hook = PYTHIA["hook"] if not args.smoke else "blocks.1.hook_resid_post"
    contexts_per_chunk = HARVEST_MODELS[PYTHIA["model"]][1] if not args.smoke else 4
    # A corpus of at most 2^24 tokens, cycled: the source reshuffles chunk order every pass.
    n_contexts = max(contexts_per_chunk * 4, min(tokens, 2**24) // CTX_LEN)
    source = PrefetchSource(harvest_source(model, hook, contexts_per_chunk, n_contexts, device, vocab_size(model)), depth=4,
                            device=device)
    build_s = time.perf_counter() - t0
    d_sae = PYTHIA["d_sae"] if not args.smoke else 64
    sae = make_sae("aen", model.d_model, d_sae, **STEP_VARIANTS["aen"])
    log_every = max(1, min(1000, steps // 5))
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, device=str(device), precision="bf16", fast=True,
                      log_every=log_every, progress=False)
    history: list[dict[str, Any]] = []

    def stop_at_deadline(step: int, record: dict[str, Any], _: Any) -> None:
        history.append(dict(record))
        if time.perf_counter() > deadline:
            raise _OutOfTime

    t1 = time.perf_counter()
    stopped_early = False
    try:
        train(sae, source, cfg, callback=stop_at_deadline)
    except _OutOfTime:
        stopped_early = True
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t1
    source.close()
    steps = history[-1]["step"] if history else 0
    # steady state: the tokens/s between the first and the last log record (after compile and capture)
    steady = None
    if len(history) >= 2:
        first, last = history[0], history[-1]
        dt = last["tokens"] / last["tokens_per_s"] - first["tokens"] / first["tokens_per_s"]
        steady = (last["tokens"] - first["tokens"]) / dt if dt > 0 else None
    out = {"model": PYTHIA["model"], "model_path": path, "hook": hook, "d_sae": d_sae, "batch": batch, "steps": steps,
           "tokens": steps * batch, "paper_tokens": PAPER_TOKENS, "build_s": build_s, "train_wall_s": train_s,
           "wall_s": build_s + train_s, "tokens_per_s": steps * batch / train_s, "steady_tokens_per_s": steady,
           "peak_memory_gb": peak_memory_gb(device), "fast_step": "FastStep via TrainConfig(fast=True, precision='bf16')",
           "final_record": history[-1] if history else None,
           "stopped_early": "time budget of this run spent" if stopped_early else None}
    if steps * batch < PAPER_TOKENS and steady:
        overhead = train_s - steps * batch / steady  # compile, capture, first buffer fill
        out["extrapolated_paper_wall_s"] = build_s + overhead + PAPER_TOKENS / steady
    return out


# --- output --------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e6:
            return f"{v / 1e6:.2f}M"
        if abs(v) >= 1e3:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _row_line(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"{row.get('variant', '')} d={row.get('d')} m={row.get('m')} {row.get('impl')}: skipped: {row['skipped']}"
    return (f"{row['variant']:8s} d={row['d']:5d} m={row['m']:6d} {row['impl']:14s} {row['ms_per_step']:9.3f} ms "
            f"{row['tokens_per_s'] / 1e6:8.3f} Mtok/s {row['model_tflops']:7.1f} TFLOP/s (model) "
            f"peak {_fmt(row.get('peak_memory_gb'))} GB")


def markdown(results: dict[str, Any]) -> str:
    lines = ["# GPU benchmark (issue 5)", "", "All figures below come from one run of `benchmarks/gpu.py`; method, FLOP "
             "and byte counts and the predictions they are compared with: `benchmarks/gpu_notes.md`.", ""]
    env = results.get("env", {})
    if env:
        lines += ["## Environment", "", *(f"- {k}: {v}" for k, v in env.items()), ""]
    roof = results.get("roofline")
    if roof:
        lines += ["## Matmul roofline", "", f"{roof.get('n')}^3 random matrices, median of CUDA-event timings:", "",
                  f"- bf16: **{_fmt(roof.get('bf16_tflops'), 4)} TFLOP/s** ({_fmt(roof.get('bf16_median_ms'))} ms)",
                  f"- fp32 (no TF32, as the plain path runs): {_fmt(roof.get('fp32_tflops'), 4)} TFLOP/s", ""]
    step = results.get("step")
    if step:
        lines += ["## SAE training step", "",
                  f"Batch {step['batch']}. *Model TFLOP/s* counts the plain implementation's FLOPs: 12·d·m per token "
                  "for dense variants (6 matmuls of 2·d·m: encoder and decoder, each forward, input gradient, weight "
                  "gradient), 18·d·m for TopK (AuxK adds a decoder matmul and its two gradients). The fast step "
                  "executes 2·d·m fewer (no encoder input gradient). Fraction = model TFLOP/s / measured bf16 roofline.",
                  "", "| variant | d | m | impl | ms/step | tokens/s | model TFLOP/s | fraction of roofline | "
                  "speed-up vs eager fp32 | peak GB | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in step["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['variant']} | {r['d']} | {r['m']} | {r['impl']} | | | | | | | skipped: {r['skipped']} |")
                continue
            lines.append(f"| {r['variant']} | {r['d']} | {r['m']} | {r['impl']} | {_fmt(r['ms_per_step'])} | "
                         f"{_fmt(r['tokens_per_s'])} | {_fmt(r['model_tflops'])} | {_fmt(r.get('fraction_of_roofline'))} | "
                         f"{_fmt(r.get('speedup_vs_eager_fp32'))} | {_fmt(r.get('peak_memory_gb'))} | {r['describe']} |")
        lines.append("")
    abl = results.get("ablation")
    if abl:
        lines += [f"## Ablation (AEN, d={abl['d']}, m={abl['m']})", "", "| impl | ms/step | tokens/s | model TFLOP/s | what |",
                  "|---|---|---|---|---|"]
        for r in abl["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['impl']} | | | | skipped: {r['skipped']} |")
            else:
                lines.append(f"| {r['impl']} | {_fmt(r['ms_per_step'])} | {_fmt(r['tokens_per_s'])} | "
                             f"{_fmt(r['model_tflops'])} | {r['describe']} |")
        lines.append("")
    num = results.get("numerics")
    if num:
        lines += [f"## Numerics: fast bf16 vs fp32 (d={num['d']}, m={num['m']}, {num['steps']} steps of {num['batch']})", "",
                  f"Synthetic spiked data on the device; held-out L0 and EV from an fp32 forward. Tolerance: "
                  f"|Δ dead| ≤ {TOLERANCE['dead_pct']} points, |Δ L0| ≤ {TOLERANCE['l0_rel']:.0%}, |Δ EV| ≤ {TOLERANCE['ev']}. "
                  "`fp32_seed1` (another SAE init) shows the run-to-run spread.", "",
                  "| variant | run | dead % | L0 | EV | within tolerance |", "|---|---|---|---|---|---|"]
        for row in num["runs"]:
            for name in ("fp32", "fast_bf16", "fp32_seed1"):
                r = row.get(name, {})
                if "skipped" in r:
                    lines.append(f"| {row['variant']} | {name} | skipped: {r['skipped']} | | | |")
                elif r:
                    ok = row.get("within_tolerance") if name == "fast_bf16" else ""
                    lines.append(f"| {row['variant']} | {name} | {_fmt(r['dead_pct'])} | {_fmt(r['l0'], 4)} | "
                                 f"{_fmt(r['ev'], 4)} | {ok} |")
        lines.append("")
    har = results.get("harvest")
    if har:
        lines += ["## Harvesting", "", f"Random-init stand-ins (random weights, random token ids; speed only), bf16, "
                  f"context {har['ctx_len']}, forward stopped after the hooked block, batches of {har['batch']} rows "
                  "from `LMActivationSource` (normalised, shuffle buffer).", "",
                  "| model | hook | tokens/s | peak GB | path |", "|---|---|---|---|---|"]
        for name, r in har["models"].items():
            if "skipped" in r:
                lines.append(f"| {name} | | | | skipped: {r['skipped']} |")
            else:
                lines.append(f"| {name} | {r['hook']} | {_fmt(r['tokens_per_s'])} | {_fmt(r['peak_memory_gb'])} | {r['path']} |")
        lines.append("")
    e2e = results.get("e2e")
    if e2e:
        lines += ["## End to end: the paper's Pythia-70M configuration", ""]
        if "skipped" in e2e:
            lines += [f"skipped: {e2e['skipped']}", ""]
        else:
            lines += [f"AEN, {e2e['d_sae']} latents, {e2e['hook']}, batch {e2e['batch']}, on {e2e['model']} "
                      f"(random init: speed only; {e2e['model_path']}); harvest in a producer thread on its own CUDA "
                      "stream (`PrefetchSource`), training with `TrainConfig(fast=True, precision='bf16')`.", "",
                      f"- tokens trained: {e2e['tokens']:,} ({e2e['steps']} steps)",
                      f"- wall time: {_fmt(e2e['wall_s'])} s (model build {_fmt(e2e['build_s'])} s + training "
                      f"{_fmt(e2e['train_wall_s'])} s, compile and capture included)",
                      f"- tokens/s: {_fmt(e2e['tokens_per_s'])} overall, {_fmt(e2e['steady_tokens_per_s'])} steady state",
                      f"- peak GPU memory: {_fmt(e2e['peak_memory_gb'])} GB"]
            if "extrapolated_paper_wall_s" in e2e:
                lines.append(f"- **extrapolated** to the paper's {PAPER_TOKENS:,} tokens (this run trained fewer: "
                             f"`--e2e-tokens`): {_fmt(e2e['extrapolated_paper_wall_s'])} s = build + measured overhead + "
                             "tokens / steady tokens/s")
            lines.append("")
    errors = {k: v for k, v in results.items() if isinstance(v, dict) and "skipped" in v and k != "e2e"}
    if errors:
        lines += ["## Skipped sections", "", *(f"- {k}: {v['skipped']}" for k, v in errors.items()), ""]
    return "\n".join(lines)


def summary_table(results: dict[str, Any]) -> str:
    lines = []
    roof = results.get("roofline", {})
    if "bf16_tflops" in roof:
        lines.append(f"bf16 roofline {roof['bf16_tflops']:.0f} TFLOP/s")
    for r in results.get("step", {}).get("rows", []):
        if r.get("impl") == "fast" and "tokens_per_s" in r:
            lines.append(f"{r['variant']:8s} d={r['d']:5d} m={r['m']:6d} fast {r['tokens_per_s'] / 1e6:8.2f} Mtok/s "
                         f"{_fmt(r.get('fraction_of_roofline'))} of roofline, x{_fmt(r.get('speedup_vs_eager_fp32'))} vs eager fp32")
    for row in results.get("numerics", {}).get("runs", []):
        lines.append(f"numerics {row['variant']}: within tolerance = {row.get('within_tolerance')}")
    for name, r in results.get("harvest", {}).get("models", {}).items():
        lines.append(f"harvest {name}: " + (f"{r['tokens_per_s'] / 1e6:.2f} Mtok/s" if "tokens_per_s" in r else r.get("skipped", "")))
    e2e = results.get("e2e", {})
    if "wall_s" in e2e:
        lines.append(f"e2e {e2e['tokens']:,} tokens: {e2e['wall_s']:.0f} s" +
                     (f", extrapolated {PAPER_TOKENS:,}: {e2e['extrapolated_paper_wall_s']:.0f} s" if "extrapolated_paper_wall_s" in e2e else ""))
    elif "skipped" in e2e:
        lines.append(f"e2e skipped: {e2e['skipped']}")
    return "\n".join(lines)


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
