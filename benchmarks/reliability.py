"""Reliability benchmark: how many bad inputs were refused cleanly, and whether SIGKILLed training resumes exactly.

    .venv/bin/python benchmarks/reliability.py [--kills 3] [--examples 300]

Writes benchmarks/reliability.json and benchmarks/reliability.md:
- checkpoint damage, exhaustively: a flipped bit in every byte of a checkpoint, truncation at every 8th offset,
  foreign and non-checkpoint files, checkpoints of other shapes; each must raise a ValueError naming the file;
- the property tests of tests/test_properties.py run with ``--examples`` examples each (random shapes, dtypes,
  NaN/inf, empty batches, extreme hyperparameters into make_sae, encode/decode/loss, train, checkpoints, solver);
- kill/resume cycles: training in a subprocess SIGKILLed ``--kills`` times at random points for three variants,
  resumed, and compared bitwise with an uninterrupted run (aen_mini/run/crash_worker.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's aen_mini, installed or not

from aen_mini.data.source import TensorSource  # noqa: E402
from aen_mini.experiments.report import markdown_table, provenance, provenance_markdown, write_report  # noqa: E402
from aen_mini.io.checkpoint import load_checkpoint, load_sae_state  # noqa: E402
from aen_mini.run import crash_worker  # noqa: E402
from aen_mini.run.cli_cases import SPIKED, adversarial_cases, run_cli  # noqa: E402
from aen_mini.run.runfolder import RunFolderLock  # noqa: E402
from aen_mini.sae import make_sae  # noqa: E402
from aen_mini.train.loop import TrainConfig, train  # noqa: E402

VARIANT_HYPERPARAMETERS = {"aen": crash_worker.DEFAULT_SPEC["hyperparameters"],
                           "batch_topk": {"k": 3, "dead_after_tokens": 640}, "topk": {"k": 3, "dead_after_tokens": 640}}


def _refused(path: Path) -> bool:
    """True when loading raises a ValueError that names the file; anything else is a failure."""
    try:
        load_checkpoint(path)
    except ValueError as err:
        return str(path) in str(err)
    except Exception:  # noqa: BLE001 - counted as not clean
        return False
    return False


def checkpoint_damage(tmp: Path) -> dict[str, dict[str, int]]:
    path = tmp / "good.safetensors"
    sae = make_sae("aen", 4, 8, warmup_steps=4)
    train(sae, TensorSource(torch.randn(64, 4, generator=torch.Generator().manual_seed(0))),
          TrainConfig(steps=6, batch_size=16, checkpoint_every=6, checkpoint_path=str(path), progress=False))
    data = path.read_bytes()
    results: dict[str, dict[str, int]] = {}

    def tally(category: str, contents: list[bytes]) -> None:
        clean = 0
        for i, content in enumerate(contents):
            damaged = tmp / f"damaged-{i}.safetensors"
            damaged.write_bytes(content)
            clean += _refused(damaged)
            damaged.unlink()
        results[category] = {"tried": len(contents), "refused_cleanly": clean}

    flips = []
    for offset in range(len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (offset % 8)
        flips.append(bytes(flipped))
    tally("checkpoint bit flip (every byte)", flips)
    tally("checkpoint truncation (every 8th offset)", [data[:n] for n in range(0, len(data), 8)])
    foreign = tmp / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, str(foreign))
    tally("foreign / non-checkpoint file", [foreign.read_bytes(), b"", b"hello\n", (2**40).to_bytes(8, "little")])
    state = load_checkpoint(path).sae.state_dict()
    clean = 0
    others = [make_sae("aen", 4, 16), make_sae("aen", 5, 8), make_sae("relu_l1", 4, 8), make_sae("topk", 4, 8, k=2)]
    for other in others:
        try:
            load_sae_state(other, state, source=str(path))
        except ValueError as err:
            clean += str(path) in str(err)
    results["checkpoint of another shape or variant"] = {"tried": len(others), "refused_cleanly": clean}
    return results


def property_tests(examples: int, cli_examples: int) -> dict[str, object]:
    """Run tests/test_properties.py with ``examples`` examples per property and the CLI property of
    tests/test_cli_errors.py (each example a training run) with ``cli_examples``; parse hypothesis' statistics."""
    env = {**os.environ, "AEN_HYPOTHESIS_EXAMPLES": str(examples), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "tests" / "test_properties.py"), "-q",
                          "-p", "no:cacheprovider", "--hypothesis-show-statistics"],
                         capture_output=True, text=True, env=env, cwd=REPO)
    cli = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
                          str(REPO / "tests" / "test_cli_errors.py") + "::test_valid_settings_train_and_invalid_ones_are_refused"],
                         capture_output=True, text=True, env={**env, "AEN_HYPOTHESIS_EXAMPLES": str(cli_examples)}, cwd=REPO)
    run = subprocess.CompletedProcess(run.args, max(run.returncode, cli.returncode), run.stdout + "\n" + cli.stdout)
    per_test: dict[str, int] = {}
    current = None
    for line in run.stdout.splitlines():
        name = re.search(r"test_(?:properties|cli_errors)\.py::(\w+):", line)
        if name:
            current = name.group(1)
        counts = re.search(r"(\d+) passing, (\d+) failing", line)
        if counts and current:
            per_test[current] = per_test.get(current, 0) + int(counts.group(1)) + int(counts.group(2))
    summary = re.findall(r"(\d+) (passed|failed)", run.stdout)
    return {"examples_per_property": per_test, "pytest": " ".join(f"{n} {w}" for n, w in summary),
            "all_passed": run.returncode == 0}


