"""The LLM study's runs of record (issue 12): every SAE trained on its own at the paper's Pythia budget with the
package's fused step (``aen_mini.train.loop.train`` with ``fast=True``: bf16 matmuls, compiled loss, one CUDA graph
per step, fused Adam) on the shared bf16 harvest, in a priority order under a device-time budget;
``benchmarks/llm.py`` is its command line (settings, harvest and evaluation: ``llm_study.py``).

Matched L0: TopK gets k = target. ReLU+L1 and AEN get l1 calibrated by short probes with the same schedule shape
(``aen_mini.eval.probes``: 1/8 of the steps; the lr warm-up and decay and AEN's reweighting warm-up scale with the
run): secant steps on log L0 against log l1 until a probe is within 8 % of the target (at most ``MAX_PROBES``), then
one probe at twice that length measures how L0 drifts as the run grows, and the l1 of the full run is moved by that
drift, extrapolated to the full length. The larger dictionary skips that probe: it starts from the smaller one's l1
and takes the drift the smaller one's full run showed (its L0 against its probes' prediction). Every probe, the
slope and the predicted and actual drift are recorded; the full run's held-out L0 decides ``calibration_converged``
(within ``--rel-tol``). Further seeds reuse the first seed's l1 moved by its full-run L0 along the probes' slope (no
probes).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aen_mini.eval.metrics import evaluate_in_batches
from aen_mini.eval.probes import MAX_PROBES, PROBE_FRACTION, SLOPE, actual_drift, probe_calibration, run_probes
from aen_mini.experiments.llm_report import write_markdown
from aen_mini.experiments.llm_study import (HOOK, LABELS, LR_WARMUP_FRAC, METHODS, MODEL, DeviceBatches, Harvest,
                                            metadata, method_settings, parse_args, sync)
from aen_mini.io.atomic import atomic_write_text
from aen_mini.sae import make_sae
from aen_mini.train.config import TrainConfig
from aen_mini.train.grid_tensor import passes
from aen_mini.train.loop import train

# what each call of a continued study keeps of its own metadata (notes: provenance added to a call's file by hand)
CALL_KEYS = ("command", "wall_s", "n_sae", "cut", "code_note", "device_seconds_used")
DESIGN_KEYS = ("methods", "seeds", "targets", "latents32")  # the study's plan, as opposed to one call's
PROBE_EVAL_TOKENS = 1_000_000  # held-out tokens a probe's L0 is measured on
# planning guesses until a run of the same kind is measured: ms per step at 4608 latents on an H200 (scaled with
# the latents), seconds of compile and CUDA-graph capture per run, seconds of evaluation per run
MS_GUESS = {"relu_l1": 0.75, "aen": 0.9, "topk": 2.0, "topk_noaux": 1.15, "relu_l1_warmup": 0.75}
COMPILE_S, EVAL_S = 5.0, 8.0  # EVAL_S at 4608 latents, scaled with the square root of the latents


@dataclass(frozen=True)
class Job:
    method: str
    target: int
    seed: int
    d_sae: int

    @property
    def key(self) -> str:
        return f"{self.method}:{self.target}:{self.seed}:{self.d_sae}"

    @classmethod
    def parse(cls, key: str) -> Job:
        """``Job.parse(job.key) == job``; a one-line error for a malformed key or an unknown method."""
        parts = key.split(":")
        if len(parts) != 4 or parts[0] not in METHODS or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"--jobs: {key!r} is not METHOD:TARGET:SEED:LATENTS with METHOD in {sorted(METHODS)}")
        return cls(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


def plan(args: argparse.Namespace, done: set[str] = frozenset()) -> list[Job]:
    """The runs in priority order: the first seed at ``--latents`` (ReLU+L1, AEN and TopK + AuxK at every target);
    ReLU+L1 and AEN at ``--latents32`` and the smallest target (does AEN's starvation there survive matched L0?);
    TopK without AuxK; TopK at ``--latents32``; the other seeds; ``--latents32``'s other targets; last, ReLU+L1 with
    the l1 warm-up (the control for the warm-up AEN's delayed reweighting implies), first seed, larger dictionary
    first. An explicit ``args.jobs`` list replaces that order."""
    if getattr(args, "jobs", None):
        return [j for j in map(Job.parse, args.jobs) if j.key not in done]
    s0, rest, small = args.seeds[0], args.seeds[1:], min(args.targets)
    control = [m for m in args.methods if m == "relu_l1_warmup"]
    methods = [m for m in args.methods if m not in control]
    first = [m for m in methods if m != "topk_noaux"]
    jobs = [Job(m, t, s0, args.latents) for t in args.targets for m in first]
    big = [Job(m, small, s0, args.latents32) for m in methods if m in ("relu_l1", "aen")] if args.latents32 else []
    jobs += big + [Job("topk_noaux", t, s0, args.latents) for t in args.targets if "topk_noaux" in methods]
    if args.latents32:
        jobs += [Job(m, small, s0, args.latents32) for m in methods if m.startswith("topk")]
    jobs += [Job(m, t, s, args.latents) for s in rest for t in args.targets for m in methods]
    if args.latents32:
        jobs += [Job(m, t, s0, args.latents32) for t in args.targets if t != small for m in methods]
    jobs += [Job(m, t, s0, w) for m in control for w in (args.latents32, args.latents) if w for t in args.targets]
    return [j for j in jobs if j.key not in done]


def held_l0(sae: Any, x: torch.Tensor, chunk: int = 65_536) -> float:
    """Mean number of active latents per row of ``x``."""
    with torch.no_grad():
        return sum(float((sae.encode(part) > 0).sum()) for part in x.split(chunk)) / len(x)


class Study:
    """The shared harvest, the runs, what was measured of them (ms per step, l1 per setting) and the records."""

    def __init__(self, bench: Harvest, args: argparse.Namespace) -> None:
        self.bench, self.args = bench, args
        self.cuda = torch.device(args.device).type == "cuda"
        self.ms: dict[tuple[str, int], float] = {}
        self.l1: dict[tuple[str, int, int], dict[str, float]] = {}  # (method, target, d_sae) -> l1, l0, slope
        self.starts = start_table(Path(args.l1_from)) if args.l1_from and Path(args.l1_from).is_file() else {}

    @property
    def steps(self) -> int:
        return self.args.tokens_per_sae // self.args.batch_size

    def train(self, job: Job, l1: float | None, steps: int) -> tuple[Any, dict[str, float]]:
        """One SAE of ``job`` with ``l1`` for ``steps`` steps; its timings (compile included, and per step)."""
        fields = method_settings(job.method, l1, job.target, steps)
        variant, l1_warmup = fields.pop("sae"), fields.pop("l1_warmup_steps", 0)
        hyper = {{"l1": "l1_coeff", "l2": "l2_coeff"}.get(k, k): v for k, v in fields.items()}
        sae = make_sae(variant, self.bench.model.d_model, job.d_sae, seed=job.seed,
                       dead_after_tokens=self.args.batch_size * max(1, steps // 20), **hyper).to(self.args.device)
        cfg = TrainConfig(steps=steps, batch_size=self.args.batch_size, lr=self.args.lr, seed=job.seed,
                          lr_warmup_steps=int(LR_WARMUP_FRAC * steps), lr_decay_start=0.8, device=self.args.device,
                          precision="bf16" if self.cuda else "fp32", fast=self.cuda, log_every=max(1, steps // 4),
                          l1_warmup_steps=l1_warmup, progress=False)
        if self.cuda:
            torch._dynamo.reset()  # one compile per run; no cache entries pile up past dynamo's recompile limit
        result = train(sae, DeviceBatches(self.bench.train_x, seed=job.seed), cfg)
        sync()
        # steady ms per step between the first and the last logged record (compilation and capture come before)
        h = [(r["step"], r["tokens"] / r["tokens_per_s"]) for r in result.history]
        ms = 1000 * (h[-1][1] - h[0][1]) / (h[-1][0] - h[0][0]) if len(h) > 1 else 1000 * result.wall_s / steps
        if len(h) > 1:
            self.ms[(job.method, job.d_sae)] = ms
        return sae, {"wall_s": result.wall_s, "step_ms": ms, "warmup_s": max(0.0, h[0][1] - h[0][0] * ms / 1000)}

    def probe(self, job: Job, l1: float, steps: int) -> dict[str, float]:
        sae, timing = self.train(job, l1, steps)
        l0 = held_l0(sae, self.bench.held_x[:PROBE_EVAL_TOKENS])
        print(f"[{self.bench.elapsed():5.0f} s]   probe {LABELS[job.method]} {job.d_sae} target {job.target}: l1 "
              f"{l1:.4g}, {steps} steps -> L0 {l0:.1f} ({timing['wall_s']:.1f} s)", flush=True)
        return {"l0": l0, "wall_s": timing["wall_s"]}

    def calibrate(self, job: Job, l1: float, slope: float, drift: float | None = None) -> dict[str, Any]:
        """The l1 for the full run from probes (module docstring); ``drift``: the full run's L0 over the probes', if
        known (then no drift probe)."""
        t = time.perf_counter()
        calibration = probe_calibration(job.target, l1, slope, self.steps, drift,
                                        f"the drift of the {self.args.latents}-latent run")
        return {**run_probes(calibration, lambda l1, steps: self.probe(job, l1, steps)),
                "wall_s": time.perf_counter() - t}

    def choose_l1(self, job: Job) -> dict[str, Any]:
        """The l1 of a ReLU+L1 or AEN run: a seed after the first reuses the calibrated setting's l1 corrected by its
        full-run L0; otherwise calibrate from the best start known."""
        done = self.l1.get((job.method, job.target, job.d_sae))
        if done:
            l1 = done["l1"] * (job.target / max(done["l0"], 1e-3)) ** (1.0 / done["slope"])
            return {"l1": l1, "trials": [], "slope": done["slope"], "wall_s": 0.0,
                    "how": "the first seed's l1, moved by its full-run L0 along the probes' slope"}
        smaller = self.l1.get((job.method, job.target, self.args.latents))
        if smaller and job.d_sae != self.args.latents:
            return self.calibrate(job, smaller["l1"] * 1.1, smaller["slope"], smaller["drift"])
        # without an earlier l1 of its own, a method starts from its SAE variant's (the warm-up control: ReLU+L1's,
        # the same SAE and end loss)
        variant = method_settings(job.method, 0.0, job.target, self.steps)["sae"]
        start = self.starts.get((job.method, job.target), self.starts.get(
            (variant, job.target), 0.5 * math.sqrt(self.bench.model.d_model / job.target)))
        return self.calibrate(job, start, SLOPE)

    def cost(self, job: Job) -> float:
        """Planned seconds for a job: probes (if it calibrates), the full run, compiles and its evaluation."""
        ms = self.ms.get((job.method, job.d_sae), MS_GUESS[job.method] * job.d_sae / 4608) if self.cuda else 0.0
        probes = not job.method.startswith("topk") and (job.method, job.target, job.d_sae) not in self.l1
        steps = self.steps * (1 + (MAX_PROBES + 2) / PROBE_FRACTION * probes)
        return steps * ms / 1000 + COMPILE_S * (1 + (MAX_PROBES + 1) * probes) + EVAL_S * math.sqrt(job.d_sae / 4608)

    def record(self, job: Job, sae: Any, timing: dict[str, float], calibration: dict[str, Any]) -> tuple[dict, dict]:
        bench, args, steps = self.bench, self.args, self.steps
        held = evaluate_in_batches(sae, bench.held_x, batch_size=65_536)
        ev = bench.evaluate_sae(sae)
        topk = job.method.startswith("topk")
        converged = topk or abs(held["l0"] / job.target - 1) <= args.rel_tol
        row = {"method": job.method, "target_l0": job.target, "seed": job.seed, "d_sae": job.d_sae,
               "l1": None if topk else calibration["l1"], "k": job.target if topk else None, "model": MODEL,
               "model_label": bench.model.label, "hook": HOOK, "label": LABELS[job.method], "l0": held["l0"],
               "calibration_converged": bool(converged), "calibration_how": calibration["how"],
               "calibration_trials": calibration["trials"],
               **{k: calibration.get(k) for k in ("slope", "probe_steps", "drift_per_doubling", "predicted_drift")},
               "actual_drift": actual_drift(calibration, held["l0"]),
               "calibration_wall_s": calibration["wall_s"], "dead_pct": held["dead_pct"],
               "dead_window_tokens": int(bench.held_x.shape[0]), "dead_pct_corpus": ev["dead_pct_corpus"],
               "dead_corpus_window_tokens": ev["dead_corpus_window_tokens"], "dead_by_window": ev["dead_by_window"],
               "ev": held["ev"], "mse": held["mse"], "shrinkage": held["shrinkage"], "ce_clean": ev["ce_clean"],
               "ce_spliced": ev["ce_sae"], "delta_ce": ev["ce_sae"] - ev["ce_clean"], "kl": ev["kl_sae"],
               "ce_zero": ev["ce_zero"], "ce_mean": ev["ce_mean"], "kl_zero": ev["kl_zero"], "kl_mean": ev["kl_mean"],
               "ce_recovered_zero": ev["ce_recovered_zero"], "ce_recovered_mean": ev["ce_recovered_mean"],
               "splice_positions": ev["n_positions"], "density_histogram": ev["density_histogram"],
               "tokens_trained": steps * args.batch_size, "distinct_tokens": bench.distinct_train,
               "passes": passes(steps, args.batch_size, bench.distinct_train), "batch_size": args.batch_size,
               "lr": args.lr, "steps": steps, "lr_warmup_steps": int(LR_WARMUP_FRAC * steps),
               "l1_warmup_steps": method_settings(job.method, 0.0, job.target, steps).get("l1_warmup_steps", 0),
               "train_wall_s": timing["wall_s"], "step_ms": timing["step_ms"], "warmup_s": timing["warmup_s"],
               "eval_wall_s": ev["eval_wall_s"]}
        return row, ev


def start_table(path: Path) -> dict[tuple[str, int], float]:
    """l1 starting points per (method, target) from an earlier llm.json: its first seed's, at its first size."""
    rows = [r for r in json.loads(path.read_text())["rows"] if r.get("l1")]
    first = [r for r in rows if r["seed"] == min(x["seed"] for x in rows) and r.get("d_sae") == rows[0].get("d_sae")]
    return {(r["method"], r["target_l0"]): r["l1"] for r in first}


def row_keys(rows: list[dict[str, Any]]) -> set[str]:
    """The ``Job.key`` of every recorded run."""
    return {f"{r['method']}:{r['target_l0']}:{r['seed']}:{r['d_sae']}" for r in rows}


def study_design(earlier: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What the calls together set out to run: a continuing call may narrow its own plan (say, only the AEN's
    second seed) without narrowing the study its rows belong to."""
    design = {k: list(dict.fromkeys([*earlier[k], *meta[k]])) for k in ("methods", "seeds", "targets")}
    design["latents32"] = meta["latents32"] or earlier["latents32"]
    return design


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    for key in args.jobs or []:  # a malformed key fails before the model loads
        Job.parse(key)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bench = Harvest(args)
    study = Study(bench, args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata(args)
    meta.update(model_label=bench.model.label, hook=HOOK, d_in=bench.model.d_model, model_load_s=bench.model_load_s,
                harvest_s=bench.harvest_s, harvest_tokens=bench.distinct_train, corpus_tokens=bench.corpus_tokens,
                harvest_tokens_per_s=bench.distinct_train / bench.harvest_s, heldout_tokens=int(bench.held_x.shape[0]),
                splice_contexts=len(bench.splice_tokens), steps=study.steps,
                trainer="aen_mini.train.loop.train, fast=True (bf16, compiled, CUDA graph, fused Adam) on CUDA")
    rows: list[dict[str, Any]] = []
    features: dict[str, Any] = {}
    cut: list[str] = []
    if args.continue_from:  # an earlier call's runs: kept, not repeated, their l1 reused
        earlier = json.loads(Path(args.continue_from).read_text())
        rows = earlier["rows"]
        features = json.loads(Path(args.continue_from).with_name("llm_features.json").read_text())
        meta["earlier_calls"] = [*earlier["metadata"].get("earlier_calls", []),
                                 {k: earlier["metadata"][k] for k in CALL_KEYS if k in earlier["metadata"]}]
        meta.update(study_design(earlier["metadata"], meta))
        for r in rows:
            study.ms.setdefault((r["method"], r["d_sae"]), r["step_ms"])  # plan with measured step times
            if r["l1"] is not None and r["seed"] == args.seeds[0]:
                study.l1[(r["method"], r["target_l0"], r["d_sae"])] = {"l1": r["l1"], "l0": r["l0"], "slope": r["slope"],
                                                                       "drift": r["actual_drift"]}
    design = argparse.Namespace(**{**vars(args), **{k: meta[k] for k in DESIGN_KEYS}, "jobs": None})  # not_run's yardstick

    def write() -> None:
        n_new = len(rows) - sum(c["n_sae"] for c in meta.get("earlier_calls", []))
        meta.update(wall_s=bench.elapsed(), cut=cut, n_sae=n_new, end_to_end_per_sae_s=bench.elapsed() / max(1, n_new),
                    not_run=[j.key for j in plan(design, row_keys(rows))])
        atomic_write_text(out_dir / "llm.json", json.dumps({"metadata": meta, "rows": rows}, indent=1))
        atomic_write_text(out_dir / "llm_features.json", json.dumps(features))

    for job in plan(args, row_keys(rows)):
        if bench.elapsed() + study.cost(job) > args.budget_s:
            cut.append(f"{job.key} (planned {study.cost(job):.0f} s; {args.budget_s - bench.elapsed():.0f} s left)")
            continue
        calibration = ({"l1": None, "trials": [], "how": "k = target", "wall_s": 0.0} if job.method.startswith("topk")
                       else study.choose_l1(job))
        sae, timing = study.train(job, calibration["l1"], study.steps)
        row, ev = study.record(job, sae, timing, calibration)
        rows.append(row)
        meta["splice_positions"] = ev["n_positions"]
        if calibration.get("best_probe"):
            study.l1[(job.method, job.target, job.d_sae)] = {"l1": row["l1"], "l0": row["l0"], "slope": row["slope"],
                                                             "drift": row["actual_drift"]}
        if job.seed == args.seeds[0] and job.target == min(args.targets) and job.d_sae == args.latents:
            features[job.method] = {"target_l0": job.target, "seed": job.seed,
                                    "latents": bench.top_contexts(sae, ev["counts"], seed=1234)}
        print(f"[{bench.elapsed():5.0f} s] {row['label']} {job.d_sae} target {job.target} seed {job.seed}: L0 "
              f"{row['l0']:.1f}{'' if row['calibration_converged'] else ' (missed)'}, dead {row['dead_pct']:.2f} % over "
              f"{row['dead_window_tokens']:,}, EV {row['ev']:.3f}, dCE {row['delta_ce']:.3f} ({timing['wall_s']:.1f} s, "
              f"{timing['step_ms']:.2f} ms/step)", flush=True)
        del sae
        write()
    write()
    return {"metadata": meta, "rows": rows}


def main(argv: list[str] | None = None, description: str | None = None) -> None:
    """``benchmarks/llm.py``: run, write llm.json, llm_features.json and llm.md under --out (or only --markdown's
    .md, or with --speed-only the harvest's speed)."""
    args = parse_args(argv, description or __doc__.splitlines()[0])
    if args is None:
        return
    if args.speed_only:
        from aen_mini.experiments.llm_speed import main as speed

        speed(args)
        return
    run_all(args)
    print(write_markdown(Path(args.out) / "llm.json").read_text())
