"""The machinery of benchmarks/synthsaebench_shared.py: samples drawn in chunks and sliced into batches, every SAE of
the benchmark a lane (``aen_mini.train.lanes``) stepped on each batch, the calibrations' probes started and ended on
the way, and the whole state saved at a stop and restored by the next call (a device call lasts at most 10 min).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

import synthsaebench as bench
from aen_mini.eval.probes import SLOPE, probe_calibration
from aen_mini.experiments import recipes
from aen_mini.train.config import TrainConfig
from aen_mini.train.lanes import Lane


class ChunkedStream:
    """Training batches sliced from chunks of ``chunk`` samples drawn from SAELens's sampler on a seeded RNG stream
    of their own (``synthsaebench.SyntheticStream``): the same samples for every run with the same seed and chunk."""

    def __init__(self, model: Any, seed: int, chunk: int, batch_size: int) -> None:
        if chunk % batch_size:
            raise ValueError(f"--chunk ({chunk}) must be a multiple of --batch-size ({batch_size})")
        self.source, self.chunk, self.batch_size = bench.SyntheticStream(model, seed), chunk, batch_size
        self._buffer, self._at, self.sample_s, self.batches = None, chunk, 0.0, 0

    def next_batch(self) -> torch.Tensor:
        if self._at >= self.chunk:
            t0 = time.perf_counter()
            self._buffer, self._at = self.source.next_batch(self.chunk), 0
            bench._sync(str(self._buffer.device))
            self.sample_s += time.perf_counter() - t0
        x = self._buffer[self._at:self._at + self.batch_size]
        self._at += self.batch_size
        self.batches += 1
        return x


@dataclass
class Run:
    """A lane and what it is for: a calibration probe (``l1`` set, ends early) or a method's full run."""

    method: str
    probe: bool
    lane: Lane
    l1: float | None
    started_at: int  # the stream's batch count when it started


def make_lane(method: str, size: bench.Size, l1: float | None, steps: int, args: Any,
              state: dict[str, Any] | None = None) -> Lane:
    sae = bench.build_sae(method, size, l1 if l1 is not None else 0.0, steps, args.batch_size, args.seed)
    cuda = args.device.startswith("cuda")
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      precision="bf16" if cuda else "fp32", fast=True, log_every=max(1, steps // 10), progress=False,
                      l1_warmup_steps=recipes.l1_warmup_steps(bench.METHODS[method], steps))
    return Lane(sae, cfg, state)


