"""Issue 11, section 2: dead-latent resampling, the one option of the controlled study that had not been run.

The batched grid trainer (``aen_mini.train.grid``) has no resampling, so here every SAE trains alone through
``aen_mini.train`` and its ``resample_every`` option (``aen_mini.train.resample``: Bricken et al.'s re-initialisation of
dead latents toward badly reconstructed inputs). Both arms, with and without resampling, go through that one
trainer, so the comparison is like for like. Everything else is the controlled study's (``aen_mini.experiments.replication``):
the sizes, our protocol, the calibration of every L1-family method to L0 = 16 on seed 0 (log-log interpolation
over the same grid of l1 values, the achieved L0 and convergence recorded per seed), the held-out dead window, EV
and support F1.

Resampling happens every ``resample_every`` steps (default: three times, the last when the lr decay starts, so
the last 20 % of training runs without it); a latent is dead for it after the protocol's ``dead_after_steps``
silent steps. Resampling resets a latent's weights and Adam moments, not AEN's EMA of its activity.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from aen_mini.io.atomic import atomic_write_text
from aen_mini.data.synthetic import SpikedSource
from aen_mini.experiments.replication import (CALIBRATION_POINTS, REL_TOL, SIZES, TARGET_L0, Cell,
                                              Protocol, Size, dumps, ours_protocol, summarise)
from aen_mini.experiments.replication_grids import (cell_hyper, controlled_streams, first_grid, held_out_l0,
                                                    interpolate_l1, protocol_sae, score_grid)
from aen_mini.experiments.replication_report import fmt_summary
from aen_mini.experiments.replication_run import replication_metadata
from aen_mini.sae import SAE
from aen_mini.train.loop import TrainConfig, train
from aen_mini.validate import check_positive_int

__all__ = ["ResampleCell", "RESAMPLE_CELLS", "default_resample_every", "run_resample_study",
           "report_markdown", "main"]

RESAMPLINGS = 3  # resamplings over the first 80 % of training (before the lr decay)


@dataclass(frozen=True)
class ResampleCell:
    """A cell of the controlled study, trained with or without resampling."""

    cell: Cell
    resample: bool

    @property
    def method(self) -> str:
        return self.cell.method + ("+resample" if self.resample else "")


RESAMPLE_CELLS = [ResampleCell(Cell(variant, variant, init), resample) for init in ("ours", "authors")
                  for variant in ("relu_l1", "topk", "elastic_net", "aen") for resample in (False, True)]


def default_resample_every(protocol: Protocol) -> int:
    """RESAMPLINGS evenly spaced resamplings, the last where the lr starts to decay."""
    return max(1, int(protocol.steps * protocol.lr_decay_start) // RESAMPLINGS)


def _train_one(rc: ResampleCell, rho: float, seed: int, l1: float, size: Size, protocol: Protocol,
               resample_every: int) -> tuple[SAE, list[dict]]:
    sae = protocol_sae(rc.cell.variant, size, protocol, seed, cell_hyper(rc.cell, protocol, l1))
    cfg = TrainConfig(steps=protocol.steps, batch_size=protocol.batch_size, lr=protocol.lr,
                      lr_decay_start=protocol.lr_decay_start, grad_clip=protocol.grad_clip, seed=seed,
                      init=rc.cell.init, l1_warmup_steps=protocol.steps // 2 if rc.cell.l1_warmup else 0,
                      resample_every=resample_every if rc.resample else 0, log_every=max(1, protocol.steps // 30),
                      progress=False)
    # the same dictionary as SpikedStreams' stream (rho, seed); training samples from another generator
    result = train(sae, SpikedSource(size.n, size.m, size.k, rho=rho, seed=seed), cfg)
    history = [{"step": h["step"], "l0": h["l0"], "dead_pct": h["dead_pct"]} for h in result.history]
    return result.sae, history


def _stacked(saes: list[SAE], streams: list[int]) -> Any:
    """What ``replication_grids.score_grid`` and ``held_out_l0`` read from a GridTrainer, for SAEs trained one by one."""
    variants = {s.variant for s in saes}
    if len(variants) != 1:
        raise ValueError(f"score one variant at a time, got {sorted(variants)}")
    params = {name: torch.stack([getattr(s, name).detach().float() for s in saes])
              for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    topk = variants == {"topk"}
    return SimpleNamespace(params=params, stream=torch.tensor(streams), topk=topk, k=saes[0].k if topk else None,
                           runs=[SimpleNamespace(stream=s) for s in streams], device=torch.device("cpu"))


def run_resample_study(cells: list[ResampleCell], rhos: list[float], seeds: list[int], size: Size,
                       resample_every: int | None = None, progress: bool = False) -> list[dict]:
    """Per rho: calibrate every L1-family cell on seed 0 (CALIBRATION_POINTS l1 values around L1_GUESS), then
    train every cell on every seed at the interpolated l1 and score it on the controlled study's held-out data."""
    protocol = ours_protocol(size)
    every = default_resample_every(protocol) if resample_every is None else resample_every
    target = TARGET_L0 * size.k / 16
    calibrated = [c for c in cells if c.cell.calibrated]
    total = len(rhos) * (len(calibrated) * CALIBRATION_POINTS + len(cells) * len(seeds))
    bar = tqdm(total=total, disable=not progress, unit="SAE")
    records = []
    for rho in rhos:
        streams = controlled_streams(size, rho, seeds)
        l1_star: dict[ResampleCell, tuple[float, list[dict]]] = {}
        for rc in calibrated:
            grid = first_grid(rc.cell.variant, rho, size)  # no refinement rounds: one SAE at a time here
            saes = []
            for l1 in grid:
                saes.append(_train_one(rc, rho, seeds[0], l1, size, protocol, every)[0])
                bar.update(1)
            l0s = held_out_l0(_stacked(saes, [0] * len(saes)), streams, size)
            trials = [{"l1_coeff": l1, "l0": l0} for l1, l0 in zip(grid, l0s)]
            l1_star[rc] = (interpolate_l1(trials, target), trials)
        for rc in cells:
            l1, trials = l1_star.get(rc, (0.0, []))
            trained = []
            for seed in seeds:
                trained.append(_train_one(rc, rho, seed, l1, size, protocol, every))
                bar.update(1)
            stacked = _stacked([sae for sae, _ in trained], list(range(len(seeds))))
            scores = score_grid(stacked, streams, size, list(range(len(seeds))), workers=1)
            for seed, (_, history), score in zip(seeds, trained, scores):
                records.append({
                    "protocol": "ours", "method": rc.method, "variant": rc.cell.variant, "rho": rho, "seed": seed,
                    "init": rc.cell.init, "l1_warmup": False, "aux": False, "centred": False,
                    "resample": rc.resample, "resample_every": every if rc.resample else 0,
                    "trainer": "aen_mini.train", "steps": protocol.steps, "batch_size": protocol.batch_size,
                    "loss_scale": protocol.loss_scale, "target_l0": target,
                    "l1_coeff": l1 if rc.cell.calibrated else None, "calibration_trials": trials,
                    **score, "calibration_converged": abs(score["l0"] / target - 1) <= REL_TOL, "history": history})
    bar.close()
    return records


