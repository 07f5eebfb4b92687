"""What every result file says about how it was made, and the one Markdown table writer.

The sweep, the replication and every script in benchmarks/ build their metadata with :func:`provenance` (command,
date, commit, versions, device) and their tables with :func:`markdown_table`, and write a result pair
(``NAME.json`` + ``NAME.md``) with :func:`write_report`.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["cpu_model", "git_commit", "markdown_table", "package_version", "provenance", "provenance_markdown",
           "write_report"]


def package_version(name: str) -> str | None:
    """An installed distribution's version (``"aen-mini"`` included), or None where it is not installed."""
    if name in ("aen-mini", "aen_mini"):
        import aen_mini  # an editable checkout may lack the distribution metadata but has __version__

        return aen_mini.__version__
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def cpu_model() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(command: str | Sequence[str], device: str = "cpu", packages: Iterable[str] = ("numpy",)) -> dict[str, Any]:
    """How a result was made: command, date, aen-mini version and commit, Python, torch and ``packages``' versions,
    device (with the GPU's name on CUDA), CPU model, CPU count and the cores usable here, torch threads, platform."""
    try:
        import torch
    except ImportError:  # benchmarks/install.py runs before any venv exists
        torch = None
    gpu = (torch.cuda.get_device_name() if torch is not None and str(device).startswith("cuda")
           and torch.cuda.is_available() else None)
    return {
        "command": command if isinstance(command, str) else " ".join(command),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "aen_mini_version": package_version("aen-mini"), "git_commit": git_commit(),
        "python": platform.python_version(), "torch": torch.__version__ if torch is not None else None,
        **{name: package_version(name) for name in packages},
        "device": str(device), "gpu": gpu, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_threads": torch.get_num_threads() if torch is not None else None,
        "platform": platform.platform(),
    }


def provenance_markdown(meta: dict[str, Any]) -> str:
    """A :func:`provenance` record as Markdown bullets: command, commit and date, device, versions."""
    fixed = {"command", "date", "git_commit", "device", "gpu", "cpu", "cpu_count", "cpu_usable", "cpu_threads", "platform"}
    commit = f"commit `{meta['git_commit']}`" if meta.get("git_commit") else "commit unknown (not a git checkout)"
    device = meta["gpu"] or meta["device"]
    return "\n".join([
        f"- Command: `{meta['command']}` ({commit}, {meta['date']})",
        f"- Device: {device}; CPU {meta['cpu']}, {meta['cpu_usable']} usable of {meta['cpu_count']} cores, "
        f"{meta['cpu_threads']} torch threads; {meta['platform']}",
        "- Versions: " + ", ".join(f"{'aen-mini' if k == 'aen_mini_version' else k} {v}" for k, v in meta.items()
                                   if k not in fixed),
    ])


def _cell(value: Any) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: all left)."""
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column ({len(header)}), got {align!r}")
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|"]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row}")
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def write_report(folder: str | Path, name: str, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``folder/name.json`` (indented) and ``folder/name.md`` atomically; returns both paths."""
    from aen_mini.io.atomic import atomic_write_text  # here: benchmarks/install.py runs without torch

    folder = Path(folder)
    return (atomic_write_text(folder / f"{name}.json", json.dumps(result, indent=2) + "\n"),
            atomic_write_text(folder / f"{name}.md", markdown.rstrip("\n") + "\n"))