def _ended(done: subprocess.CompletedProcess) -> dict[str, object]:
    lines = done.stderr.strip().splitlines()
    clean = done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    return {"exit": done.returncode, "stderr_lines": len(lines), "message": (lines[-1] if lines else "")[:160],
            "refused_cleanly": clean}


def _tmpfs(folder: Path, size: str = "64k") -> bool:
    """A tiny tmpfs at ``folder`` (a real full disk), where mounting is allowed (root in a container)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def adversarialrun_cli(tmp: Path) -> list[dict[str, object]]:
    """The CLI's adversarial inputs (tests/test_cli_errors.py, plus run-folder cases that need a run first), each run
    as a subprocess; clean means exit status 2 and one line on stderr starting with 'error: '."""
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (argv, _) in adversarial_cases(tmp).items():
        rows.append({"input": name, **_ended(run_cli(*argv, cwd=tmp))})
    run = [*SPIKED, "--out", str(tmp / "run")]
    assert run_cli(*run).returncode == 0, "the reference run failed"
    rows.append({"input": "train into a folder holding a run (no --overwrite)", **_ended(run_cli(*run))})
    rows.append({"input": "--resume with other data (--rho)", **_ended(run_cli(*run, "--resume", "--rho", "0.3"))})
    rows.append({"input": "--resume with another learning rate", **_ended(run_cli(*run, "--resume", "--lr", "0.01"))})
    with RunFolderLock(tmp / "locked"):
        rows.append({"input": "a second run on a locked folder", **_ended(run_cli(*SPIKED, "--out", str(tmp / "locked")))})
    full = tmp / "full"
    if _tmpfs(full):
        try:
            rows.append({"input": "disk full (64 KiB tmpfs)", **_ended(run_cli(*SPIKED, "--latents", "256", "--out", str(full / "run")))})
        finally:
            subprocess.run(["umount", str(full)], capture_output=True)
    else:
        rows.append({"input": "disk full (64 KiB tmpfs)", "exit": None, "stderr_lines": None,
                     "message": "not tried: mounting a tmpfs needs root (tests/test_cli_errors.py simulates ENOSPC)",
                     "refused_cleanly": None})
    return rows


def kill_resume(kills: int, tmp: Path) -> list[dict[str, object]]:
    runs = []
    for i, (variant, hyperparameters) in enumerate(VARIANT_HYPERPARAMETERS.items()):
        spec = {**crash_worker.DEFAULT_SPEC, "variant": variant, "hyperparameters": hyperparameters}
        result = crash_worker.train_with_kills(tmp / variant, kills, seed=i, spec=spec)
        runs.append({"variant": variant, **result})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per training run")
    parser.add_argument("--examples", type=int, default=300, help="hypothesis examples per property")
    parser.add_argument("--cli-examples", type=int, default=60, help="examples of the CLI property (each a training run)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks", help="where reliability.json and .md go")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        damage = checkpoint_damage(Path(tmp))
        properties = property_tests(args.examples, args.cli_examples)
        adversarial = adversarialrun_cli(Path(tmp) / "cli")
        cycles = kill_resume(args.kills, Path(tmp))
    kills_total = sum(len(r["kills"]) for r in cycles)
    kills_landed = sum(k["killed"] for r in cycles for k in r["kills"])
    report = {
        "command": f"python benchmarks/reliability.py --kills {args.kills} --examples {args.examples} "
                   f"--cli-examples {args.cli_examples}",
        "provenance": provenance(sys.argv, "cpu", packages=("safetensors", "hypothesis")),
        "checkpoint_damage": damage,
        "property_tests": properties,
        "adversarial_cli": adversarial,
        "counts": {"kills_survived": sum(k["killed"] for r in cycles for k in r["kills"] if r["nothing_lost"]),
                   "kills": kills_total,
                   "corruptions_refused": sum(c["refused_cleanly"] for c in damage.values()),
                   "corruptions_tried": sum(c["tried"] for c in damage.values()),
                   "adversarial_inputs_refused_cleanly": sum(bool(a["refused_cleanly"]) for a in adversarial),
                   "adversarial_inputs_tried": sum(a["exit"] is not None for a in adversarial)},
        "kill_resume": {"runs": cycles, "kills": kills_total, "kills_that_landed_mid_run": kills_landed,
                        "runs_with_nothing_lost": sum(r["nothing_lost"] for r in cycles)},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_report(args.out_dir, "reliability", report, markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    c = r["counts"]
    dash = lambda v: "–" if v is None else v  # noqa: E731 (a case that could not be tried here)
    lines = ["# Reliability benchmark", "", f"{r['wall_s']} s in all.", "", provenance_markdown(r["provenance"]), "",
             markdown_table(["count", ""], [
                 ["SIGKILLs survived (the run resumed and ended bitwise equal to an uninterrupted one)",
                  f"{c['kills_survived']} of {c['kills']}"],
                 ["damaged or foreign checkpoints refused with a ValueError naming the file",
                  f"{c['corruptions_refused']} of {c['corruptions_tried']}"],
                 ["adversarial command lines that ended with status 2 and one line",
                  f"{c['adversarial_inputs_refused_cleanly']} of {c['adversarial_inputs_tried']}"]], align="lr"),
             "", "## Adversarial command lines", "",
             "Each a `python -m aen_mini` subprocess (aen_mini/run/cli_cases.py; tests/test_cli_errors.py runs the "
             "same cases as tests).", "",
             markdown_table(["input", "exit", "stderr lines", "message"],
                            [[a["input"], dash(a["exit"]), dash(a["stderr_lines"]), a["message"]]
                             for a in r["adversarial_cli"]], align="lrrl"),
             "", "## Bad inputs", "",
             markdown_table(["category", "tried", "refused cleanly (ValueError naming the file)"],
                            [[name, d["tried"], d["refused_cleanly"]] for name, d in r["checkpoint_damage"].items()],
                            align="lrr")]
    p = r["property_tests"]
    lines += ["", "Property tests (tests/test_properties.py: every example either works with finite results or "
              "raises a clear ValueError/TypeError; tests/test_cli_errors.py: valid run settings train, invalid ones end "
              "with status 2 and one line):", "",
              markdown_table(["property", "examples"], p["examples_per_property"].items(), align="lr")]
    lines += ["", f"pytest: {p['pytest']} ({'all passed' if p['all_passed'] else 'FAILURES'})", "",
              "## Kill / resume", "",
              markdown_table(["variant", "kills (landed mid-run)", "resumed from steps", "lost"], [
                  [run["variant"], f"{len(run['kills'])} ({sum(k['killed'] for k in run['kills'])})",
                   ", ".join(str(k["resumes_from_step"]) for k in run["kills"]) + f" of {run['steps']}",
                   "nothing" if run["nothing_lost"] else json.dumps(run["diff"])]
                  for run in r["kill_resume"]["runs"]], align="lrll")]
    k = r["kill_resume"]
    lines += ["", f"{k['runs_with_nothing_lost']} of {len(k['runs'])} runs ended bitwise equal to an uninterrupted run "
              "(weights, buffers incl. the adaptive EMA and warm-up step, Adam state, data position, history), "
              f"after {k['kills_that_landed_mid_run']} of {k['kills']} SIGKILLs that landed mid-run.", "",
              "Not in the numbers above: resuming with a TrainConfig that changes the trajectory (batch size, lr and "
              "its schedule, Adam betas, grad clip, seed, resampling, b_dec init, precision, fast; steps when the lr "
              "decays) is refused up front with a ValueError naming each field and both values, and 2-process "
              "data-parallel and latent-sharded runs resume exactly (tests/test_train.py, tests/test_distributed.py)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
