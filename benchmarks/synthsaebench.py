"""SynthSAEBench-16k (SAELens's synthetic benchmark, issue 11 section 3): our SAE variants at L0 = 25, scored by
SAELens's own evaluation (MCC, F1, dead latents) next to SAELens's published table.

    .venv-saelens/bin/python benchmarks/synthsaebench.py --device cuda --budget-s 100 --out benchmarks

On the GPU image (no sae-lens, no network) the committed run copied this folder, ``aen_mini`` and a ``site/`` folder
(``sae_lens``, ``simple_parsing``, ``docstring_parser``, ``better_abc`` from .venv-saelens) to the device and ran

    AEN_SAELENS_SRC=$PWD/site/sae_lens AEN_SAELENS_FORCE_SRC=1 PYTHONPATH=$PWD/site TQDM_DISABLE=1 \
        python3 benchmarks/synthsaebench.py --device cuda --budget-s 50 --deadline-s 95 --eval-samples 100000 \
        --commit SHA --out $OUT

At the published budget use ``benchmarks/synthsaebench_shared.py`` (every SAE on one stream, drawn once, the fused
step, calibration by short probes, runs carried across device calls). Here ``--budget-s`` times sampling and
training first and shortens the runs to fit; ``--stream`` samples batches as
training asks for them (the published 200M samples do not fit in memory); ``--render`` rewrites the .md from the .json.

One process holds both sides: SAELens's synthetic model draws the data and scores the SAEs
(``sae_lens.synthetic``, imported through ``benchmarks/saelens_synthetic.py``, which also works where sae-lens
cannot be installed), and ``aen_mini`` trains them (its SAE and trainer import no transformer-lens, so they run
in the sae-lens venv). The 16k model is built from its published configuration (seed 42), exactly as SAELens's
``create_synth_bench_16k_model.py`` does, because the Hugging Face copy cannot be downloaded offline.

Every penalised method's l1 is calibrated to the target L0 by ``aen_mini.eval.calibrate.search_l1``; each trial is a
full training run on the same samples, and the run of the chosen trial is the one scored (no retraining).
Writes ``synthsaebench.json`` (after every scored method) and ``synthsaebench.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # aen_mini and saelens_synthetic, from anywhere

import saelens_synthetic  # noqa: E402
from aen_mini.eval.calibrate import power_law_start, search_l1  # noqa: E402
from aen_mini.experiments import recipes  # noqa: E402
from aen_mini.sae import SAE  # noqa: E402
from aen_mini.experiments.recipes import EMA_BETA, GAMMA, REF_PCT, WARMUP_FRAC, WARMUP_START_FRAC  # noqa: E402
from aen_mini.data.source import TensorSource  # noqa: E402
from aen_mini.train.loop import TrainConfig, train  # noqa: E402
from synthsaebench_report import PUBLISHED_L0_25, PUBLISHED_PROTOCOL, write  # noqa: E402


@dataclass(frozen=True)
class Size:
    """The synthetic model and the SAE. ``16k`` is SynthSAEBench-16k; ``tiny`` is for CPU tests."""

    num_features: int
    hidden_dim: int
    d_sae: int
    root_nodes: int
    correlation_rank: int
    orthogonalization_steps: int
    target_l0: int


SIZES = {
    "16k": Size(num_features=16_384, hidden_dim=768, d_sae=4096, root_nodes=128, correlation_rank=25,
                orthogonalization_steps=100, target_l0=25),
    "tiny": Size(num_features=256, hidden_dim=48, d_sae=64, root_nodes=2, correlation_rank=4,
                 orthogonalization_steps=5, target_l0=5),
}

# name: the recipe each method trains with (aen_mini.experiments.recipes, shared with the synthetic sweep)
METHODS: dict[str, str] = {"relu_l1": "relu_l1", "topk": "topk_auxk", "batch_topk": "batch_topk_auxk",
                           "elastic_net": "elastic_net", "aen": "aen", "relu_l1_warmup": "relu_l1_warmup",
                           "elastic_net_warmup": "elastic_net_warmup"}
LABELS = {name: recipes.method(recipe).label for name, recipe in METHODS.items()}


def model_config(sl: Any, size: Size) -> Any:
    """SynthSAEBench-16k's published configuration (SAELens docs; create_synth_bench_16k_model.py), at ``size``."""
    return sl.SyntheticModelConfig(
        num_features=size.num_features, hidden_dim=size.hidden_dim,
        firing_probability=sl.ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=5e-4),
        hierarchy=sl.HierarchyConfig(total_root_nodes=size.root_nodes, branching_factor=4, max_depth=3,
                                     mutually_exclusive_portion=1.0, mutually_exclusive_min_depth=0,
                                     compensate_probabilities=True, scale_children_by_parent=True),
        orthogonalization=sl.OrthogonalizationConfig(num_steps=size.orthogonalization_steps, lr=3e-4),
        correlation=sl.LowRankCorrelationConfig(rank=size.correlation_rank, correlation_scale=0.1),
        mean_firing_magnitudes=sl.LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=sl.FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5, seed=42)


