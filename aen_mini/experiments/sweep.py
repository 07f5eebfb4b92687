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
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from aen_mini.data.source import TensorSource
from aen_mini.data.synthetic import SpikedSource
from aen_mini.eval.calibrate import search_l1
from aen_mini.eval.metrics import evaluate, l0
from aen_mini.eval.recovery import dictionary_recovery
from aen_mini.experiments import recipes
from aen_mini.experiments.recipes import (EMA_BETA, GAMMA, MAIN_METHODS, METHODS, REF_PCT, WARMUP_FRAC,
                                          WARMUP_START_FRAC, Method)
from aen_mini.experiments.recipes import method as _method
from aen_mini.experiments.report import provenance
from aen_mini.experiments.sweep_report import claim_check, claim_statement, markdown_table, report_markdown
from aen_mini.io.atomic import atomic_write_text
from aen_mini.sae import SAE
from aen_mini.train.loop import TrainConfig, train
from aen_mini.validate import check_choice, check_positive_int

__all__ = ["SweepSize", "SIZES", "RHOS", "build_sae", "training_source", "held_out", "train_method", "calibrate_l1",
           "train_calibrated", "matched_code_pairs", "latent_matched_cos", "run_synthetic_sweep", "run_metadata",
           "write_results", "load_results", "main"]


RHOS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)

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


def build_sae(method: str | Method, size: str | SweepSize, l1_coeff: float, steps: int, seed: int) -> SAE:
    """The method's SAE (recipes.build_sae) at this size, for a run of ``steps`` steps."""
    size = _size(size)
    return recipes.build_sae(method, size.n, size.d_sae, l1_coeff, steps, size.k, size.batch_size, seed)


def training_source(size: str | SweepSize, rho: float, seed: int, device: str = "cpu") -> tuple[SpikedSource, TensorSource]:
    """The spiked source for (rho, seed) and a shuffled pool of ``size.pool`` of its samples on ``device``."""
    size = _size(size)
    source = SpikedSource(n=size.n, m=size.m, k=size.k, rho=rho, magnitude=size.magnitude, seed=seed)
    chunk = min(size.pool, 8192)
    pool = torch.cat([source.next_batch(chunk) for _ in range(math.ceil(size.pool / chunk))])[:size.pool]
    return source, TensorSource(pool.to(device), seed=seed)


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


def run_metadata(size: str | SweepSize, device: str, argv: list[str], workers: int = 1) -> dict[str, Any]:
    """Everything a result file must say about how it was made (see book/results/README.md)."""
    return {**provenance(argv, device, packages=("numpy", "scipy")), "workers": workers,
            "size": size if isinstance(size, str) else "custom", "sizes": asdict(_size(size)),
            "source": "synthetic spiked dictionaries (no model)",
            "adaptive": {"gamma": GAMMA, "ema_beta": EMA_BETA, "ref_pct": REF_PCT,
                         "warmup_start_frac": WARMUP_START_FRAC, "warmup_frac": WARMUP_FRAC},
            "l2_ratio": {m.name: m.l2_ratio for m in METHODS.values()}}


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
