"""How long the book takes to build: a full `jupyter-book build` into a fresh folder, timed as a whole,
with each notebook's execution time at the size the book runs it (SIZE = "ci") as myst-nb recorded it.

    .venv/bin/python benchmarks/book.py            # or: make benchmarks

writes benchmarks/book.json (every number and the setup it was measured on) and benchmarks/book.md.
The repository's own _build/ is left alone.
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's aen_mini, installed or not

from aen_mini.experiments.report import markdown_table, provenance, provenance_markdown, write_report  # noqa: E402

JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
TARGET_S = 300  # `make book` on 2 CPU cores: the whole book in at most 5 minutes


def notebook_runtimes(doctrees: Path) -> dict[str, dict[str, Any]]:
    """Per-notebook execution records that myst-nb stores in the Sphinx environment of the build."""
    with open(doctrees / "environment.pickle", "rb") as f:
        env = pickle.load(f)
    records = {}
    for docname, meta in sorted(getattr(env, "nb_metadata", {}).items()):
        exec_data = meta.get("exec_data")
        if exec_data:
            records[docname] = {"runtime_s": round(exec_data["runtime"], 2), "succeeded": exec_data["succeeded"]}
    return records


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aen_mini_book_") as build_dir:
        command = [os.path.relpath(JUPYTER_BOOK, ROOT), "build", ".", "-W", "--keep-going", "-n", "--path-output", build_dir]
        shown = " ".join(["OMP_NUM_THREADS=1", *command[:-2], "--path-output", "<fresh temporary folder>"])
        setup = {"provenance": provenance(shown, "cpu", packages=("jupyter-book", "myst-nb", "sphinx")),
                 "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
        start = time.perf_counter()
        # Same environment as `make book`: one thread per notebook kernel.
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        total_s = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"the book build failed (exit {done.returncode}); nothing written.\n{done.stdout[-5000:]}\n"
                     f"{done.stderr[-5000:]}")
        notebooks = notebook_runtimes(Path(build_dir) / "_build" / ".doctrees")
    return {
        "benchmark": "book build",
        "size": "ci",
        "total_build_s": round(total_s, 1),
        "target_s": TARGET_S,
        "within_target": total_s <= TARGET_S,
        "notebook_execution_s": round(sum(r["runtime_s"] for r in notebooks.values()), 1),
        "notebooks": notebooks,
        **setup,
    }


def markdown(result: dict[str, Any]) -> str:
    return "\n".join([
        "# Book build benchmark",
        "",
        f"Written by `benchmarks/book.py`; 1-min load average at start {result['load_average_1min_at_start']}.",
        "",
        provenance_markdown(result["provenance"]),
        f"- Total build time: **{result['total_build_s']} s**, of which notebook execution "
        f"{result['notebook_execution_s']} s (notebooks at SIZE = \"{result['size']}\")",
        f"- Target: at most {result['target_s']} s on 2 CPU cores: "
        f"{'met' if result['within_target'] else '**not met**'}. The rest of the total (Sphinx reading and "
        "writing the pages, copying MathJax) is the build time minus the notebooks' execution.",
        "",
        markdown_table(["Notebook", "Execution time (s)", "Succeeded"],
                       [[f"`{name}`", r["runtime_s"], r["succeeded"]] for name, r in result["notebooks"].items()],
                       align="lrl"),
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks", help="where book.json and book.md go")
    args = parser.parse_args(argv)
    result = run()
    write_report(args.out_dir, "book", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
