"""ReLU-L1, TopK and AEN SAEs at matched L0 on a language model's activations: dead %, L0, EV, and what is left of
the model when the SAE is spliced in (CE, KL, CE recovered; for an encoder, the change of its sentence embedding).

    PYTHONPATH=. python3 benchmarks/llm.py                     # CPU defaults: MiniLM-L6 + tiny-neox, one core, < 10 min
    PYTHONPATH=. python3 benchmarks/llm.py --models pythia-70m-shaped --device cuda --tokens 20M --latents 4096 \\
        --batch-size 4096 --lr 1e-3 --out book/results/llm_gpu.json                   # GPU, a few minutes

The CPU defaults (80k tokens per run in batches of 128, lr 4e-3, d_sae = 8 d) are what one shared core can do
in ten minutes for about 24 runs; they give short runs (625 steps), so the numbers are a smoke test of the
pipeline and a rough comparison, not converged SAEs.

Per model: the run pipeline's ``build_data`` loads the model and corpus; the training activations are harvested
once (one pass, at most ``--tokens`` rows) and every run trains on them from the same seeded order, so the
variants differ only in their SAE. The L1 strength of ReLU-L1 and AEN is calibrated per target L0 with
``aen_mini.calibrate.search_l1``; each calibration trial is a full run, and the reported run is the trial closest
to the target (its L0 is reported, not the target). TopK is given k = target. Held-out metrics come from
``aen_mini.runs.sae_metrics``, spliced metrics from ``aen_mini.splice.spliced_metrics``, both on the last
``--eval-contexts`` contexts of the corpus, which no run trains on.

Every row names the model and data it came from. The offline models are stand-ins: MiniLM-L6 is a real
pretrained sentence encoder (no next-token loss, so the embedding change replaces CE), tiny-neox a 4M-parameter
causal LM trained by aen-mini on the same stdlib docstrings, and pythia-70m-shaped has Pythia-70M's shape with
random weights. None of them is Pythia or Llama.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aen_mini import __version__  # noqa: E402
from aen_mini.atomic import atomic_write_text  # noqa: E402
from aen_mini.calibrate import power_law_start, search_l1  # noqa: E402
from aen_mini.checkpoint import load_sae  # noqa: E402
from aen_mini.data.source import TensorSource  # noqa: E402
from aen_mini.planning import parse_count  # noqa: E402
from aen_mini.runs import RunConfig, RunData, build_data, run_training  # noqa: E402
from aen_mini.splice import spliced_metrics  # noqa: E402

# Hooks about two thirds of the way up, like Pythia-70M's blocks.3 of 6 in the paper.
HOOKS = {"EleutherAI/pythia-70m-deduped": "blocks.3.hook_resid_post", "pythia-70m-shaped": "blocks.3.hook_resid_post",
         "minilm-l6": "blocks.3.hook_resid_post", "tiny-neox": "blocks.2.hook_resid_post"}
VARIANTS = ("relu_l1", "topk", "aen")
LABELS = {"relu_l1": "ReLU + L1", "topk": "TopK + AuxK", "aen": "AEN"}
# AEN as in the synthetic sweep: l2 = 0.1 l1, gamma = 1, top-1% reference, reweighting warmed up from 25% of the
# run over the next 25%; beta = 0.99 because these runs are short (a 1000-step EMA would not have moved).
AEN_SETTINGS = {"l2_ratio": 0.1, "gamma": 1.0, "ema_beta": 0.99, "ref_pct": 0.01, "warmup_start_frac": 0.25,
                "warmup_frac": 0.25}


def corpus_label(corpus: str) -> str:
    if corpus == "stdlib":
        return "Python standard-library docstrings (offline)"
    if corpus.startswith("hf:"):
        return f"{corpus[3:]} (Hugging Face dataset, online)"
    return f"text files at {corpus} (offline)"


def parse_latents(text: str, d_in: int) -> int:
    """'8x' -> 8 * d_in; '4096' -> 4096."""
    value = int(text[:-1]) * d_in if text.endswith("x") else int(text)
    if value <= 0:
        raise ValueError(f"--latents must be positive, got {text!r}")
    return value


def harvest_once(cfg: RunConfig) -> tuple[RunData, torch.Tensor]:
    """The run data of ``cfg`` and its training activations, harvested in one pass (at most cfg.tokens rows)."""
    data = build_data(cfg)
    rows_per_pass = int(data.source.tokens.mask.sum())
    return data, data.source.next_batch(min(rows_per_pass, cfg.tokens))


def train_run(cfg: RunConfig, data: RunData, acts: torch.Tensor) -> dict[str, Any]:
    """One training run through the run pipeline, on a fresh seeded source over the harvested activations."""
    out = run_training(cfg, replace(data, source=TensorSource(acts, seed=cfg.seed)))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"folder": str(out), "held_out": metrics["held_out"], "wall_s": metrics["wall_s"]}


def variant_settings(variant: str, l1: float | None, target: int, steps: int) -> dict[str, Any]:
    if variant == "topk":
        return {"k": target}
    if variant == "relu_l1":
        return {"l1": l1}
    return {"l1": l1, "l2": AEN_SETTINGS["l2_ratio"] * l1, "gamma": AEN_SETTINGS["gamma"],
            "ema_beta": AEN_SETTINGS["ema_beta"], "ref_pct": AEN_SETTINGS["ref_pct"],
            "warmup_start": int(AEN_SETTINGS["warmup_start_frac"] * steps),
            "warmup_steps": int(AEN_SETTINGS["warmup_frac"] * steps)}


def bench_model(name: str, args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    hook = args.hook or HOOKS.get(name, "blocks.3.hook_resid_post")
    # Enough contexts for the training rows (<= ctx_len - 2 text tokens each) plus the held-out ones.
    max_contexts = math.ceil(args.tokens / (args.ctx_len - 2)) + args.eval_contexts + 1
    base = RunConfig(model=name, hook=hook, sae="relu_l1", latents=1, tokens=args.tokens, batch_size=args.batch_size,
                     lr=args.lr, corpus=args.corpus, ctx_len=args.ctx_len, max_contexts=max_contexts,
                     eval_contexts=args.eval_contexts, device=args.device, seed=args.seed, progress=False)
    t0 = time.perf_counter()
    data, acts = harvest_once(base)
    d_in = acts.shape[1]
    base = replace(base, latents=parse_latents(args.latents, d_in),
                   dead_after_tokens=args.batch_size * max(1, base.steps // 20))  # silent 5% of the run = dead
    harvest_s = time.perf_counter() - t0
    print(f"[{name}] {data.label}: {acts.shape[0]} training rows of d={d_in} harvested at {hook} in {harvest_s:.0f} s; "
          f"{base.steps} steps of {args.batch_size} per run, d_sae={base.latents}", flush=True)
    normalizer = data.source.normalizer
    rows: list[dict[str, Any]] = []
    trials_of: dict[str, list[dict[str, float]]] = {}
    for target in sorted(args.targets, reverse=True):
        for variant in args.variants:
            runs: dict[float, dict[str, Any]] = {}

            def measure(l1: float | None) -> float:
                cfg = replace(base, sae=variant, out=str(scratch / f"{variant}-{target}-{len(runs)}"),
                              **variant_settings(variant, l1, target, base.steps))
                run = train_run(cfg, data, acts)
                runs[l1] = {**run, "config": cfg}
                print(f"[{name}] {variant} target L0 {target}: l1={l1} -> L0 {run['held_out']['l0']:.1f} "
                      f"({run['wall_s']:.0f} s)", flush=True)
                return run["held_out"]["l0"]

            if variant == "topk":
                measure(None)
                calibration = {"l1_coeff": None, "converged": True, "trials": []}
            else:
                # Start from this variant's earlier trials (another target), else ReLU-L1's, else a guess on the
                # scale of one latent's share of a normalised activation, sqrt(d / target) / 2.
                start = (power_law_start(trials_of.get(variant, []), target)
                         or power_law_start(trials_of.get("relu_l1", []), target)
                         or 0.5 * math.sqrt(d_in / target))
                calibration = search_l1(measure, target, start, trials=args.trials, rel_tol=args.rel_tol)
                trials_of.setdefault(variant, []).extend(calibration["trials"])
            run = runs[calibration["l1_coeff"]]
            sae = load_sae(Path(run["folder"]) / "checkpoint.safetensors", args.device)
            spliced = spliced_metrics(data.model, sae, data.eval_tokens, hook, normalizer, batch_size=args.eval_batch)
            cfg = run["config"]
            rows.append({
                "model": name, "model_label": data.label, "kind": data.model.kind, "data": corpus_label(args.corpus),
                "hook": hook, "d_in": d_in, "d_sae": cfg.latents, "variant": variant, "label": LABELS[variant],
                "target_l0": target, "l1": cfg.l1, "l2": cfg.l2, "k": cfg.k,
                **{key: run["held_out"][key] for key in ("l0", "dead_pct", "ev", "mse", "shrinkage")},
                **spliced, "calibration_converged": calibration["converged"],
                "calibration_trials": calibration["trials"], "steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size,
                "train_rows": acts.shape[0], "eval_contexts": args.eval_contexts, "batch_size": cfg.batch_size,
                "lr": cfg.lr, "train_wall_s": run["wall_s"], "harvest_wall_s": harvest_s,
            })
            for other in runs.values():
                shutil.rmtree(other["folder"], ignore_errors=True)
    return rows


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# SAEs on language-model activations at matched L0", "",
             f"Written by `{meta['command']}` on {meta['device_name']} ({meta['wall_s'] / 60:.1f} min, "
             f"aen-mini {meta['aen_mini_version']}, commit {str(meta['git_commit'])[:10]}).", "",
             "Each row is one SAE; ReLU + L1 and AEN have l1 calibrated so that the held-out L0 is near the target "
             "(the trial closest to it is reported), TopK has k = target. Held-out: the last "
             f"{rows[0]['eval_contexts'] if rows else '?'} contexts of the corpus, never trained on. None of these "
             "models is Pythia or Llama; each table names the model and data that produced it.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        first = group[0]
        lines += [f"## {first['model_label']}", "",
                  f"Data: {first['data']}; hook `{first['hook']}`; d_in {first['d_in']}, d_sae {first['d_sae']}; "
                  f"{first['tokens']:,} training tokens per run ({first['train_rows']:,} distinct, "
                  f"batch {first['batch_size']}, {first['steps']} steps, lr {first['lr']:g}).", ""]
        if first["kind"] == "causal":
            lines += [f"Clean CE {first['ce_clean']:.3f} nats; zero-ablated {first['ce_zero']:.3f}; "
                      f"mean-ablated {first['ce_mean']:.3f}.", "",
                      "| SAE | target L0 | l1 | L0 | dead % | EV | CE spliced | CE recovered (zero) "
                      "| CE recovered (mean) | KL (nats) |", "|" + " --- |" * 10]
            for r in group:
                lines.append(f"| {r['label']} | {r['target_l0']} | {_fmt(r['l1'], '.3g')} | {r['l0']:.1f} | "
                             f"{r['dead_pct']:.1f} | {r['ev']:.3f} | {r['ce_sae']:.3f} | {_fmt(r['ce_recovered_zero'])} | "
                             f"{_fmt(r['ce_recovered_mean'])} | {r['kl_sae']:.3f} |")
        else:
            lines += [f"Sentence-embedding change 1 − cos: zero-ablated {first['cos_dist_zero']:.4f}, "
                      f"mean-ablated {first['cos_dist_mean']:.4f}.", "",
                      "| SAE | target L0 | l1 | L0 | dead % | EV | 1 − cos (spliced) | embedding recovered (zero) "
                      "| embedding recovered (mean) |", "|" + " --- |" * 9]
            for r in group:
                lines.append(f"| {r['label']} | {r['target_l0']} | {_fmt(r['l1'], '.3g')} | {r['l0']:.1f} | "
                             f"{r['dead_pct']:.1f} | {r['ev']:.3f} | {r['cos_dist_sae']:.4f} | "
                             f"{_fmt(r['embedding_recovered_zero'])} | {_fmt(r['embedding_recovered_mean'])} |")
        lines.append("")
    return "\n".join(lines)


def metadata(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    return {"command": " ".join(["python3 benchmarks/llm.py", *argv]), "aen_mini_version": __version__,
            "git_commit": commit, "torch": torch.__version__, "python": platform.python_version(),
            "device": args.device, "device_name": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})",
            "cpu_threads": torch.get_num_threads(), "models": args.models, "corpus": args.corpus,
            "targets": args.targets, "aen_settings": AEN_SETTINGS, "rel_tol": args.rel_tol, "trials": args.trials}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["minilm-l6", "tiny-neox"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", default="80k", help="training tokens per run (e.g. 150k, 20M)")
    p.add_argument("--latents", default="8x", help="SAE width: a number, or '8x' for 8 * d_model")
    p.add_argument("--out", default="benchmarks/llm.json", help="JSON file; the Markdown table goes beside it (.md)")
    p.add_argument("--targets", nargs="+", type=int, default=[32, 128], help="L0 targets")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--trials", type=int, default=3, help="most calibration runs per (variant, target)")
    p.add_argument("--rel-tol", type=float, default=0.2, help="calibration stops at |L0 / target - 1| <= this")
    p.add_argument("--corpus", default="stdlib", help="'stdlib' (offline), a text path, or hf:DATASET (online)")
    p.add_argument("--hook", default=None, help="default: blocks.3.hook_resid_post (tiny-neox: blocks.2)")
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--eval-contexts", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.tokens = parse_count(args.tokens)
    if args.device == "cpu":
        torch.set_num_threads(1)  # the CPU machine is shared
    out = Path(args.out)
    if out.suffix != ".json":
        raise SystemExit(f"--out must name a .json file, got {args.out}")
    meta = metadata(args, argv)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aen-llm-bench-") as scratch:
        for name in args.models:
            rows += bench_model(name, args, Path(scratch))
            meta["wall_s"] = time.perf_counter() - t0
            atomic_write_text(out, json.dumps({"metadata": meta, "complete": name == args.models[-1], "rows": rows},
                                              indent=1))
    atomic_write_text(out.with_suffix(".md"), markdown(rows, meta))
    print(markdown(rows, meta))
    return rows


if __name__ == "__main__":
    main()
