"""Command lines the CLI must refuse cleanly (exit status 2, one line ``error: ...`` naming the problem), and a way
to run the CLI in a subprocess. Used by tests/test_cli_errors.py and benchmarks/reliability.py, so it lives in
the package, where both may import it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["SPIKED", "adversarial_cases", "run_cli"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding aen_mini/
SPIKED = ["train", "--model", "spiked", "--sae", "relu_l1", "--latents", "16", "--tokens", "1024", "--batch-size", "256",
          "--no-progress"]


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m aen_mini *argv`` in a subprocess (one torch thread), output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PACKAGE_ROOT)}
    return subprocess.run([sys.executable, "-m", "aen_mini", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through chmod; /proc/self is read-only for everyone
        return Path("/proc/self/aen-run")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "run"


def adversarial_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a piece of the one-line message)."""
    (tmp / "a-file").write_text("x")
    (tmp / "folder.json").mkdir()
    (tmp / "bad.toml").write_text("sae = aen\n")  # TOML needs quotes
    (tmp / "latin1.json").write_bytes('{"corpus": "caf\xe9"}'.encode("latin-1"))
    (tmp / "42.json").write_text("42")
    (tmp / "string-bool.json").write_text(json.dumps({"model": "spiked", "normalize": "false"}))
    (tmp / "out-5.json").write_text(json.dumps({"model": "spiked", "out": 5}))
    no_hook = tmp / "no-hook"
    no_hook.mkdir()
    (no_hook / "config.json").write_text(json.dumps({"model": "tiny-neox", "sae": "aen", "normalize": True, "ctx_len": 128}))
    cases = {
        "out is a file": ([*SPIKED, "--out", str(tmp / "a-file")], "is a file, not a folder"),
        "out under a file": ([*SPIKED, "--out", str(tmp / "a-file" / "run")], "is a file"),
        "out read-only": ([*SPIKED, "--out", str(_read_only_folder(tmp))], "not writable"),
        "config is a folder": (["train", "--config", str(tmp / "folder.json")], "is a folder"),
        "TOML syntax error": (["train", "--config", str(tmp / "bad.toml")], f"config {tmp / 'bad.toml'} is not valid TOML"),
        "config not UTF-8": (["train", "--config", str(tmp / "latin1.json")], f"config {tmp / 'latin1.json'} is not UTF-8"),
        "JSON 42": (["train", "--config", str(tmp / "42.json")], "must hold an object of settings"),
        '"normalize": "false"': (["train", "--config", str(tmp / "string-bool.json")], "normalize must be true or false"),
        '"out": 5': (["train", "--config", str(tmp / "out-5.json")], "out must be a string"),
        "--eval-contexts 0": ([*SPIKED, "--eval-contexts", "0", "--out", str(tmp / "e")], "eval_contexts must be a positive"),
        "export without hook": (["export", str(no_hook), "--out", str(tmp / "x")], "lacks hook"),
        "unknown flag abbreviation": (["train", "--lat", "16"], "unrecognized arguments: --lat"),
    }
    if not torch.cuda.is_available():
        cases["--device cuda on CPU-only torch"] = ([*SPIKED, "--device", "cuda", "--out", str(tmp / "c")],
                                                    "CUDA is not available here")
    return cases
