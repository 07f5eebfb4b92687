"""What the GPU benchmark's scripts share (benchmarks/gpu.py runs them): the settings every section uses and the
timing, memory and error helpers."""
from __future__ import annotations

import gc
import time
from typing import Any, Callable

import torch

# One set of hyperparameters for every section: torch.compile bakes them into the graph, so the numerics and e2e
# runs at d=512, m=4096 reuse the step section's compiled kernels (inductor's cache). Speed does not depend on them.
STEP_VARIANTS = {"aen": {"l1_coeff": 0.3, "l2_coeff": 0.01}, "relu_l1": {"l1_coeff": 0.3}, "topk": {"k": 32}}
PAPER_TOKENS = 204_800_000
PYTHIA = {"model": "pythia-70m-shaped", "hook": "blocks.3.hook_resid_post", "d_sae": 4096, "batch": 8192}
HARVEST_MODELS = {"pythia-70m-shaped": ("blocks.3.hook_resid_post", 512), "llama-3.1-8b-shaped": ("blocks.16.hook_resid_post", 32)}
CTX_LEN = 128
# Agreement of the fast bf16 path with the fp32 path (numerics section; tests/test_fast.py uses the same).
TOLERANCE = {"dead_pct": 2.0, "l0_rel": 0.05, "ev": 0.01}


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
