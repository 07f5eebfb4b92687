"""The synthetic starvation sweep: every SAE family on the authors' spiked dictionaries, across coherence rho.

For each method and each rho the L1 strength is first calibrated (bisection on log l1) so that
every method sits near the true sparsity L0 = k; TopK is given k directly. Then each (method, rho, seed) is
trained once and scored with :func:`aen_mini.eval.metrics.evaluate` on held-out samples with ground truth.

Training batches come from a pool of fresh spiked samples held on the training device (drawn once per
(rho, seed) and shared by every method), because drawing spiked samples on the CPU is slower than an SAE step
on a GPU. Evaluation uses a separate held-out sample with its true codes.

Run it with ``python -m aen_mini.experiments.sweep --size ci|full --device cpu|cuda --out DIR`` (or benchmarks/synthetic.py).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from aen_mini.io.atomic import atomic_write_text
from aen_mini.eval.calibrate import search_l1
from aen_mini.data.source import TensorSource
from aen_mini.data.synthetic import SpikedSource
from aen_mini.eval.metrics import evaluate, l0
from aen_mini.eval.recovery import dictionary_recovery
from aen_mini.sae import SAE, make_sae
from aen_mini.train.loop import TrainConfig, train
from aen_mini.validate import check_choice, check_positive_int

__all__ = ["Method", "METHODS", "MAIN_METHODS", "SweepSize", "SIZES", "RHOS", "build_sae", "training_source", "held_out",
           "train_method", "calibrate_l1", "train_calibrated", "matched_code_pairs", "latent_matched_cos", "run_synthetic_sweep", "summarise", "markdown_table", "claim_check",
           "claim_statement", "write_results", "load_results", "report_markdown", "main"]


@dataclass(frozen=True)
class Method:
    """One row of the comparison: an SAE variant plus how its penalties and the trainer are set."""

    name: str
    variant: str
    label: str
    l2_ratio: float = 0.0  # l2_coeff = l2_ratio * l1_coeff (the authors keep l2 small relative to l1)
    adaptive: bool = False  # AdaptiveLasso / AEN: reweighting with the delayed warm-up below
    resample: bool = False  # dead-latent resampling by the trainer (Bricken et al.)

    @property
    def calibrated(self) -> bool:
        """Whether l1 is tuned to the target L0 (TopK fixes L0 = k by construction)."""
        return self.variant != "topk"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("relu_l1", "relu_l1", "ReLU + L1"),
    Method("relu_l1_resample", "relu_l1", "ReLU + L1 + resampling", resample=True),
    Method("topk_auxk", "topk", "TopK + AuxK"),
    Method("elastic_net", "elastic_net", "Elastic net", l2_ratio=0.1),
    Method("adaptive_lasso", "adaptive_lasso", "Adaptive lasso", adaptive=True),
    Method("aen", "aen", "AEN", l2_ratio=0.1, adaptive=True),
    # Supplementary: an L2 term as large as the L1 one, to see whether strong convexity changes starvation.
    Method("elastic_net_strong_l2", "elastic_net", "Elastic net (l2 = l1)", l2_ratio=1.0),
    Method("aen_strong_l2", "aen", "AEN (l2 = l1)", l2_ratio=1.0, adaptive=True),
)}
MAIN_METHODS: tuple[str, ...] = ("relu_l1", "relu_l1_resample", "topk_auxk", "elastic_net", "adaptive_lasso", "aen")

RHOS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)

# Adaptive reweighting, following the authors: gamma = 1, top-1% reference, warm-up from 25% of training,
# linear over the next 25%. beta = 0.99 rather than 0.999 because our runs are a few thousand steps, and an
# EMA with a 1000-step memory would still remember its initial value when the reweighting switches on.
GAMMA, EMA_BETA, REF_PCT = 1.0, 0.99, 0.01
WARMUP_START_FRAC, WARMUP_FRAC = 0.25, 0.25


@dataclass(frozen=True)
class SweepSize:
    """Problem and training sizes. d_sae = m: as many latents as true atoms (the paper's setting)."""

    n: int  # input dimension
    m: int  # true atoms
    k: int  # true active atoms per sample (the L0 every method is calibrated to)
    d_sae: int
    batch_size: int
    steps: int
    # Calibration runs are as long as the real ones: the adaptive methods' L0 keeps falling after the warm-up,
    # so a shorter run mis-calibrates them.
    calib_steps: int
    calib_trials: int  # most calibration runs per (method, rho)
    pool: int  # training samples held on the device, reused every epoch
    eval_samples: int  # held-out samples for every reported metric (dead % included)
    lr: float = 4e-3
    magnitude: tuple[float, float] = (1.0, 3.0)

    @property
    def dead_after_tokens(self) -> int:
        """Silent for 5% of training counts as dead for AuxK and resampling."""
        return self.batch_size * max(1, self.steps // 20)


SIZES: dict[str, SweepSize] = {
    "ci": SweepSize(n=64, m=128, k=4, d_sae=128, batch_size=256, steps=600, calib_steps=600, calib_trials=5,
                    pool=16384, eval_samples=8192),
    "full": SweepSize(n=256, m=1024, k=16, d_sae=1024, batch_size=4096, steps=1500, calib_steps=1500,
                      calib_trials=5, pool=262144, eval_samples=8192),
}


def _size(size: str | SweepSize) -> SweepSize:
    if isinstance(size, SweepSize):
        return size
    return SIZES[check_choice("size", size, SIZES)]


def _method(method: str | Method) -> Method:
    if isinstance(method, Method):
        return method
    return METHODS[check_choice("method", method, METHODS)]


def build_sae(method: str | Method, size: str | SweepSize, l1_coeff: float, steps: int, seed: int) -> SAE:
    """The method's SAE for a run of ``steps`` steps (the adaptive warm-up is a fraction of the run)."""
    method, size = _method(method), _size(size)
    common = {"dead_after_tokens": size.dead_after_tokens, "seed": seed}
    if method.variant == "topk":
        # AuxK with the default k_aux = d_in / 2 and coefficient 1/32 (Gao et al. 2024).
        return make_sae("topk", size.n, size.d_sae, k=size.k, aux_coeff=1 / 32, **common)
    hyper: dict[str, Any] = {"l1_coeff": l1_coeff}
    if method.l2_ratio:
        hyper["l2_coeff"] = method.l2_ratio * l1_coeff
    if method.adaptive:
        hyper.update(gamma=GAMMA, ema_beta=EMA_BETA, ref_pct=REF_PCT, warmup_start=int(WARMUP_START_FRAC * steps),
                     warmup_steps=int(WARMUP_FRAC * steps))
    return make_sae(method.variant, size.n, size.d_sae, **hyper, **common)


class _DevicePool(TensorSource):
    """A TensorSource whose shuffling permutation lives beside the activations: indexing a GPU tensor with a
    CPU index copies the index synchronously, which would stall the GPU once per training step."""

    def _permutation(self, epoch: int) -> torch.Tensor:
        return super()._permutation(epoch).to(self.activations.device)


def training_source(size: str | SweepSize, rho: float, seed: int, device: str = "cpu") -> tuple[SpikedSource, TensorSource]:
    """The spiked source for (rho, seed) and a shuffled pool of ``size.pool`` of its samples on ``device``."""
    size = _size(size)
    source = SpikedSource(n=size.n, m=size.m, k=size.k, rho=rho, magnitude=size.magnitude, seed=seed)
    chunk = min(size.pool, 8192)
    pool = torch.cat([source.next_batch(chunk) for _ in range(math.ceil(size.pool / chunk))])[:size.pool]
    return source, _DevicePool(pool.to(device), seed=seed)


def held_out(source: SpikedSource, size: str | SweepSize, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out (x, true codes) on ``device``; drawn by ``sample``, a stream disjoint from the training pool."""
    x, codes = source.sample(_size(size).eval_samples, seed=0)
    return x.to(device), codes.to(device)


def train_method(method: str | Method, size: str | SweepSize, pool: TensorSource, l1_coeff: float, seed: int,
                 steps: int | None = None, device: str = "cpu",
                 callback: Callable[[int, dict[str, float], SAE], None] | None = None) -> tuple[SAE, list[dict], float]:
    """Train one SAE of ``method`` on ``pool``; return (sae, training history, wall seconds).

    The pool is rewound afterwards, so every run from one pool sees the same batches.
    """
    method, size = _method(method), _size(size)
    steps = check_positive_int("steps", steps if steps is not None else size.steps)
    sae = build_sae(method, size, l1_coeff, steps, seed)
    # The last resampling lands about 20% of training before the end, so resampled latents get to train.
    cfg = TrainConfig(steps=steps, batch_size=size.batch_size, lr=size.lr, lr_decay_start=0.8, seed=seed,
                      device=device, resample_every=steps // 5 + 1 if method.resample else 0,
                      log_every=max(1, steps // 20), progress=False)
    pool_state = pool.state_dict()
    result = train(sae, pool, cfg, callback=callback)
    pool.load_state_dict(pool_state)
    return result.sae.eval(), result.history, result.wall_s


def _held_out_l0(sae: SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        return l0(sae.encode(x))


def calibrate_l1(method: str | Method, rho: float, target_l0: float | None = None, size: str | SweepSize = "ci",
                 device: str = "cpu", seed: int = 0, l1_start: float | None = None, rel_tol: float = 0.1,
                 trials: int | None = None, pool: tuple[SpikedSource, TensorSource] | None = None,
                 on_trial: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Find l1 with held-out L0 near ``target_l0`` (default: the true k) after a short run of ``size.calib_steps``.

    Multiplies l1 by 4 until the target is bracketed, then bisects on log l1; stops at |L0 / target - 1| <=
    ``rel_tol`` or after ``trials`` runs (default ``size.calib_trials``) and returns the closest trial:
    ``{"l1_coeff", "l0", "trials": [{"l1_coeff", "l0"}, ...]}``. TopK needs no calibration: l1 is None, L0 = k.
    """
    method, size = _method(method), _size(size)
    target = float(target_l0 if target_l0 is not None else size.k)
    if not target > 0:
        raise ValueError(f"target_l0 must be > 0, got {target_l0}")
    if not method.calibrated:
        return {"l1_coeff": None, "l0": float(size.k), "converged": True, "trials": []}
    trials = check_positive_int("trials", trials if trials is not None else size.calib_trials)
    source, train_pool = pool if pool is not None else training_source(size, rho, seed, device)
    x_eval, _ = held_out(source, size, device)
    # A first guess on the scale of a typical atom's share of the signal, ||x|| / sqrt(k).
    l1 = l1_start if l1_start is not None else 0.5 * x_eval.norm(dim=1).mean().item() / math.sqrt(size.k)

    def measure(l1_coeff: float) -> float:
        sae, _, _ = train_method(method, size, train_pool, l1_coeff, seed, steps=size.calib_steps, device=device)
        measured = _held_out_l0(sae, x_eval)
        if on_trial is not None:
            on_trial({"l1_coeff": l1_coeff, "l0": measured})
        return measured

    found = search_l1(measure, target, l1, trials=trials, rel_tol=rel_tol)
    return {"l1_coeff": found["l1_coeff"], "l0": found["l0"], "converged": found["converged"], "trials": found["trials"]}


def _record(method: Method, size: SweepSize, rho: float, seed: int, sae: SAE, history: list[dict], wall_s: float,
            calibration: dict, source: SpikedSource, device: str) -> dict[str, Any]:
    x_eval, codes_eval = held_out(source, size, device)
    report = evaluate(sae, x_eval, codes_eval, source.dictionary.to(device))
    return {
        "method": method.name, "label": method.label, "variant": method.variant, "rho": rho, "seed": seed,
        "dead_pct": report["dead_pct"], "l0": report["l0"], "ev": report["ev"], "mse": report["mse"],
        "shrinkage": report["shrinkage"], "support_f1": report["support_f1"],
        "support_precision": report["support_precision"], "support_recall": report["support_recall"],
        "dict_recovery": report["recovery_frac_above"], "recovery_mean_cos": report["recovery_mean_cos"],
        "code_mse": report["code_mse"], "usage_entropy": report["usage_entropy"],
        "l1_coeff": calibration["l1_coeff"], "l2_coeff": getattr(sae, "l2_coeff", 0.0) if method.l2_ratio else 0.0,
        "gamma": GAMMA if method.adaptive else None, "ema_beta": EMA_BETA if method.adaptive else None,
        "topk_k": size.k if method.variant == "topk" else None, "calibration_l0": calibration["l0"],
        "calibration_converged": calibration.get("converged"),
        "calibration_trials": calibration["trials"],
        "steps": size.steps, "tokens": size.steps * size.batch_size, "wall_s": wall_s,
        "history": [{key: h[key] for key in ("step", "mse", "l0", "dead_pct") if key in h} for h in history],
    }


def train_calibrated(method: str | Method, rho: float, size: str | SweepSize = "ci", seed: int = 0, device: str = "cpu",
                     callback: Callable[[int, dict[str, float], SAE], None] | None = None) -> tuple[SAE, dict[str, Any]]:
    """Calibrate l1 for (method, rho) on this seed's data, train one SAE, and score it: (sae, record).

    ``callback(step, record, sae)`` is passed to the trainer for the final run (not the calibration runs).
    """
    method, size = _method(method), _size(size)
    pool = training_source(size, rho, seed, device)
    calibration = calibrate_l1(method, rho, size=size, device=device, seed=seed, pool=pool)
    sae, history, wall_s = train_method(method, size, pool[1], calibration["l1_coeff"] or 0.0, seed, device=device,
                                        callback=callback)
    return sae, _record(method, size, rho, seed, sae, history, wall_s, calibration, pool[0], device)


def matched_code_pairs(sae: SAE, rho: float, size: str | SweepSize = "ci", seed: int = 0,
                       device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(true magnitudes, learned codes) on held-out data for every (sample, true atom) with the atom active,
    reading the learned latent that the Hungarian matching pairs with that atom (1-D float64 tensors, CPU).

    A slope below 1 of learned against true is shrinkage; learned codes of exactly 0 are missed atoms.
    """
    size = _size(size)
    source = SpikedSource(n=size.n, m=size.m, k=size.k, rho=rho, magnitude=size.magnitude, seed=seed)
    x, codes = held_out(source, size, device)
    matching = dictionary_recovery(source.dictionary.to(device), sae.W_dec.detach())["matching"]
    with torch.no_grad():
        h = sae.encode(x)
    matched = matching >= 0
    true = codes[:, matched].double().cpu()
    learned = h[:, matching[matched].to(h.device)].double().cpu()
    active = true != 0
    return true[active], learned[active]


def latent_matched_cos(sae: SAE, rho: float, size: str | SweepSize = "ci", seed: int = 0) -> torch.Tensor:
    """Per learned latent (d_sae,), the cosine of its atom with the true atom the Hungarian matching pairs it
    with; 0 for latents matched to no true atom (CPU, float64)."""
    size = _size(size)
    source = SpikedSource(n=size.n, m=size.m, k=size.k, rho=rho, magnitude=size.magnitude, seed=seed)
    recovery = dictionary_recovery(source.dictionary, sae.W_dec.detach().cpu())
    cos = torch.zeros(sae.d_sae, dtype=torch.float64)
    matched = recovery["matching"] >= 0
    cos[recovery["matching"][matched]] = recovery["matched_cos"][matched]
    return cos


def _sweep_rho(methods: list[Method], rho: float, seeds: list[int], size: SweepSize, device: str,
               advance: Callable[[int], Any], threads: int | None = None) -> list[dict[str, Any]]:
    """Calibrate every method on seed 0's data at this rho, then train each (method, seed); ``advance(steps)``
    reports progress in training steps."""
    if threads is not None:
        torch.set_num_threads(threads)
    calibrations: dict[str, dict] = {}
    records = []
    for seed in seeds:
        pool = training_source(size, rho, seed, device)
        for method in methods:
            if method.name not in calibrations:
                calibration = calibrate_l1(method, rho, size=size, device=device, seed=seed, pool=pool,
                                           on_trial=lambda _: advance(size.calib_steps))
                # trials that bisection did not need count as done, so the ETA stays honest
                if method.calibrated:
                    advance((size.calib_trials - len(calibration["trials"])) * size.calib_steps)
                calibrations[method.name] = calibration
            calibration = calibrations[method.name]
            sae, history, wall_s = train_method(method, size, pool[1], calibration["l1_coeff"] or 0.0, seed,
                                                device=device)
            records.append(_record(method, size, rho, seed, sae, history, wall_s, calibration, pool[0], device))
            advance(size.steps)
    return records


def run_synthetic_sweep(methods: Iterable[str] = MAIN_METHODS, rhos: Iterable[float] = RHOS,
                        seeds: Iterable[int] = (0, 1, 2), size: str | SweepSize = "ci", device: str = "cpu",
                        progress: bool = True, on_record: Callable[[dict], None] | None = None,
                        workers: int = 1) -> list[dict[str, Any]]:
    """Calibrate (on seed 0's data) and train every (method, rho, seed); one record per run, see ``_record``.

    ``workers`` > 1 runs that many rho values at once in separate processes: a small SAE's training loop is
    bound by Python and kernel launches, so one process leaves most of a GPU idle. ``on_record`` is called
    with each record as soon as it reaches this process (to save partial results). Records come back ordered
    by (rho, method, seed).
    """
    size = _size(size)
    methods, rhos, seeds = [_method(m) for m in methods], [float(r) for r in rhos], [int(s) for s in seeds]
    if not methods or not rhos or not seeds:
        raise ValueError("methods, rhos and seeds must each be non-empty")
    workers = min(check_positive_int("workers", workers), len(rhos))
    n_calibrated = sum(m.calibrated for m in methods)
    planned = len(rhos) * (n_calibrated * size.calib_trials * size.calib_steps + len(methods) * len(seeds) * size.steps)
    bar = tqdm(total=planned, unit="step", disable=not progress, dynamic_ncols=True, desc="synthetic sweep")
    records: list[dict[str, Any]] = []

    def collect(new: list[dict]) -> None:
        for record in new:
            records.append(record)
            if on_record is not None:
                on_record(record)

    if workers == 1:
        for rho in rhos:
            collect(_sweep_rho(methods, rho, seeds, size, device, bar.update))
    else:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
        threads = max(1, (os.cpu_count() or 1) // workers)
        with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
            queue = manager.Queue()
            pending = {pool.submit(_sweep_rho, methods, rho, seeds, size, device, queue.put, threads) for rho in rhos}
            while pending:
                done, pending = wait(pending, timeout=1.0)
                while not queue.empty():
                    bar.update(queue.get())
                for future in done:
                    collect(future.result())
    bar.close()
    order = {m.name: i for i, m in enumerate(methods)}
    return sorted(records, key=lambda r: (rhos.index(r["rho"]), order[r["method"]], r["seed"]))


# --- summaries ---------------------------------------------------------------------------------------------
TABLE_METRICS = ("dead_pct", "l0", "ev", "shrinkage", "support_f1", "dict_recovery", "recovery_mean_cos")


def summarise(records: list[dict[str, Any]], metrics: Iterable[str] = TABLE_METRICS) -> list[dict[str, Any]]:
    """Mean, (sample) standard deviation, min and max over seeds per (method, rho): keys ``<metric>_mean``,
    ``<metric>_std``, ``<metric>_min``, ``<metric>_max``."""
    metrics = list(metrics)
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["rho"]), []).append(r)
    rows = []
    for (method, rho), group in groups.items():
        row: dict[str, Any] = {"method": method, "label": group[0]["label"], "rho": rho, "n_seeds": len(group),
                               "l1_coeff": group[0]["l1_coeff"]}
        for metric in metrics:
            values = torch.tensor([float(r[metric]) for r in group], dtype=torch.float64)
            row[f"{metric}_mean"] = values.mean().item()
            row[f"{metric}_std"] = values.std().item() if len(group) > 1 else 0.0
            row[f"{metric}_min"], row[f"{metric}_max"] = values.min().item(), values.max().item()
        rows.append(row)
    return rows


def markdown_table(records: list[dict[str, Any]], metrics: Iterable[str] = TABLE_METRICS) -> str:
    """The summary as a Markdown table, one row per (method, rho), mean ± std over seeds."""
    metrics = list(metrics)
    head = "| method | rho | l1 | " + " | ".join(metrics) + " |"
    lines = [head, "|" + " --- |" * (len(metrics) + 3)]
    for row in sorted(summarise(records, metrics), key=lambda r: (list(METHODS).index(r["method"]), r["rho"])):
        l1 = "k" if row["l1_coeff"] is None else f"{row['l1_coeff']:.3g}"
        cells = [f"{row[f'{m}_mean']:.3g} ± {row[f'{m}_std']:.2g}" for m in metrics]
        lines.append(f"| {row['label']} | {row['rho']:g} | {l1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claim_check(records: list[dict[str, Any]], dead_ratio: float = 0.5, ev_margin: float = 0.05) -> dict[str, Any]:
    """The paper's claim at the largest rho: AEN keeps far fewer dead latents than ReLU + L1 and TopK with
    competitive explained variance. Per baseline b: "far fewer" means AEN's mean dead % is at most
    ``dead_ratio`` times b's and at least 1 point below it; "competitive" means AEN's mean EV is at least b's
    minus ``ev_margin``. ``reproduced`` needs all four; None if a method is missing."""
    rows = {(r["method"], r["rho"]): r for r in summarise(records, ("dead_pct", "ev"))}
    rho = max(r["rho"] for r in records)
    get = {name: rows.get((name, rho)) for name in ("aen", "relu_l1", "topk_auxk")}
    result: dict[str, Any] = {"rho": rho, "dead_ratio": dead_ratio, "ev_margin": ev_margin,
                              **{f"{name}_{metric}": row[f"{metric}_mean"] if row else None
                                 for name, row in get.items() for metric in ("dead_pct", "ev")}}
    if any(row is None for row in get.values()):
        return {**result, "reproduced": None}
    aen_dead, aen_ev = result["aen_dead_pct"], result["aen_ev"]
    for b in ("relu_l1", "topk_auxk"):
        result[f"fewer_dead_than_{b}"] = aen_dead <= min(dead_ratio * result[f"{b}_dead_pct"], result[f"{b}_dead_pct"] - 1)
        result[f"competitive_ev_with_{b}"] = aen_ev >= result[f"{b}_ev"] - ev_margin
    result["reproduced"] = all(v for k, v in result.items() if k.startswith(("fewer_dead_than", "competitive_ev_with")))
    return result


def claim_statement(check: dict[str, Any]) -> str:
    """One plain paragraph saying whether the claim is reproduced, with the numbers it rests on."""
    if check["reproduced"] is None:
        return "The claim cannot be checked: AEN, ReLU + L1 and TopK + AuxK must all be in the sweep."
    names = {"relu_l1": "ReLU + L1", "topk_auxk": "TopK + AuxK"}
    parts = [f"{'far fewer' if check[f'fewer_dead_than_{b}'] else 'not far fewer'} dead latents than {name} "
             f"({check['aen_dead_pct']:.2g}% vs {check[f'{b}_dead_pct']:.2g}%) and "
             f"{'competitive' if check[f'competitive_ev_with_{b}'] else 'not competitive'} explained variance "
             f"({check['aen_ev']:.3f} vs {check[f'{b}_ev']:.3f})" for b, name in names.items()]
    verdict = "**Reproduced**" if check["reproduced"] else "**Not fully reproduced**"
    return (f"Claim: at high rho, AEN keeps far fewer dead latents than ReLU + L1 and TopK with competitive explained "
            f"variance. {verdict} in these runs. At rho = {check['rho']:g}, AEN has {'; '.join(parts)}. Criteria: "
            f"AEN's dead % at most {check['dead_ratio']:g}x a baseline's and at least 1 point lower; AEN's EV at "
            f"least the baseline's minus {check['ev_margin']:g}.")


def run_metadata(size: str | SweepSize, device: str, argv: list[str], workers: int = 1) -> dict[str, Any]:
    """Everything a result file must say about how it was made (see book/results/README.md)."""
    import numpy
    import scipy
    size_name = size if isinstance(size, str) else "custom"
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"command": " ".join(argv), "aen_mini_version": _package_version(), "git_commit": _git_commit(),
            "torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "python": platform.python_version(), "device": device, "gpu": gpu, "cpu_threads": torch.get_num_threads(),
            "workers": workers, "size": size_name, "sizes": asdict(_size(size)),
            "source": "synthetic spiked dictionaries (no model)",
            "adaptive": {"gamma": GAMMA, "ema_beta": EMA_BETA, "ref_pct": REF_PCT,
                         "warmup_start_frac": WARMUP_START_FRAC, "warmup_frac": WARMUP_FRAC},
            "l2_ratio": {m.name: m.l2_ratio for m in METHODS.values()}}


def _package_version() -> str | None:
    # An editable install can expose aen_mini as a namespace package without __version__; then ask the metadata.
    import importlib.metadata

    import aen_mini
    try:
        return getattr(aen_mini, "__version__", None) or importlib.metadata.version("aen-mini")
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def write_results(path: str | Path, records: list[dict], metadata: dict, complete: bool) -> Path:
    """Write ``{"metadata", "complete", "records"}`` atomically, so a killed run leaves its finished records."""
    return atomic_write_text(path, json.dumps({"metadata": metadata, "complete": complete, "records": records},
                                              indent=1))


def load_results(path: str | Path) -> tuple[list[dict], dict]:
    """(records, metadata) from a file written by ``write_results``."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "records" not in data:
        raise ValueError(f"{path} is not a synthetic sweep result file (no 'records')")
    return data["records"], {**data.get("metadata", {}), "complete": data.get("complete", False)}


def _unstable_cells(records: list[dict], spread: float = 10.0) -> str:
    """A sentence naming the (method, rho) cells whose seeds disagree on dead % by more than ``spread`` points."""
    cells = []
    for row in summarise(records, ("dead_pct",)):
        values = [r["dead_pct"] for r in records if r["method"] == row["method"] and r["rho"] == row["rho"]]
        if max(values) - min(values) > spread:
            cells.append(f"{row['label']} at rho = {row['rho']:g} (dead % per seed: "
                         + ", ".join(f"{v:.1f}" for v in values) + ")")
    if not cells:
        return f"Every cell's seeds agree on dead % within {spread:g} points."
    return (f"Seeds disagree on dead % by more than {spread:g} points in: {'; '.join(cells)}. A mean ± std hides "
            "such a split: some seeds collapsed and others did not.")


def report_markdown(records: list[dict], metadata: dict) -> str:
    """benchmarks/synthetic.md: the claim check, the table, and how the numbers were made."""
    size = metadata["sizes"]
    seeds = sorted({r["seed"] for r in records})
    adaptive = metadata["adaptive"]
    where = metadata["gpu"] or metadata["device"]
    return f"""# Synthetic starvation sweep

{claim_statement(claim_check(records))}

Mean ± standard deviation over seeds {seeds} of metrics on {size['eval_samples']} held-out samples with ground
truth. dead_pct: % of latents that never fire on the held-out set; l0: mean active latents per sample; ev:
explained variance; shrinkage: mean ||x_hat||_1 / ||x||_1; support_f1: F1 of the learned supports against the
true ones through a Hungarian atom matching; dict_recovery: fraction of true atoms whose matched learned atom has
cos >= 0.9; recovery_mean_cos: mean cosine of that matching. Column l1: the calibrated L1 coefficient (TopK uses
k = {size['k']} instead).

A note on dictionary recovery: for rho > 0 every true atom is sqrt(1 - rho) u_j + sqrt(rho) v with one shared spike v.
Each sample's spike content is the sum of its k magnitudes, which varies little around its mean, so an SAE can put
most of the spike into b_dec and learn atoms close to u_j, whose cosine with the true atom is about sqrt(1 - rho)
(0.84 at rho = 0.3). Recovery at cos >= 0.9 therefore drops to about 0 for rho >= 0.3 for every method, while
support F1 (which only needs the matching) stays informative.

{markdown_table(records)}

{_unstable_cells(records)}

## How it was run

- Command: `{metadata['command']}` ({'complete' if metadata.get('complete', True) else 'INCOMPLETE: the run stopped early'}; {metadata.get('wall_s', float('nan')):.0f} s wall clock).
- Device: {where}; {metadata['workers']} worker process(es); torch {metadata['torch']}, numpy {metadata['numpy']},
  scipy {metadata['scipy']}, Python {metadata['python']}; aen-mini {metadata['aen_mini_version']}
  ({f"commit {metadata['git_commit']}" if metadata['git_commit'] else 'commit unknown: run outside a git checkout'}).
- Data: `SpikedSource(n={size['n']}, m={size['m']}, k={size['k']}, rho, magnitude U{list(size['magnitude'])})`, no noise;
  a new dictionary per seed. Training batches come from a pool of {size['pool']} samples per (rho, seed), shared by
  every method; evaluation uses {size['eval_samples']} separate samples.
- SAE: d_sae = {size['d_sae']} (= m, the paper's setting); Adam lr {size['lr']}, linear decay over the last 20% of
  training, gradient clip 1, batch {size['batch_size']}, {size['steps']} steps
  ({size['steps'] * size['batch_size']:,} tokens) per run; b_dec initialised at the mean of the first batch.
- Calibration: for every method but TopK, at each rho, the L1 coefficient is searched on seed 0's data (expand by 4x
  until bracketed, then interpolate log L0 in log l1; at most {size['calib_trials']} runs of {size['calib_steps']} steps)
  for held-out L0 within 10% of k = {size['k']}, and the closest trial is used for every seed.
- Elastic net and AEN: l2 = {metadata['l2_ratio']['aen']} x l1. Adaptive lasso and AEN: gamma = {adaptive['gamma']},
  EMA beta = {adaptive['ema_beta']} (0.99 rather than the authors' 0.999 because runs are short), ref_pct =
  {adaptive['ref_pct']}, warm-up from {adaptive['warmup_start_frac']:.0%} of training, linear over
  {adaptive['warmup_frac']:.0%}.
- TopK: k = {size['k']}, AuxK with k_aux = n / 2 and coefficient 1/32. Resampling (Bricken et al.): every
  steps / 5 + 1 steps. A latent counts as dead for AuxK and resampling after {size['batch_size'] * max(1, size['steps'] // 20):,} tokens without firing.
- wall_s per record is measured inside a worker; with several workers sharing one GPU it includes contention.
"""


def main(argv: list[str] | None = None, default_out: str = "book/results", prog: str = "python -m aen_mini.experiments.sweep") -> list[dict]:
    """Command line: run the sweep, write DIR/synthetic.json (after every record) and DIR/synthetic.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="ci")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=default_out, help="folder for synthetic.json and synthetic.md")
    parser.add_argument("--methods", nargs="+", default=list(MAIN_METHODS), choices=list(METHODS))
    parser.add_argument("--rhos", nargs="+", type=float, default=list(RHOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=None,
                        help="rho values trained at once in separate processes (default: 5 on cuda, 1 on cpu)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", metavar="JSON", help="only rewrite synthetic.md in --out from this result file")
    args = parser.parse_args(argv)
    if args.report_only:
        records, metadata = load_results(args.report_only)
        path = atomic_write_text(Path(args.out) / "synthetic.md", report_markdown(records, metadata))
        print(claim_statement(claim_check(records)))
        print(f"wrote {path}")
        return records
    workers = args.workers or (len(args.rhos) if args.device.startswith("cuda") else 1)
    if args.device == "cpu" and workers == 1:
        torch.set_num_threads(1)  # the CPU machine is shared; one thread is the polite default
    out = Path(args.out)
    metadata = run_metadata(args.size, args.device, [prog, *argv], workers)
    records: list[dict] = []
    t0 = time.perf_counter()

    def save_partial(record: dict) -> None:
        records.append(record)
        write_results(out / "synthetic.json", records, {**metadata, "wall_s": time.perf_counter() - t0}, complete=False)

    records_sorted = run_synthetic_sweep(args.methods, args.rhos, args.seeds, args.size, args.device,
                                         not args.no_progress, save_partial, workers)
    metadata["wall_s"] = time.perf_counter() - t0
    write_results(out / "synthetic.json", records_sorted, metadata, complete=True)
    atomic_write_text(out / "synthetic.md", report_markdown(records_sorted, metadata))
    print(markdown_table(records_sorted))
    print(claim_statement(claim_check(records_sorted)))
    print(f"wrote {out / 'synthetic.json'} and {out / 'synthetic.md'} ({len(records)} records, {metadata['wall_s']:.0f} s)")
    return records_sorted


if __name__ == "__main__":
    main()
