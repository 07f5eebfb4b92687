"""SynthSAEBench-16k (SAELens's synthetic benchmark, issue 11 section 3): our SAE variants at L0 = 25, scored by
SAELens's own evaluation (MCC, F1, dead latents) next to SAELens's published table.

    .venv-saelens/bin/python benchmarks/synthsaebench.py --device cuda --budget-s 100 --out benchmarks

One process holds both sides: SAELens's synthetic model draws the data and scores the SAEs
(``sae_lens.synthetic``, imported through ``benchmarks/saelens_synthetic.py``, which also works where sae-lens
cannot be installed), and ``aen_mini`` trains them (its SAE and trainer import no transformer-lens, so they run
in the sae-lens venv). The 16k model is built from its published configuration (seed 42), exactly as SAELens's
``create_synth_bench_16k_model.py`` does, because the Hugging Face copy cannot be downloaded offline.

Every penalised method's l1 is calibrated to the target L0 by ``aen_mini.calibrate.search_l1``; each trial is a
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
from aen_mini.atomic import atomic_write_text  # noqa: E402
from aen_mini.calibrate import power_law_start, search_l1  # noqa: E402
from aen_mini.sae import SAE, make_sae  # noqa: E402
from aen_mini.sweep import EMA_BETA, GAMMA, REF_PCT, WARMUP_FRAC, WARMUP_START_FRAC, _DevicePool  # noqa: E402
from aen_mini.train import TrainConfig, train  # noqa: E402

# SAELens docs/synth_sae_bench.md, "Raw results for SynthSAEBench-16k at selected L0s", L0 = 25: mean ± std over
# seeds, SAEs of width 4096 trained on 200M samples (batch 1024, lr 3e-4), from SAELens's synth-sae-bench-experiments.
PUBLISHED_L0_25 = {
    "BatchTopK": {"f1": (0.7316, 0.0010), "mcc": (0.7574, 0.0003), "uniqueness": (0.9837, 0.0015), "ev": (0.7923, 0.0003)},
    "Matryoshka": {"f1": (0.8793, 0.0021), "mcc": (0.7927, 0.0006), "uniqueness": (0.9987, 0.0005), "ev": (0.7792, 0.0004)},
    "MatchPursuit": {"f1": (0.4464, 0.0044), "mcc": (0.6930, 0.0030), "uniqueness": (0.8281, 0.0069), "ev": (0.8351, 0.0003)},
    "Standard L1": {"f1": (0.5562, 0.0020), "mcc": (0.6039, 0.0012), "uniqueness": (0.8976, 0.0021), "ev": (0.7654, 0.0001)},
    "JumpReLU": {"f1": (0.7317, 0.0034), "mcc": (0.7527, 0.0009), "uniqueness": (0.9885, 0.0010), "ev": (0.7951, 0.0004)},
}
PUBLISHED_PROTOCOL = {"training_samples": 200_000_000, "batch_size": 1024, "lr": 3e-4, "d_sae": 4096,
                      "eval_samples": 1_000_000, "seeds": 5, "autocast": "bf16",
                      "standard_l1": "l1 coefficient warm-up over the first third, then autotuned to the target L0"}


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

# name: (aen_mini variant, l2 = ratio * l1, adaptive reweighting); the same settings as the synthetic sweep
METHODS: dict[str, tuple[str, float, bool]] = {
    "relu_l1": ("relu_l1", 0.0, False),
    "topk": ("topk", 0.0, False),
    "batch_topk": ("batch_topk", 0.0, False),
    "elastic_net": ("elastic_net", 0.1, False),
    "aen": ("aen", 0.1, True),
}
LABELS = {"relu_l1": "ReLU + L1", "topk": "TopK + AuxK", "batch_topk": "BatchTopK + AuxK",
          "elastic_net": "Elastic net", "aen": "AEN"}


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
    variant, l2_ratio, adaptive = METHODS[method]
    common = {"dead_after_tokens": batch_size * max(1, steps // 20), "seed": seed}
    if variant in ("topk", "batch_topk"):
        return make_sae(variant, size.hidden_dim, size.d_sae, k=size.target_l0, aux_coeff=1 / 32, **common)
    hyper: dict[str, Any] = {"l1_coeff": l1_coeff}
    if l2_ratio:
        hyper["l2_coeff"] = l2_ratio * l1_coeff
    if adaptive:
        hyper.update(gamma=GAMMA, ema_beta=EMA_BETA, ref_pct=REF_PCT, warmup_start=int(WARMUP_START_FRAC * steps),
                     warmup_steps=int(WARMUP_FRAC * steps))
    return make_sae(variant, size.hidden_dim, size.d_sae, **hyper, **common)


def draw(model: Any, n: int, seed: int, chunk: int = 16_384) -> torch.Tensor:
    """``n`` hidden activations from SAELens's sampler (fixed seed, so every run sees the same samples)."""
    torch.manual_seed(seed)
    return torch.cat([model.sample(min(chunk, n - i)) for i in range(0, n, chunk)])