class SideBySide:
    """Every lane on one stream: the fixed-k methods' full runs from the first batch; each penalised method's probes
    one after another (``aen_mini.eval.probes``), then its full run. ``run`` goes until every full run ends or the
    time is up; ``save`` writes everything a later process needs to go on (``restore``)."""

    def __init__(self, model: Any, size: bench.Size, methods: list[str], x_cal: torch.Tensor,
                 starts: dict[str, float], args: Any, earlier: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.size, self.methods, self.x_cal, self.starts, self.args = size, methods, x_cal, starts, args
        self.earlier = earlier or {}  # probes an earlier, stopped run of the same settings finished, per method
        self.stream = ChunkedStream(model, args.seed, args.chunk, args.batch_size)
        self.calibrations = {m: probe_calibration(size.target_l0, starts[m], SLOPE, args.steps) for m in starts}
        self.sent: dict[str, list[dict[str, Any]]] = {m: [] for m in starts}  # what each calibration was told
        self.results: dict[str, dict[str, Any]] = {}
        self.runs: list[Run] = []
        self.finished: dict[str, Run] = {}
        self.elapsed_before_s = 0.0  # wall time of earlier calls
        self.key = {k: getattr(args, k) for k in ("size", "steps", "batch_size", "chunk", "seed", "lr", "methods",
                                                   "calib_samples")}

    def start(self) -> None:
        self.runs = [Run(m, False, make_lane(m, self.size, None, self.args.steps, self.args), None, 0)
                     for m in self.methods if m not in self.starts]
        for m, calibration in self.calibrations.items():
            l1, steps = next(calibration)
            for i, probe in enumerate(self.earlier.get(m, [])):  # told what it would have measured: no lane needed
                if not (math.isclose(probe["l1"], l1, rel_tol=1e-9) and probe["steps"] == steps):
                    raise SystemExit(f"--probes-from: {m}'s probe {i + 1} ran l1 {probe['l1']:.6g} for {probe['steps']} "
                                     f"steps, but this run asks l1 {l1:.6g} for {steps}: give the --l1-from and settings "
                                     "of the run that measured it")
                record = {k: v for k, v in probe.items() if k not in ("l1", "steps")} | {"earlier_run": True}
                self.sent[m].append(record)
                try:
                    l1, steps = calibration.send(record)
                except StopIteration as done:
                    self.results[m] = done.value
                    l1, steps = done.value["l1"], self.args.steps
                    break
            probe_lane = m not in self.results
            self.runs.append(Run(m, probe_lane, make_lane(m, self.size, l1, steps, self.args), l1, 0))

    def run(self, t_start: float, until_s: float, until_batch: int = 0) -> dict[str, Any] | None:
        """Step every lane on each batch until all full runs end (None), or ``until_s`` seconds after ``t_start``, or
        the stream's ``until_batch``-th batch (where it stopped)."""
        while self.runs:
            if until_batch and self.stream.batches >= until_batch or (
                    until_s and self.stream.batches % 16 == 0 and time.perf_counter() - t_start > until_s):
                return {"at_batch": self.stream.batches, "after_s": time.perf_counter() - t_start}
            x = self.stream.next_batch()
            for run in self.runs:
                run.lane.step(x)
            for run in [r for r in self.runs if r.lane.finished]:
                self.runs.remove(run)
                if run.probe:
                    self._probe_ended(run, t_start)
                else:
                    self.finished[run.method] = run
        return None

    def _probe_ended(self, run: Run, t_start: float) -> None:
        l0 = bench.held_out_l0(run.lane.sae.eval(), self.x_cal)
        print(f"[{time.perf_counter() - t_start:6.0f} s] probe {run.method} l1 {run.l1:.4g}, {run.lane.cfg.steps} "
              f"steps -> L0 {l0:.2f}", flush=True)
        record = {"l0": l0, "train_s": run.lane.train_s, "started_at_batch": run.started_at}
        self.sent[run.method].append(record)
        try:
            l1, steps = self.calibrations[run.method].send(record)
            self.runs.append(Run(run.method, True, make_lane(run.method, self.size, l1, steps, self.args), l1,
                                 self.stream.batches))
        except StopIteration as done:
            self.results[run.method] = done.value
            print(f"  {run.method}: l1 {done.value['l1']:.4g} for the full run ({done.value['how']})", flush=True)
            self.runs.append(Run(run.method, False, make_lane(run.method, self.size, done.value["l1"], self.args.steps,
                                                             self.args), done.value["l1"], self.stream.batches))

    def probes(self, method: str) -> list[dict[str, Any]]:
        """The probes a calibration has finished, with their l1 and length (from what it was told and asked)."""
        replay, asked, out = probe_calibration(self.size.target_l0, self.starts[method], SLOPE, self.args.steps), None, []
        try:
            asked = next(replay)
            for record in self.sent[method]:
                out.append({"l1": asked[0], "steps": asked[1], **record})
                asked = replay.send(record)
        except StopIteration:
            pass
        return out

    def save(self, path: Path, elapsed_s: float) -> None:
        s = self.stream
        state = {"key": self.key, "starts": self.starts, "sent": self.sent, "elapsed_s": self.elapsed_before_s + elapsed_s,
                 "stream": {"rng": s.source._state, "source_batches": s.source.batches, "buffer": s._buffer,
                            "at": s._at, "batches": s.batches, "sample_s": s.sample_s},
                 "runs": [{"method": r.method, "probe": r.probe, "l1": r.l1, "started_at": r.started_at,
                           "steps": r.lane.cfg.steps, "lane": r.lane.state_dict(), "finished": r.lane.finished}
                          for r in [*self.runs, *self.finished.values()]]}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # a stop mid-write leaves the previous state whole

    def restore(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)  # RNG states stay CPU tensors
        if state["key"] != self.key:
            differing = sorted(k for k in self.key if state["key"].get(k) != self.key[k])
            raise SystemExit(f"{path} was saved by a run with other settings ({', '.join(differing)}): resume with "
                             "the same ones, or start afresh")
        self.starts, self.sent, self.elapsed_before_s = state["starts"], state["sent"], state["elapsed_s"]
        self.calibrations = {}
        for m in self.starts:  # a calibration is replayed from what it was told (a generator cannot be saved)
            self.calibrations[m] = probe_calibration(self.size.target_l0, self.starts[m], SLOPE, self.args.steps)
            next(self.calibrations[m])
            for record in self.sent[m]:
                try:
                    self.calibrations[m].send(record)
                except StopIteration as done:
                    self.results[m] = done.value
        st, s = state["stream"], self.stream
        s.source._state, s.source.batches, s._at, s.batches, s.sample_s = (st["rng"], st["source_batches"], st["at"],
                                                                           st["batches"], st["sample_s"])
        s._buffer = None if st["buffer"] is None else st["buffer"].to(self.args.device)
        for r in state["runs"]:
            run = Run(r["method"], r["probe"], make_lane(r["method"], self.size, r["l1"], r["steps"], self.args,
                                                         r["lane"]), r["l1"], r["started_at"])
            if r["finished"]:
                self.finished[r["method"]] = run
            else:
                self.runs.append(run)

    def pending_probes(self) -> dict[str, dict[str, Any]]:
        return {r.method: {"l1": r.l1, "steps_done": r.lane.done, "steps": r.lane.cfg.steps} for r in self.runs if r.probe}
