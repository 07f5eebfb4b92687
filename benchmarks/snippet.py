"""The README's "package in one screen" snippet, run as a reader would: wall time on this machine and what it prints.

    .venv/bin/python benchmarks/snippet.py [--threads 2]

Writes benchmarks/snippet.json and benchmarks/snippet.md. The snippet is read from README.md (the first python block
after the heading "The package in one screen") and run in a fresh interpreter, so its time includes importing
torch and the package.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's aen_mini, installed or not

from aen_mini.experiments.report import provenance, provenance_markdown, write_report  # noqa: E402



def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The package in one screen"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS), as on 2 cores")
    args = parser.parse_args()
    code = readme_snippet()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if run.returncode:
        sys.exit(f"the README snippet failed:\n{run.stderr[-3000:]}")
    report = {"command": f"python benchmarks/snippet.py --threads {args.threads}", "wall_s": round(wall, 1),
              "threads": args.threads, "printed": run.stdout,
              "provenance": provenance(sys.argv, "cpu"), "load_average_1min": round(os.getloadavg()[0], 2)}
    md = "\n".join(["# The README snippet", "", provenance_markdown(report["provenance"]),
                    f"- Load average at the end: {report['load_average_1min']}", "",
                    f"Wall time, including starting Python and importing torch: **{report['wall_s']} s** "
                    f"with {args.threads} threads.", "", "It printed:", "", "```", run.stdout.rstrip(), "```", ""])
    write_report(REPO / "benchmarks", "snippet", report, md)
    print(md)


if __name__ == "__main__":
    main()