def train_one(method: str, size: Size, pool: torch.Tensor, l1_coeff: float, steps: int, args: argparse.Namespace) -> tuple[SAE, list[dict]]:
    sae = build_sae(method, size, l1_coeff, steps, args.batch_size, args.seed)
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      precision="bf16" if args.device.startswith("cuda") else "fp32",
                      log_every=max(1, steps // 10), progress=False)
    result = train(sae, _DevicePool(pool, seed=args.seed), cfg)
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
    steps = int(args.budget_s / (method_count * step_s + args.batch_size * sample_s))
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
    calibrated = [m for m in methods if METHODS[m][0] not in ("topk", "batch_topk")]
    runs_max = len(methods) - len(calibrated) + args.calib_trials * len(calibrated)
    probe = probe_steps(runs_max, size, model, args) if args.budget_s else None
    steps = args.steps if probe is None else max(1, min(args.steps, probe["steps_fitting_budget"]))
    t0 = time.perf_counter()
    pool = draw(model, steps * args.batch_size, seed=args.seed).to(args.device)
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
                     "samples": "one fixed draw of training samples, each seen once per run, the same for every run",
                     "calibration": f"search_l1 on the held-out L0 of {args.calib_samples} samples, at most "
                                    f"{args.calib_trials} full-length runs, rel_tol {args.rel_tol}",
                     "eval_samples": args.eval_samples, "seed": args.seed,
                     "adaptive": {"gamma": GAMMA, "ema_beta": EMA_BETA, "ref_pct": REF_PCT,
                                  "warmup_start_frac": WARMUP_START_FRAC, "warmup_frac": WARMUP_FRAC},
                     "l2_ratio": {m: METHODS[m][1] for m in methods}, "topk_k": size.target_l0,
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
                trained[l1] = train_one(method, size, pool, l1, steps, args)
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
            sae, history = train_one(method, size, pool, 0.0, steps, args)
            calibration = {"l1_coeff": None, "calibration_l0": held_out_l0(sae, x_cal), "calibration_converged": True,
                           "calibration_trials": [], "calibration_stopped": None}
        train_s = time.perf_counter() - t0
        result = score(sl, model, sae, args)
        record = {"method": method, "label": LABELS[method], "variant": METHODS[method][0], **calibration,
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


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "synthsaebench.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "synthsaebench.md", markdown(report))


def markdown(report: dict[str, Any]) -> str:
    """The section for the replication report: our numbers beside the published L0 = 25 table."""
    p, env, pub = report["protocol"], report["environment"], report["published_protocol"]
    share = p["training_samples"] / pub["training_samples"]
    lines = [
        f"## {report['benchmark']}: our SAE variants at L0 = {report['target_l0']}",
        "",
        f"Model: {report['model_source']}. True L0 of the model: {report['model_true_l0']:.1f}.",
        f"Budget: {p['training_samples']:,} training samples per run ({p['steps']} steps x {p['batch_size']}), "
        f"{share:.2%} of the published {pub['training_samples']:,}; one seed ({p['seed']}) against the published "
        f"{pub['seeds']}; scored on {p['eval_samples']:,} samples (published: {pub['eval_samples']:,}).",
        "Metrics are SAELens's own (`eval_sae_on_synthetic_data`): MCC (Hungarian matching of decoder columns to "
        "the true features), F1 (each latent as a detector of its best-matching feature), dead % (latents that "
        "never fired on the evaluation samples).",
        "",
        "| SAE | source | L0 | MCC | F1 | dead % | EV | uniqueness | l1 calibrated (trials) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["records"]:
        cal = "k fixed" if r["l1_coeff"] is None else (
            f"{r['l1_coeff']:.3g}, {'converged' if r['calibration_converged'] else '**not converged**'} "
            f"({len(r['calibration_trials'])}{', deadline' if r['calibration_stopped'] else ''})")
        lines.append(f"| {r['label']} | ours, {share:.2%} budget | {r['l0']:.1f} | {r['mcc']:.3f} | {r['f1']:.3f} | "
                     f"{r['dead_pct']:.1f} | {r['ev']:.3f} | {r['uniqueness']:.3f} | {cal} |")
    for name, row in PUBLISHED_L0_25.items():
        lines.append(f"| {name} | SAELens, published | 25 | {row['mcc'][0]:.3f} ± {row['mcc'][1]:.3f} | "
                     f"{row['f1'][0]:.3f} ± {row['f1'][1]:.3f} | n/a | {row['ev'][0]:.3f} | "
                     f"{row['uniqueness'][0]:.3f} | published protocol |")
    if report.get("skipped"):
        lines += ["", f"Not run (past the time limit of the run): {', '.join(report['skipped'])}."]
    lines += [
        "",
        "Differences from the published protocol: " + "; ".join([
            f"{share:.2%} of the training samples", "one seed", "our trainer (" + p["optimizer"] + "; " + p["init"] + ")",
            f"l1 calibrated by separate full-length runs ({p['calibration']}) instead of a warm-up plus an "
            "in-run autotuner", "TopK/BatchTopK with our AuxK (coefficient 1/32)",
            "the 16k model rebuilt from its configuration, not downloaded"]) + ".",
        "",
        f"Device: {env['device']}; torch {env['torch']}, sae-lens {env['sae_lens']}, Python {env['python']}; "
        f"commit {env['commit']}.",
        f"Command: `{env['command']}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="benchmarks/synthsaebench.py", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--out", default="benchmarks")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
