"""A results folder as a resource one run owns: checked before any work, locked while training, never silently
replaced.

``check_out_folder`` says, before data is built, whether a run may write to a folder (not a file, not under a
file, writable, not already holding a run unless resumed or overwritten). ``RunFolderLock`` holds an exclusive
``fcntl.flock`` on ``OUT/.lock`` for the whole run; the file records who holds it (pid, host, start time), so a
second process is refused with a message naming the first. While the lock is held, the folder's temporary files
(``.NAME.tmp-PID`` from ``aen_mini.io.atomic``) can only be left over from a killed run: they are removed.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
# The files a run writes; a folder holding any of them holds a run.
RUN_FILES = ("checkpoint.safetensors", "config.json", "metrics.json", "eval.json")
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")  # aen_mini.io.atomic's temporary name


class RunFolderError(ValueError):
    """The folder cannot take this run; the message says why and what to do."""


def check_out_folder(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Refuse an output folder that is a file, lies under a file, is not writable, or already holds a run that
    would be replaced (neither ``resume`` nor ``overwrite``). Creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} is a file, not a folder")
    parent = out
    while not parent.exists():  # the nearest existing ancestor: where the folder would be created
        parent = parent.parent
    if not parent.is_dir():
        raise RunFolderError(f"output folder {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunFolderError(f"output folder {out} is not writable ({parent} is read-only for this user)")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not (resume or overwrite):
        raise RunFolderError(f"output folder {out} already holds a run ({', '.join(held)}); pass --resume to continue "
                             "it, --overwrite to replace it, or choose another --out")
    return out


def holder(out: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds (or last held) the lock of ``out``: {"pid", "host", "started"}, or None if unknown."""
    try:
        return json.loads((Path(out) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


class RunFolderLock:
    """``with RunFolderLock(out):`` an exclusive lock on a run folder (created if missing) for one process.

    The lock is the kernel's flock on OUT/.lock, released when the process exits however it exits (a SIGKILLed run
    leaves no stale lock). On entry, temporary files left by a killed run in this folder are removed."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self._fd: int | None = None
        self.swept: list[str] = []

    def __enter__(self) -> "RunFolderLock":
        self._created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = holder(self.out) or {}
            started = who.get("started")
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
            raise RunFolderError(f"output folder {self.out} is in use by another run (pid {who.get('pid', '?')} on "
                                 f"host {who.get('host', '?')}, started {since}); wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        self._fd = fd
        self.swept = sweep_temporaries(self.out)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._fd is None:
            return
        if exc_type is not None and self._created and [p.name for p in self.out.iterdir()] == [LOCK_NAME]:
            (self.out / LOCK_NAME).unlink()  # a run refused before writing anything leaves no folder behind
            self.out.rmdir()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def sweep_temporaries(out: str | os.PathLike) -> list[str]:
    """Remove the temporaries of this run's files (``.checkpoint.safetensors.tmp-PID`` ...) from ``out``; call only
    while holding its lock, when no other writer can be mid-write. Returns the names removed."""
    removed = []
    for path in Path(out).iterdir():
        match = _TEMPORARY.match(path.name)
        if match and match.group("name") in RUN_FILES and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


def clear_run(out: str | os.PathLike) -> None:
    """Remove a run's files from ``out`` (``--overwrite``), so nothing of the earlier run survives beside the new one."""
    for name in RUN_FILES:
        (Path(out) / name).unlink(missing_ok=True)


__all__ = ["LOCK_NAME", "RUN_FILES", "RunFolderError", "RunFolderLock", "check_out_folder", "clear_run", "holder",
           "sweep_temporaries"]
