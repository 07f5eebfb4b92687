"""The replication's command line (issue 11): runs the parts (speed, the authors' protocol, our controlled study)
and writes benchmarks/replication.json and .md after each (``benchmarks/replication.py``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from aen_mini.io.atomic import atomic_write_text
from aen_mini.experiments.replication import (AUTHORS_GRID_GAMMA1, AUTHORS_GRID_NARROW, CENTRED_CELLS,
                                              CENTRED_WARMUP_CELLS, COLLAPSE_CELLS, CONTROLLED_CELLS, PROTOCOLS,
                                              REFINE_ROUNDS, SIZES, Size, TARGET_L0, _write, csv_pick_grids,
                                              load_results)
from aen_mini.experiments.report import provenance
from aen_mini.experiments.replication_report import centring_table, report_markdown
from aen_mini.experiments.replication_grids import run_authors, run_controlled, speed_benchmark

__all__ = ["main", "replication_metadata"]


def replication_metadata(argv: list[str], device: str, size: str, commit: str | None) -> dict[str, Any]:
    meta = provenance(argv, device, packages=("numpy", "scipy"))
    return {**meta, "git_commit": commit or meta["git_commit"], "tf32": torch.backends.cuda.matmul.allow_tf32,
            "size": size, "sizes": asdict(SIZES[size]), "protocols": {k: asdict(v) for k, v in PROTOCOLS.items()},
            "target_l0": TARGET_L0, "source": "synthetic spiked dictionaries (the authors' benchmark; no language model)"}


def main(argv: list[str] | None = None, default_out: str = "benchmarks", prog: str = "benchmarks/replication.py") -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--parts", nargs="+", default=["speed", "authors", "ours"],
                        help="speed, authors, authors_narrow, authors_csv_picks, authors_csv_picks_ours_init, "
                             "authors_rest, ours, centred, centred_warmup, collapse (in this order)")
    parser.add_argument("--csv-picks", default="benchmarks/paper_spiked_csv.json",
                        help="for authors_csv_picks: the authors' picks (benchmarks/paper_spiked_csv.py writes it)")
    parser.add_argument("--csv-methods", nargs="+", default=["aen"], choices=["aen", "adaptive_lasso"],
                        help="for authors_csv_picks: the methods trained at the authors' picks")
    parser.add_argument("--rhos", nargs="+", type=float, default=[0.0, 0.9, 0.5, 0.3, 0.7])
    parser.add_argument("--part-rhos", nargs="+", default=[], metavar="PART=RHO,RHO",
                        help="rhos of one controlled part instead of --rhos, e.g. collapse=0 centred=0.9,0,0.5")
    parser.add_argument("--cells", nargs="+", default=None, metavar="METHOD",
                        help="controlled parts: only the cells of these methods (e.g. relu_l1 elastic_net), both inits")
    parser.add_argument("--refine-rounds", type=int, default=REFINE_ROUNDS,
                        help="controlled parts: calibration rounds inside the bracket after the first grid "
                             "(files written before this option: 0)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--authors-rhos", nargs="+", type=float, default=[0.0, 0.9])
    parser.add_argument("--authors-grid", choices=["full", "gamma1"], default="full",
                        help="for the authors part: their whole grid, or gamma = 1 only without the adaptive lasso "
                             "(AUTHORS_GRID_GAMMA1, the grid of the first CPU-scale run)")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="skip parts once this much time has passed")
    parser.add_argument("--workers", type=int, default=1, help="processes for the Hungarian matchings")
    parser.add_argument("--commit", default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--report-only", metavar="JSON", help="rewrite <out>/<JSON's name>.md from a results file")
    parser.add_argument("--notes", metavar="MD", help="with --report-only: hand-written notes appended to the report")
    parser.add_argument("--compare", metavar="JSON", nargs="+", default=[],
                        help="with --report-only: results files of uncentred cells, set next to the centred ones")
    parser.add_argument("--paper", metavar="JSON", default=None,
                        help="the paper's numbers: benchmarks/paper_spiked.json (the paper's table) or "
                             "benchmarks/paper_spiked_csv.json (their CSV, with every run read)")
    args = parser.parse_args(argv)
    args.part_rhos = _part_rhos(parser, args.part_rhos)
    known = sorted({c.method for c in CONTROLLED_CELLS + CENTRED_CELLS + CENTRED_WARMUP_CELLS + COLLAPSE_CELLS})
    if args.cells and not set(args.cells) <= set(known):
        parser.error(f"--cells: unknown {sorted(set(args.cells) - set(known))}; known: {', '.join(known)}")
    if args.refine_rounds < 0:
        parser.error(f"--refine-rounds must be >= 0, got {args.refine_rounds}")
    out = Path(args.out)
    paper = json.loads(Path(args.paper).read_text()) if args.paper else None
    if args.report_only:  # <out>/<name of the JSON>.md, then the hand-written notes if any
        records, metadata = load_results(args.report_only)
        notes = Path(args.notes).read_text() if args.notes else ""
        text = report_markdown(records, metadata, paper)
        if args.compare:
            uncentred = [r for path in args.compare for r in load_results(path)[0]]
            text += ("\n## Centred against uncentred data (the same cells; uncentred: "
                     + ", ".join(f"`{path}`" for path in args.compare) + ")\n\n"
                     + "\n".join(centring_table(records, uncentred)) + "\n")
        text += "\n" + notes if notes else ""
        atomic_write_text(out / (Path(args.report_only).stem + ".md"), text)
        return
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    size = SIZES[args.size]
    metadata = replication_metadata([prog, *argv], args.device, args.size, args.commit)
    records: list[dict] = []
    t0 = time.perf_counter()
    done = []
    for part in args.parts:
        if time.perf_counter() - t0 > args.budget_s:
            print(f"skipped {part}: past the time budget", flush=True)
            continue
        t = time.perf_counter()
        try:
            _run_part(part, args, size, metadata, t0, out, done, records)
        except Exception:  # noqa: BLE001 - one failed part must not lose the others' results
            import traceback
            traceback.print_exc()
            metadata.setdefault("failed_parts", []).append(part)
            continue
        done.append(part)
        print(f"{part}: {time.perf_counter() - t:.1f} s", flush=True)
        metadata["wall_s"] = time.perf_counter() - t0
        _write(out, records, {**metadata, "parts_done": done}, complete=False)
    metadata["wall_s"] = time.perf_counter() - t0
    _write(out, records, {**metadata, "parts_done": done}, complete=True)
    atomic_write_text(out / "replication.md", report_markdown(records, {**metadata, "complete": True}, paper))
    print(f"wrote {out / 'replication.json'} and {out / 'replication.md'} ({len(records)} records, {metadata['wall_s']:.0f} s)")


def _part_rhos(parser: argparse.ArgumentParser, specs: list[str]) -> dict[str, list[float]]:
    """``["collapse=0", "centred=0.9,0.5"]`` -> {"collapse": [0.0], "centred": [0.9, 0.5]} (one-line errors)."""
    out = {}
    for spec in specs:
        part, _, values = spec.partition("=")
        if part not in ("ours", "centred", "centred_warmup", "collapse"):
            parser.error(f"--part-rhos {spec!r}: {part!r} is not a controlled part (ours, centred, centred_warmup, collapse)")
        try:
            out[part] = [float(v) for v in values.split(",")]
        except ValueError:
            parser.error(f"--part-rhos {spec!r}: expected PART=RHO,RHO with numbers")
    return out


def _run_part(part: str, args: argparse.Namespace, size: Size, metadata: dict, t0: float, out: Path,
              done: list[str], records: list[dict]) -> None:
    """Run one part of the command line, appending its records (the file is rewritten after every rho)."""
    if part == "speed":
        metadata["speed"] = speed_benchmark(size, args.device, steps=max(10, int(50_000 * size.step_scale)))
    elif part == "authors":
        gamma1 = args.authors_grid == "gamma1"
        records += run_authors(args.authors_rhos, args.seeds, size, args.device, args.workers, args.progress,
                               AUTHORS_GRID_GAMMA1 if gamma1 else None, grid_name="gamma1" if gamma1 else None)
    elif part == "authors_narrow":  # every rho and seed on AUTHORS_GRID_NARROW, the file rewritten after each job
        relu = (("relu_l1", "elastic_net", "aen", "adaptive_lasso"),)
        for rhos in ([0.9, 0.0, 0.5], [0.3, 0.7]):
            t = time.perf_counter()
            records += run_authors(rhos, args.seeds, size, args.device, args.workers, args.progress,
                                   AUTHORS_GRID_NARROW, relu)
            done.append(f"authors_narrow:rho={rhos}")
            print(f"authors_narrow {rhos}: {time.perf_counter() - t:.1f} s", flush=True)
            _write(out, records, {**metadata, "parts_done": done}, complete=False)
        records += run_authors([0.0, 0.3, 0.5, 0.7, 0.9], args.seeds, size, args.device, args.workers,
                               args.progress, AUTHORS_GRID_NARROW, (("topk",),))
    elif part == "authors_csv_picks":  # AEN at the authors' own CSV pick, every rho: same point, dead % side by side
        picks = json.loads(Path(args.csv_picks).read_text())["records"]
        grids = csv_pick_grids(picks, tuple(args.csv_methods))
        if args.csv_methods != ["aen"]:  # one job for every rho (AEN alone: one per rho, as first run)
            records += run_authors(sorted(grids), args.seeds, size, args.device, args.workers, args.progress,
                                   families=(tuple(args.csv_methods),), grid_name="csv_pick", rho_grids=grids)
        else:
            for rho, grid in sorted(grids.items()):
                records += run_authors([rho], args.seeds, size, args.device, args.workers, args.progress, grid,
                                       (tuple(grid),), grid_name="csv_pick")
                done.append(f"authors_csv_picks:rho={rho}")
                _write(out, records, {**metadata, "parts_done": done}, complete=False)
    elif part == "authors_csv_picks_ours_init":  # the same picks under their protocol with our init, one job
        picks = json.loads(Path(args.csv_picks).read_text())["records"]
        grids = csv_pick_grids(picks)
        records += run_authors(sorted(grids), args.seeds, size, args.device, args.workers, args.progress,
                               families=(("aen",),), grid_name="csv_pick", rho_grids=grids, init="ours")
    elif part == "authors_rest":
        rest = [r for r in (0.0, 0.3, 0.5, 0.7, 0.9) if r not in args.authors_rhos]
        records += run_authors(rest, args.seeds[:1], size, args.device, args.workers, args.progress)
    elif part in ("ours", "centred", "centred_warmup", "collapse"):
        cells = {"ours": CONTROLLED_CELLS, "centred": CENTRED_CELLS, "centred_warmup": CENTRED_WARMUP_CELLS,
                 "collapse": COLLAPSE_CELLS}[part]
        cells = [c for c in cells if args.cells is None or c.method in args.cells]
        if not cells:
            raise ValueError(f"--cells {args.cells} selects no cell of part {part!r}")
        for rho in args.part_rhos.get(part, args.rhos):
            if time.perf_counter() - t0 > args.budget_s:
                print(f"skipped {part} rho={rho}: past the time budget", flush=True)
                continue
            t = time.perf_counter()
            records += run_controlled(cells, [rho], args.seeds, size, args.device, args.workers, args.progress,
                                      args.refine_rounds)
            done.append(f"{part}:rho={rho}")
            print(f"{part} rho={rho}: {time.perf_counter() - t:.1f} s", flush=True)
            _write(out, records, {**metadata, "parts_done": done}, complete=False)
    else:
        raise ValueError(f"unknown part {part!r}")
