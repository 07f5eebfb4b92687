"""The harvest's speed on SmolLM2-135M-Instruct (issue 12): tokens per second up to ``blocks.15.hook_resid_post``,
eager in float32 (TF32 matmuls), eager in bf16, and bf16 with each decoder layer compiled (``torch.compile`` of its
forward, on CUDA only; the hooks stay outside), on the same random token ids (``benchmarks/llm.py --speed-only``: it needs the
model, not the corpus). Writes ``llm_speed.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from aen_mini.data.activations import harvest
from aen_mini.experiments.llm_study import HOOK, MODEL, metadata, sync
from aen_mini.io.atomic import atomic_write_text

SPEED_CONTEXTS = 8192  # contexts of --ctx-len random tokens timed per setting (1M tokens at 128)


def tokens_per_s(model: Any, tokens: torch.Tensor, batch: int, repeats: int = 2) -> tuple[float, float]:
    """(tokens/s of the best of ``repeats`` timed passes, seconds of the first, untimed pass: compilation)."""
    t = time.perf_counter()
    harvest(model, tokens[:batch], HOOK, batch_size=batch)
    sync()
    first = time.perf_counter() - t
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        harvest(model, tokens, HOOK, batch_size=batch)
        sync()
        best = max(best, tokens.numel() / (time.perf_counter() - t))
    return best, first


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from aen_mini.lm.models import load_model

    if args.gguf:
        os.environ["AEN_MINI_SMOLLM2_GGUF"] = str(Path(args.gguf).resolve())
    torch.backends.cuda.matmul.allow_tf32 = True
    t = time.perf_counter()
    fp32 = load_model(MODEL, device=args.device, dtype=torch.float32, backend="hf")
    load_s = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    contexts = SPEED_CONTEXTS if args.device != "cpu" else 4 * args.harvest_batch
    tokens = torch.randint(0, fp32.tokenizer.vocab_size, (contexts, args.ctx_len), generator=g).to(args.device)
    out: dict[str, Any] = {"model_load_s": load_s, "tokens_timed": tokens.numel(), "batch_contexts": args.harvest_batch}
    out["eager_fp32_tf32"], _ = tokens_per_s(fp32, tokens, args.harvest_batch)
    del fp32
    bf16 = load_model(MODEL, device=args.device, dtype=torch.bfloat16, backend="hf")
    out["eager_bf16"], _ = tokens_per_s(bf16, tokens, args.harvest_batch)
    if torch.device(args.device).type != "cuda":  # compiling on a CPU is slow and says nothing about the GPU run
        return {**out, "compiled_bf16": None, "compile_error": "not measured off CUDA"}
    for layer in bf16.layers[:int(HOOK.split(".")[1]) + 1]:
        layer.forward = torch.compile(layer.forward, dynamic=False)
    try:
        out["compiled_bf16"], out["compile_s"] = tokens_per_s(bf16, tokens, args.harvest_batch)
    except Exception as err:  # noqa: BLE001  (recorded: the eager numbers stand)
        out["compiled_bf16"], out["compile_error"] = None, f"{type(err).__name__}: {str(err)[:300]}"
    return out


def main(args: argparse.Namespace) -> None:
    result = {"metadata": metadata(args), "harvest": measure(args)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out) / "llm_speed.json", json.dumps(result, indent=1))
    print(json.dumps(result["harvest"], indent=1))
