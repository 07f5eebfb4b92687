"""Time the installs `make test` does on first use, in a fresh copy of the repository: the sae-lens venv
(`make saelens-venv`), and with --main-venv also `.venv` (`make install`).

    python3 benchmarks/install.py [--main-venv]

Writes benchmarks/install.json and benchmarks/install.md. Network access to PyPI is needed; the times include
downloads, so they vary with the connection and the pip cache.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by the system python3, before any venv exists

from aen_mini.experiments.report import markdown_table, provenance, provenance_markdown  # noqa: E402


def timed(target: str, cwd: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    done = subprocess.run(["make", "--no-print-directory", target, f"PY={sys.executable}"], cwd=cwd,
                          capture_output=True, text=True)
    return {"target": target, "wall_s": round(time.perf_counter() - t0, 1), "exit": done.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main-venv", action="store_true", help="also time `make install` (.venv)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv*", "_build", ".git"))
        rows = [timed("saelens-venv", copy)] + ([timed("install", copy)] if args.main_venv else [])
    report = {"command": "python3 benchmarks/install.py" + (" --main-venv" if args.main_venv else ""), "installs": rows,
              "provenance": provenance(sys.argv, "cpu", packages=()),
              "load_average_1min": round(os.getloadavg()[0], 2)}
    md = ["# First-use installs of `make test`", "", provenance_markdown(report["provenance"]),
          f"- Load average at the end: {report['load_average_1min']}", "",
          markdown_table(["make target", "wall s", "exit"], [[r["target"], r["wall_s"], r["exit"]] for r in rows],
                         align="lrr")]
    # plain writes, not write_report: its atomic writer needs torch, and this runs before any venv exists
    (REPO / "benchmarks" / "install.json").write_text(json.dumps(report, indent=2) + "\n")
    (REPO / "benchmarks" / "install.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