class SAELensView(torch.nn.Module):
    """Our SAE as SAELens's evaluation reads an SAE: it takes ``W_dec`` as (d_sae, d_in); ours is (d_in, d_sae).
    Codes and reconstructions are ours unchanged (``eval()`` reaches the SAE, so BatchTopK uses its threshold)."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    @property
    def W_dec(self) -> torch.Tensor:  # noqa: N802 (SAELens's name)
        return self.sae.W_dec.T

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(h)


def build_sae(method: str, size: Size, l1_coeff: float, steps: int, batch_size: int, seed: int) -> SAE:
    return recipes.build_sae(METHODS[method], size.hidden_dim, size.d_sae, l1_coeff, steps, size.target_l0,
                             batch_size, seed)


def draw(model: Any, n: int, seed: int, chunk: int = 16_384) -> torch.Tensor:
    """``n`` hidden activations from SAELens's sampler (fixed seed, so every run sees the same samples)."""
    torch.manual_seed(seed)
    return torch.cat([model.sample(min(chunk, n - i)) for i in range(0, n, chunk)])


class SyntheticStream:
    """Training batches drawn from SAELens's sampler as the trainer asks for them, on an RNG stream of their own
    (seeded, saved and restored around each draw), so every run sees the same samples without holding them: the
    published 200M samples (614 GB in fp32) fit in no GPU's memory."""

    def __init__(self, model: Any, seed: int) -> None:
        self.model, self.seed, self.d_in = model, seed, model.cfg.hidden_dim
        self.cuda = torch.device(model.device).type == "cuda"
        self._restart()

    def _restart(self) -> None:
        self.batches = 0
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(self.seed)
            self._state = self._rng_state()

    def _devices(self) -> list[int]:
        return [torch.device(self.model.device).index or 0] if self.cuda else []

    def _rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self._devices()[0]) if self.cuda else None

    def next_batch(self, batch_size: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=self._devices()):
            torch.set_rng_state(self._state[0])
            if self.cuda:
                torch.cuda.set_rng_state(self._state[1], self._devices()[0])
            x = self.model.sample(batch_size)
            self._state = self._rng_state()
        self.batches += 1
        self.batch_size = batch_size
        return x

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "batch_size": getattr(self, "batch_size", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replays the draws (the sampler's RNG state is not JSON)."""
        self._restart()
        for _ in range(int(state["batches"])):
            self.next_batch(int(state["batch_size"]))


def train_one(method: str, size: Size, data: torch.Tensor | Any, l1_coeff: float, steps: int, args: argparse.Namespace) -> tuple[SAE, list[dict]]:
    """One run on ``data``: a pool of samples (each seen once, in a seeded order) or the synthetic model (streamed)."""
    sae = build_sae(method, size, l1_coeff, steps, args.batch_size, args.seed)
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      precision="bf16" if args.device.startswith("cuda") else "fp32",
                      l1_warmup_steps=recipes.l1_warmup_steps(METHODS[method], steps),
                      log_every=max(1, steps // 10), progress=False)
    source = TensorSource(data, seed=args.seed) if isinstance(data, torch.Tensor) else SyntheticStream(data, args.seed)
    result = train(sae, source, cfg)
    history = [{k: round(h[k], 4) for k in ("step", "mse", "l0", "dead_pct") if k in h} for h in result.history]
    return result.sae.eval(), history


@torch.no_grad()
def held_out_l0(sae: SAE, x: torch.Tensor) -> float:
    return float((sae.encode(x) != 0).float().sum(-1).mean())


def score(sl: Any, model: Any, sae: SAE, args: argparse.Namespace) -> dict[str, Any]:
    """SAELens's ``eval_sae_on_synthetic_data`` on the same ``eval_samples`` samples for every SAE."""
    torch.manual_seed(args.seed + 10_000)
    result = sl.eval_sae_on_synthetic_data(SAELensView(sae), model.feature_dict, model.activation_generator,
                                           num_samples=args.eval_samples,
                                           batch_size=min(args.eval_samples, 8192)).to_dict()
    result["dead_pct"] = 100.0 * result["dead_latents"] / sae.d_sae
    return result


def probe_steps(method_count: int, size: Size, model: Any, args: argparse.Namespace) -> dict[str, float]:
    """Steps per run that fit ``args.budget_s`` of training and sampling, from timed sampling and training."""
    t0 = time.perf_counter()
    draw(model, 8 * args.batch_size, seed=args.seed + 1)
    sample_s = (time.perf_counter() - t0) / (8 * args.batch_size)
    pool = draw(model, 4 * args.batch_size, seed=args.seed + 2).to(args.device)
    train_one("topk", size, pool, 0.0, 10, args)  # warm-up: kernels, allocator
    timings = {}
    for method in ("relu_l1", "topk"):
        _sync(args.device)
        t0 = time.perf_counter()
        train_one(method, size, pool, 1.0, 40, args)
        _sync(args.device)
        timings[method] = (time.perf_counter() - t0) / 40
    step_s = max(timings.values())
    batch_s = args.batch_size * sample_s  # paid once for the pool, or by every run when streamed
    steps = int(args.budget_s / (method_count * (step_s + batch_s) if args.stream else method_count * step_s + batch_s))
    return {"sample_s_per_sample": sample_s, "step_s": step_s, "steps_fitting_budget": steps}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict[str, Any]:
    sl = saelens_synthetic.load()
    size = SIZES[args.size]
    t_start = time.perf_counter()
    model = sl.SyntheticModel(model_config(sl, size), device=args.device)
    build_s = time.perf_counter() - t_start
    vectors = model.feature_dict.feature_vectors.detach()
    fingerprint = {"feature_vectors_sum": float(vectors.double().sum()), "feature_vectors_00": float(vectors[0, 0]),
                   "bias_norm": float(model.feature_dict.bias.detach().norm())}
    methods = list(args.methods)
    calibrated = [m for m in methods if recipes.method(METHODS[m]).calibrated]
    runs_max = len(methods) - len(calibrated) + args.calib_trials * len(calibrated)
    probe = probe_steps(runs_max, size, model, args) if args.budget_s else None
    steps = args.steps if probe is None else max(1, min(args.steps, probe["steps_fitting_budget"]))
    t0 = time.perf_counter()
    data = model if args.stream else draw(model, steps * args.batch_size, seed=args.seed).to(args.device)
    x_cal = draw(model, args.calib_samples, seed=args.seed + 20_000).to(args.device)
    sample_s = time.perf_counter() - t0
    true_l0 = float(((model.activation_generator.sample(4096) > 0).float().sum(-1)).mean())
    report: dict[str, Any] = {
        "benchmark": "SynthSAEBench-16k" if args.size == "16k" else f"SynthSAEBench config at size {args.size!r}",
        "model_source": "built from the published configuration (seed 42) with SAELens's SyntheticModel on "
                        f"{args.device}; the Hugging Face copy (decoderesearch/synth-sae-bench-16k-v2) was not downloaded",
        "model_config": model.cfg.to_dict(), "model_fingerprint": fingerprint, "model_true_l0": true_l0,
        "size": asdict(size), "target_l0": size.target_l0,
        "protocol": {"training_samples": steps * args.batch_size, "steps": steps, "batch_size": args.batch_size,
                     "lr": args.lr, "optimizer": "Adam (0.9, 0.999), constant lr, grad-norm clip 1.0",
                     "init": "aen_mini default: W_enc = W_dec^T (unit random atoms), b_dec = first-batch mean",
                     "precision": "bf16 autocast" if args.device.startswith("cuda") else "fp32",
                     "samples": ("streamed from the sampler on a seeded RNG stream" if args.stream else
                                 "one fixed draw of training samples") + ", each seen once per run, the same for every run",
                     "calibration": f"search_l1 on the held-out L0 of {args.calib_samples} samples, at most "
                                    f"{args.calib_trials} full-length runs, rel_tol {args.rel_tol}",
                     "eval_samples": args.eval_samples, "seed": args.seed,
                     "adaptive": {"gamma": GAMMA, "ema_beta": EMA_BETA, "ref_pct": REF_PCT,
                                  "warmup_start_frac": WARMUP_START_FRAC, "warmup_frac": WARMUP_FRAC},
                     "l2_ratio": {m: recipes.method(METHODS[m]).l2_ratio for m in methods}, "topk_k": size.target_l0,
                     "aux_coeff": 1 / 32},
        "published_l0_25": PUBLISHED_L0_25, "published_protocol": PUBLISHED_PROTOCOL,
        "timing": {"model_build_s": build_s, "sampling_s": sample_s, "probe": probe},
        "environment": {"device": _device_name(args.device), "python": platform.python_version(),
                        "torch": torch.__version__, "sae_lens": sl.version, "commit": args.commit,
                        "command": " ".join(sys.argv)},
        "records": [],
    }
    l1_start = 0.5 * float(x_cal.norm(dim=1).mean()) / math.sqrt(size.target_l0)
    relu_trials: list[dict] = []
    for method in methods:
        t0 = time.perf_counter()
        trained: dict[float, tuple[SAE, list[dict]]] = {}
        if args.deadline_s and time.perf_counter() - t_start > args.deadline_s:
            print(f"{method}: skipped, past the {args.deadline_s} s deadline", flush=True)
            report["skipped"] = report.get("skipped", []) + [method]
            continue
        if method in calibrated:
            trials: list[dict[str, float]] = []

            def measure(l1: float, method: str = method) -> float:
                if trials and args.deadline_s and time.perf_counter() - t_start > args.deadline_s:
                    raise _OutOfTime
                trained[l1] = train_one(method, size, data, l1, steps, args)
                trials.append({"l1_coeff": l1, "l0": held_out_l0(trained[l1][0], x_cal)})
                print(f"  {method} l1={l1:.4g} L0={trials[-1]['l0']:.2f}", flush=True)
                return trials[-1]["l0"]
            start = power_law_start(relu_trials, size.target_l0) if relu_trials else l1_start
            try:
                found = search_l1(measure, size.target_l0, start, trials=args.calib_trials, rel_tol=args.rel_tol)
                stopped = None
            except _OutOfTime:  # keep the closest trial so far, flagged
                best = min(trials, key=lambda t: abs(math.log(max(t["l0"], 1e-3) / size.target_l0)))
                found = {**best, "trials": trials,
                         "converged": abs(best["l0"] / size.target_l0 - 1) <= args.rel_tol}
                stopped = f"calibration stopped at the {args.deadline_s} s deadline after {len(trials)} trials"
            if method == "relu_l1":
                relu_trials = found["trials"]
            sae, history = trained[found["l1_coeff"]]
            calibration = {"l1_coeff": found["l1_coeff"], "calibration_l0": found["l0"],
                           "calibration_converged": found["converged"], "calibration_trials": found["trials"],
                           "calibration_stopped": stopped}
        else:
            sae, history = train_one(method, size, data, 0.0, steps, args)
            calibration = {"l1_coeff": None, "calibration_l0": held_out_l0(sae, x_cal), "calibration_converged": True,
                           "calibration_trials": [], "calibration_stopped": None}
        train_s = time.perf_counter() - t0
        result = score(sl, model, sae, args)
        record = {"method": method, "label": LABELS[method], "variant": recipes.method(METHODS[method]).variant, **calibration,
                  "l2_coeff": getattr(sae, "l2_coeff", 0.0), "steps": steps, "batch_size": args.batch_size,
                  "training_samples": steps * args.batch_size, "l0": result["sae_l0"], "mcc": result["mcc"],
                  "f1": result["classification"]["f1_score"], "dead_pct": result["dead_pct"],
                  "dead_latents": result["dead_latents"], "ev": result["explained_variance"],
                  "uniqueness": result["uniqueness"], "saelens_eval": result, "train_s": train_s,
                  "history": history}
        report["records"].append(record)
        print(f"{method}: L0 {record['l0']:.2f} MCC {record['mcc']:.4f} F1 {record['f1']:.4f} "
              f"dead {record['dead_pct']:.2f}% EV {record['ev']:.4f} ({train_s:.1f} s)", flush=True)
        write(report, Path(args.out))
    report["timing"]["total_s"] = time.perf_counter() - t_start
    write(report, Path(args.out))
    return report


class _OutOfTime(Exception):
    """The run passed ``--deadline-s``: no further calibration trial is started."""


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def build_parser(prog: str = "benchmarks/synthsaebench.py", description: str | None = None) -> argparse.ArgumentParser:
    """The command line of this run (benchmarks/synthsaebench_shared.py adds its own options to it)."""
    parser = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="16k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=["batch_topk", "relu_l1", "aen", "topk", "elastic_net"])
    parser.add_argument("--steps", type=int, default=195_312, help="steps per run (the published 200M samples)")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="if > 0: fewer steps, so that all runs fit this many seconds of training (timed first)")
    parser.add_argument("--deadline-s", type=float, default=0.0,
                        help="if > 0: start no calibration trial or method after this many seconds (flagged)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--calib-trials", type=int, default=4)
    parser.add_argument("--calib-samples", type=int, default=16_384)
    parser.add_argument("--rel-tol", type=float, default=0.1)
    parser.add_argument("--eval-samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commit", default="unknown", help="git commit of the code (the device copy has no .git)")
    parser.add_argument("--stream", action="store_true",
                        help="sample training batches as they are needed instead of holding them (large budgets)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite OUT/synthsaebench.md from OUT/synthsaebench.json (no run)")
    parser.add_argument("--out", default="benchmarks")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.render:
        report = json.loads((Path(args.out) / "synthsaebench.json").read_text())
        write(report, Path(args.out))
        return report
    return run(args)


if __name__ == "__main__":
    main()
