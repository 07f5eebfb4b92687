"""The GPU benchmark's sections on data (benchmarks/gpu.py runs them): fast-vs-fp32 numerics on synthetic data with
ground truth, activation harvesting from random-init stand-ins, and the paper's Pythia-70M run end to end."""
from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from typing import Any, Callable

import torch

from aen_mini.data.prefetch import PrefetchSource
from aen_mini.data.source import TensorSource
from aen_mini.data.synthetic import SpikedSource
from aen_mini.eval.metrics import explained_variance
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train
from gpu_common import (CTX_LEN, HARVEST_MODELS, PAPER_TOKENS, PYTHIA, STEP_VARIANTS, TOLERANCE, Timer, error_text,
                        is_oom, peak_memory_gb, reset_compiler, reset_memory)


# --- synthetic data with ground truth, on the device ----------------------------------------------------------
def spiked_tensor(rows: int, d: int, m_true: int, k: int, device: torch.device, seed: int) -> torch.Tensor:
    """Rows of aen_mini.data.synthetic.SpikedSource (rho 0.3), rescaled to norm sqrt(d), on the device."""
    source = SpikedSource(n=d, m=m_true, k=k, rho=0.3, seed=seed)
    x = torch.cat([source.next_batch(min(65536, rows - start)).to(device) for start in range(0, rows, 65536)])
    return x * (math.sqrt(d) / x.norm(dim=-1, keepdim=True))


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
                          "ev": float(explained_variance(held_out, x_hat)), "wall_s": time.perf_counter() - t0}
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
def build_model(name: str, device: torch.device, smoke: bool) -> tuple[Any, str]:
    """The random-init stand-in in bf16, by aen_mini.lm.models.load_model: through TransformerBridge when
    transformer-lens is installed, else the plain transformers model with forward hooks (backend "hf")."""
    from aen_mini.lm.models import load_model

    overrides = ({"num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                  **({"num_key_value_heads": 2} if "llama" in name else {})} if smoke else {})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        import transformer_lens  # noqa: F401
        backend, path = "bridge", "aen_mini.lm.models.load_model (TransformerBridge)"
    except ImportError as err:
        backend, path = "hf", f"transformer-lens not installed ({err}); load_model(backend='hf')"
    return load_model(name, device=device, dtype=dtype, config_overrides=overrides or None, backend=backend), path


def vocab_size(model: Any) -> int:
    return int(model.hf_model.config.vocab_size if hasattr(model, "hf_model") else model.bridge.cfg.d_vocab)


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
