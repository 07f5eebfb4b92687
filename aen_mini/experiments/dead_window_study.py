"""Why chapter 3's two studies of ReLU + L1 with our initialisation disagree (rho = 0).

The earlier full-size sweep (``book/results/synthetic.json``) finds 20 % to 25 % of ReLU + L1's latents dead at
rho = 0; the controlled study (``benchmarks/replication_full_ours.json``), with the same initialisation, schedule
and learning rate, under 1 %. They differ in three ways, crossed here on the controlled study's own streams and
trainer: the l1 (the controlled study's calibration missed L0 16 with a smaller l1 than the sweep's), the training
data (fresh batches every step, or the sweep's fixed pool of samples reused every epoch) and the dead window (the
sweep counted over 8,192 held-out samples, the controlled study over 262,144). Every run is scored over both
windows, so the window needs no runs of its own.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from aen_mini.experiments.replication import SIZES, Cell, ours_protocol
from aen_mini.experiments.replication_grids import (cell_hyper, controlled_streams, dead_pcts, grid_config,
                                                    protocol_sae, score_grid)
from aen_mini.experiments.replication_run import replication_metadata
from aen_mini.experiments.report import markdown_table
from aen_mini.io.atomic import atomic_write_text
from aen_mini.train.grid import GridRun, SpikedStreams, train_grid

__all__ = ["PooledBatches", "SWEEP_POOL", "SHORT_WINDOW", "file_l1s", "main", "report_markdown", "run"]

SWEEP_POOL = 262_144  # training samples the sweep drew once per (rho, seed) and reused (aen_mini.experiments.sweep)
SHORT_WINDOW = 8_192  # the sweep's held-out samples, over which it counted dead latents


class PooledBatches:
    """Batches from a fixed pool of each stream's samples, reshuffled every epoch (the sweep's ``TensorSource``):
    called like ``SpikedStreams``, it returns (S, B, n)."""

    def __init__(self, streams: SpikedStreams, pool: int, seed: int = 0) -> None:
        self.pool = streams.draw(pool, torch.Generator(streams.device).manual_seed(seed + 1))[0]
        self.generator = torch.Generator(streams.device).manual_seed(seed)
        self.order = torch.randperm(pool, generator=self.generator, device=streams.device)
        self.at = 0

    def __call__(self, batch_size: int) -> torch.Tensor:
        if self.at + batch_size > self.order.numel():  # a new epoch: a new order (the remainder is dropped)
            self.order = torch.randperm(self.order.numel(), generator=self.generator, device=self.order.device)
            self.at = 0
        idx = self.order[self.at:self.at + batch_size]
        self.at += batch_size
        return self.pool[:, idx]


def run(l1s: dict[str, list[float]], seeds: list[int], size_name: str = "full", device: str = "cpu",
        pool: int = SWEEP_POOL, short_window: int = SHORT_WINDOW, rho: float = 0.0,
        progress: bool = False) -> list[dict[str, Any]]:
    """ReLU + L1 with our initialisation under our protocol at ``rho``, for every named l1 (one per seed), trained on
    fresh batches and on a reused pool; each scored over ``short_window`` and over the size's dead window."""
    if not seeds or any(len(v) != len(seeds) for v in l1s.values()):
        raise ValueError(f"l1s must give one l1 per seed ({len(seeds)} seeds): {l1s}")
    size = SIZES[size_name]
    protocol = ours_protocol(size)
    cell = Cell("relu_l1", "relu_l1")
    streams = controlled_streams(size, rho, seeds, device)
    jobs = [(name, i, seed, l1) for name, values in l1s.items() for i, (seed, l1) in enumerate(zip(seeds, values))]
    cfg = grid_config(protocol, device)
    records = []
    for data_name, data in (("fresh", streams), ("pool", PooledBatches(streams, pool))):
        runs = [GridRun(protocol_sae("relu_l1", size, protocol, seed, cell_hyper(cell, protocol, l1)), stream=i,
                        init="ours") for _, i, seed, l1 in jobs]
        _, trainer = train_grid(runs, data, cfg, progress)
        which = list(range(len(jobs)))
        long = score_grid(trainer, streams, size, which, workers=1)
        short = dead_pcts(trainer, streams, replace(size, dead_window=short_window))  # the short window's count only
        for (l1_name, _, seed, l1), a, b in zip(jobs, long, short):
            records.append({"method": "relu_l1", "init": "ours", "rho": rho, "seed": seed, "l1_from": l1_name,
                            "l1_coeff": l1, "data": data_name, "pool_samples": pool if data_name == "pool" else None,
                            "steps": protocol.steps, "batch_size": protocol.batch_size, "l0": a["l0"], "ev": a["ev"],
                            "support_f1": a["support_f1"], "dead_pct": a["dead_pct"],
                            "dead_window_samples": a["dead_window_samples"], "dead_pct_short": b,
                            "short_window_samples": short_window, "firing_density": a["firing_density"]})
    return records