def report_markdown(records: list[dict], metadata: dict) -> str:
    """The results as a table: mean ± std over seeds per (init, rho, method); ! where some seed's L0 missed."""
    keys = ("init", "rho", "method")
    cols = {m: summarise(records, keys, m) for m in ("l0", "dead_pct", "ev", "support_f1")}
    lines = ["# Resampling in the controlled study (issue 11, section 2)", "",
             f"Device: {metadata['device']}; torch {metadata['torch']}; commit {metadata['git_commit']}; size "
             f"{metadata['size']}; wall {metadata.get('wall_s', 0):.0f} s; complete: {metadata.get('complete')}.", "",
             f"Command: `{metadata['command']}`", "",
             "Our protocol at CPU scale (as `benchmarks/replication.md`'s controlled study: n, m, k, batch, steps, "
             "the calibration to L0 = 16 on seed 0 and the held-out dead window), every SAE trained by "
             "`aen_mini.train`, with and without dead-latent resampling (`aen_mini.train.resample`, every "
             f"{metadata.get('resample_every')} steps). TopK without AuxK; no warm-up. Dead % = latents that never "
             f"fire on {metadata['sizes']['dead_window']:,} held-out samples. Mean ± std over seeds; **!** marks "
             "a cell where some seed's L0 is more than 10 % from the target.", "",
             "| init | rho | method | seeds | L0 | dead % | EV | support F1 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted(cols["l0"], key=lambda k: (k[0] != "ours", k[1], k[2])):
        rs = [r for r in records if tuple(r[k] for k in keys) == key]
        flag = "" if all(r["calibration_converged"] for r in rs) else " !"
        lines.append(f"| {key[0]} | {key[1]:g} | {key[2]} | {len(rs)} | {fmt_summary(cols['l0'][key])}{flag} | "
                     f"{fmt_summary(cols['dead_pct'][key])} | {fmt_summary(cols['ev'][key], 3)} | {fmt_summary(cols['support_f1'][key], 3)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "benchmarks/replication_resample.py") -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("--name", default="replication_resample", help="results file stem: <out>/<name>.json/.md")
    parser.add_argument("--rhos", nargs="+", type=float, default=[0.0, 0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--resample-every", type=int, default=None, help="default: default_resample_every")
    parser.add_argument("--dead-window", type=int, default=None,
                        help="held-out samples for dead %% (default: the size's; the issue asks >= 262,144)")
    parser.add_argument("--commit", default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.dead_window:
        size = replace(size, dead_window=check_positive_int("dead_window", args.dead_window))
    every = args.resample_every or default_resample_every(ours_protocol(size))
    metadata = {**replication_metadata([prog, *argv], "cpu", args.size, args.commit), "sizes": asdict(size),
                "resample_every": every,
                "trainer": "aen_mini.train (one SAE at a time)"}
    t0 = time.perf_counter()
    records = run_resample_study(RESAMPLE_CELLS, args.rhos, args.seeds, size, every, args.progress)
    metadata.update(wall_s=time.perf_counter() - t0, complete=True)
    out = Path(args.out)
    atomic_write_text(out / f"{args.name}.json", dumps(metadata, records))
    atomic_write_text(out / f"{args.name}.md", report_markdown(records, metadata))
    print(f"wrote {out / args.name}.json and .md ({len(records)} records, {metadata['wall_s']:.0f} s)")
