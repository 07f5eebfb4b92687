"""Crash-safety harness: train in a subprocess, SIGKILL it at random points after a checkpoint exists, resume,
and compare the finished run with an uninterrupted one. Used by tests/test_crash_resume.py (1 kill) and
benchmarks/reliability.py (several), so it lives in the package, where both may import it.

    python -m aen_mini.run.crash_worker RUN_DIR    trains the run described by RUN_DIR/spec.json, resuming from
                                                   RUN_DIR/checkpoint.safetensors if it exists
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.safetensors"
# An AEN whose warm-up ramp, EMA, dead-latent resampling and lr schedule are all mid-way when the kills land.
DEFAULT_SPEC: dict[str, Any] = {
    "variant": "aen",
    "hyperparameters": {"l1_coeff": 3e-3, "l2_coeff": 1e-3, "ema_beta": 0.9, "warmup_start": 20, "warmup_steps": 60,
                        "dead_after_tokens": 640},
    "source": {"n": 16, "m": 48, "k": 3, "noise_std": 0.01, "seed": 3},
    "train": {"steps": 160, "batch_size": 64, "lr": 3e-3, "lr_warmup_steps": 10, "lr_decay_start": 0.8,
              "resample_every": 40, "checkpoint_every": 10, "log_every": 1, "progress": False},
    "d_sae": 64,
    "step_delay_s": 0.004,  # paces training so that a kill lands mid-run on a loaded machine
}


def _source(spec: dict[str, Any]):
    try:
        from aen_mini.data.synthetic import SpikedSource
    except ImportError:  # the synthetic module is optional here: fall back to seeded in-memory data
        from aen_mini.data.source import TensorSource
        cfg = spec["source"]
        x = torch.randn(4096, cfg["n"], generator=torch.Generator().manual_seed(cfg["seed"]))
        return TensorSource(x, seed=cfg["seed"])
    return SpikedSource(**spec["source"])


def run(run_dir: Path) -> None:
    """One (possibly resumed) training process."""
    from aen_mini.sae import make_sae
    from aen_mini.train.loop import TrainConfig, train

    torch.set_num_threads(1)  # the same reduction order in every process: bitwise-reproducible CPU runs
    spec = json.loads((run_dir / "spec.json").read_text())
    sae = make_sae(spec["variant"], spec["source"]["n"], spec["d_sae"], **spec["hyperparameters"])
    checkpoint = run_dir / CHECKPOINT
    cfg = TrainConfig(**spec["train"], checkpoint_path=str(checkpoint))
    delay = spec["step_delay_s"]
    train(sae, _source(spec), cfg, callback=lambda *_: time.sleep(delay),
          resume=checkpoint if checkpoint.exists() else None)


def _start(run_dir: Path) -> subprocess.Popen:
    # this checkout's aen_mini first on the child's path, whatever the caller's working directory
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "aen_mini.run.crash_worker", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{err[-3000:]}")


def _checkpoint_id(path: Path) -> tuple[int, int] | None:
    """Changes whenever the checkpoint is replaced (atomic rename: a new inode)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (bitwise), or that only one side has."""
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or not torch.equal(a[k], b[k]))


def compare(reference: Path, resumed: Path) -> dict[str, Any]:
    """What the resumed run lost relative to the uninterrupted one: lists of differing parts (all empty = nothing)."""
    from aen_mini.io.checkpoint import load_checkpoint

    ref, res = load_checkpoint(reference), load_checkpoint(resumed)
    ref_opt, res_opt = ref.optimizer_state, res.optimizer_state
    flat = lambda opt: {f"{i}.{k}": v for i, per in opt["state"].items() for k, v in per.items()}  # noqa: E731
    drop_speed = lambda hist: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in hist]  # noqa: E731
    return {
        "sae_tensors_differing": _tensors_equal(ref.sae.state_dict(), res.sae.state_dict()),
        "optimizer_tensors_differing": _tensors_equal(flat(ref_opt), flat(res_opt)),
        "optimizer_groups_equal": ref_opt["param_groups"] == res_opt["param_groups"],
        "data_position_equal": ref.train_state["source"] == res.train_state["source"],
        "step_equal": ref.train_state["step"] == res.train_state["step"],
        "history_equal": drop_speed(ref.train_state["history"]) == drop_speed(res.train_state["history"]),
    }


def nothing_lost(diff: dict[str, Any]) -> bool:
    return (not diff["sae_tensors_differing"] and not diff["optimizer_tensors_differing"]
            and all(v for k, v in diff.items() if k.endswith("_equal")))


def train_with_kills(workdir: Path, n_kills: int, seed: int, spec: dict[str, Any] | None = None,
                     max_kill_delay_s: float = 0.35) -> dict[str, Any]:
    """Uninterrupted reference run beside a run SIGKILLed ``n_kills`` times (each a random delay after the
    checkpoint was last replaced) and resumed; returns the kill points and what differs at the end."""
    from aen_mini.io.checkpoint import load_checkpoint

    spec = spec or DEFAULT_SPEC
    rng = random.Random(seed)
    reference_dir, crash_dir = workdir / "reference", workdir / "crashed"
    for d in (reference_dir, crash_dir):
        d.mkdir(parents=True)
        (d / "spec.json").write_text(json.dumps(spec))
    reference = _start(reference_dir)  # in parallel with the crashing run
    crash_checkpoint = crash_dir / CHECKPOINT
    kills = []
    for _ in range(n_kills):
        before = _checkpoint_id(crash_checkpoint)
        proc = _start(crash_dir)
        while _checkpoint_id(crash_checkpoint) == before:  # this process has written a checkpoint
            if proc.poll() is not None:
                raise RuntimeError(f"training ended before writing a checkpoint: {proc.stderr.read()[-3000:]}")
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, max_kill_delay_s))
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        saved = load_checkpoint(crash_checkpoint)
        kills.append({"killed": not finished_first and proc.returncode == -signal.SIGKILL,
                      "resumes_from_step": saved.train_state["step"],
                      "source_state": saved.train_state["source"],
                      "warmup_position": int(saved.sae.reweighting.step) if hasattr(saved.sae, "reweighting") else None})
    _finish(_start(crash_dir), "resumed run")
    _finish(reference, "reference run")
    leftovers = sorted(p.name for p in crash_dir.iterdir() if ".tmp-" in p.name)
    diff = compare(reference_dir / CHECKPOINT, crash_checkpoint)
    return {"kills": kills, "steps": spec["train"]["steps"], "diff": diff, "nothing_lost": nothing_lost(diff),
            "temporary_files_left_by_kills": leftovers}


if __name__ == "__main__":
    run(Path(sys.argv[1]))