def file_l1s(seeds: list[int], rho: float, controlled: str, sweep: str) -> dict[str, list[float]]:
    """Each study's l1 for ReLU + L1 with our initialisation at ``rho``, per seed, read from its results file."""
    ours = json.loads(Path(controlled).read_text())["records"]
    theirs = json.loads(Path(sweep).read_text())["records"]

    def pick(records: list[dict], keep: Any, seed: int, name: str) -> float:
        found = [r["l1_coeff"] for r in records if keep(r) and r["rho"] == rho and r["seed"] == seed]
        if len(found) != 1:
            raise SystemExit(f"{name}: {len(found)} ReLU + L1 records with our init at rho {rho}, seed {seed} (want 1)")
        return found[0]

    is_ours = lambda r: (r.get("protocol"), r["method"], r.get("init"), r.get("centred")) == ("ours", "relu_l1", "ours", False)  # noqa: E731
    return {"controlled study": [pick(ours, is_ours, s, controlled) for s in seeds],
            "sweep": [pick(theirs, lambda r: r["method"] == "relu_l1", s, sweep) for s in seeds]}


def report_markdown(records: list[dict], metadata: dict) -> str:
    """Mean (min to max) over seeds of L0, EV and dead % over both windows, per l1 and training data."""
    def cell(values: list[float], digits: int) -> str:
        mean = sum(values) / len(values)
        return f"{mean:.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"

    keys = sorted({(r["l1_from"], r["data"]) for r in records}, key=lambda k: (k[0], k[1] != "fresh"))
    rows = []
    for l1_from, data in keys:
        rs = [r for r in records if (r["l1_from"], r["data"]) == (l1_from, data)]
        rows.append([l1_from, cell([r["l1_coeff"] for r in rs], 3), "fresh batches" if data == "fresh" else
                     f"a pool of {rs[0]['pool_samples']:,} reused", cell([r["l0"] for r in rs], 1),
                     cell([r["ev"] for r in rs], 3), cell([r["dead_pct_short"] for r in rs], 1),
                     cell([r["dead_pct"] for r in rs], 1)])
    r0 = records[0]
    return "\n".join([
        "# ReLU + L1 with our initialisation: the l1, the training data and the dead window (rho = "
        f"{r0['rho']})", "",
        (__doc__ or "").split("\n\n")[1].replace("\n", " "), "",
        f"Our protocol ({r0['steps']:,} steps x {r0['batch_size']:,}), spiked data of size {metadata['size']} (n = "
        f"{metadata['sizes']['n']}, m = {metadata['sizes']['m']}, k = {metadata['sizes']['k']}) on the controlled "
        f"study's streams, seeds {sorted({r['seed'] for r in records})}; mean over seeds (min to max).", "",
        markdown_table(["l1 from", "l1", "training data", "L0", "EV",
                        f"dead % over {r0['short_window_samples']:,}", f"dead % over {r0['dead_window_samples']:,}"],
                       rows), "",
        f"Device: {metadata.get('gpu') or metadata['device']}; torch {metadata['torch']}; commit "
        f"{metadata.get('git_commit')}; wall {metadata.get('wall_s', 0):.0f} s.",
        f"Command: `{metadata['command']}`.", ""])


def main(argv: list[str] | None = None, prog: str = "benchmarks/dead_window.py") -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--controlled", default="benchmarks/replication_full_ours.json")
    parser.add_argument("--sweep", default="book/results/synthetic.json")
    parser.add_argument("--l1", nargs="+", default=None, metavar="NAME=L1,L1,...",
                        help="l1 per seed by name instead of the two files' (e.g. at --size tiny)")
    parser.add_argument("--pool", type=int, default=SWEEP_POOL)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.l1:
        try:
            l1s = {k: [float(v) for v in vs.split(",")] for k, vs in (item.split("=", 1) for item in args.l1)}
        except ValueError:
            parser.error(f"--l1 wants NAME=L1,L1,... (one l1 per seed): {args.l1}")
    else:
        l1s = file_l1s(args.seeds, 0.0, args.controlled, args.sweep)
    metadata = {**replication_metadata([prog, *argv], args.device, args.size, args.commit), "l1s": l1s}
    t0 = time.perf_counter()
    records = run(l1s, args.seeds, args.size, args.device, args.pool, progress=args.progress)
    metadata["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write_text(out / "dead_window.json", json.dumps({"metadata": metadata, "records": records}, indent=1) + "\n")
    atomic_write_text(out / "dead_window.md", report_markdown(records, metadata))
    print(f"wrote {out / 'dead_window.json'} and .md ({len(records)} records, {metadata['wall_s']:.0f} s)")
