"""Student editions of the chapter notebooks: the same notebook with every exercise's reference code removed.

The source notebook (notebooks/NN_x.ipynb, built into the book, solutions folded) marks each exercise as

- a markdown cell starting ``**Exercise N.M: title** (difficulty: easy|medium|hard, about NN min)``;
- then a code cell tagged ``solution`` (and ``hide-input``) in which the reference code sits between a line
  ``# BEGIN SOLUTION`` and a line ``# END SOLUTION`` inside the function the student writes;
- then a cell calling ``check("name", my_function)``.

The student edition (student/NN_x.ipynb) replaces each marked block by
``raise NotImplementedError("Exercise N.M: your code here")`` at the block's indentation and clears every
output. ``python -m aen_mini.book.student`` (``make student``) also rewrites each source's Colab badge and install
cell from _config.yml (aen_mini.book.links), then writes the student editions; ``--check`` only reports what is
out of date and exits 1 if anything is.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from aen_mini.book.links import STUDENT_DIR, Repository

__all__ = ["Exercise", "exercises", "strip_solution", "student_notebook", "sync_links", "main"]

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
SOLUTION_TAG = "solution"
HEADER = re.compile(r"^\*\*Exercise (?P<number>\d+\.\d+): (?P<title>[^*]+)\*\* "
                    r"\(difficulty: (?P<difficulty>easy|medium|hard), about (?P<minutes>\d+) min\)")
CHECK = re.compile(r"""\bcheck\(\s*["'](?P<name>\w+)["']\s*,\s*(?P<function>\w+)\s*\)""")
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook: where its cells are and what its checker and function are called."""

    number: str
    title: str
    difficulty: str
    minutes: int
    solution_cell: int
    check_name: str
    function: str

    def stub(self) -> str:
        return f'raise NotImplementedError("Exercise {self.number}: your code here")'


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def exercises(nb: nbformat.NotebookNode, where: str = "notebook") -> list[Exercise]:
    """The exercises of `nb` in order; ValueError naming the cell when one breaks the format above."""
    found: list[Exercise] = []
    cells = nb.cells
    solution_cells = {i for i, c in enumerate(cells) if SOLUTION_TAG in _tags(c)}
    claimed: set[int] = set()
    for i, cell in enumerate(cells):
        # the header starts a line of a markdown cell (after a section heading, say)
        line = next((ln for ln in cell.source.splitlines() if ln.startswith("**Exercise")), None)
        if cell.cell_type != "markdown" or line is None:
            continue
        header = HEADER.match(line)
        if header is None:
            raise ValueError(f"{where}, cell {i}: an exercise must start with '**Exercise N.M: title** "
                             f"(difficulty: easy|medium|hard, about NN min)', got {line!r}")
        solution = next((j for j in range(i + 1, len(cells)) if j in solution_cells), None)
        check_cell = next((j for j in range(i + 1, len(cells)) if cells[j].cell_type == "code"
                           and CHECK.search(cells[j].source)), None)
        if solution is None or check_cell is None or check_cell < solution:
            raise ValueError(f"{where}, exercise {header['number']}: needs a code cell tagged {SOLUTION_TAG!r} "
                             "followed by a check(\"name\", function) cell")
        if "hide-input" not in _tags(cells[solution]) or BEGIN not in cells[solution].source:
            raise ValueError(f"{where}, cell {solution}: a solution cell is tagged 'hide-input' too and holds "
                             f"{BEGIN!r} ... {END!r}")
        call = CHECK.search(cells[check_cell].source)
        found.append(Exercise(header["number"], header["title"].strip(), header["difficulty"],
                              int(header["minutes"]), solution, call["name"], call["function"]))
        claimed.add(solution)
    orphans = sorted(solution_cells - claimed)
    if orphans:
        raise ValueError(f"{where}, cell {orphans[0]}: tagged {SOLUTION_TAG!r} but no exercise header precedes it")
    return found


def strip_solution(source: str, stub: str) -> str:
    """`source` with each BEGIN/END SOLUTION block (markers included) replaced by `stub` at its indentation."""
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN!r} inside another solution block")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + stub)
        elif marker == END:
            if not inside:
                raise ValueError(f"line {number}: {END!r} without a {BEGIN!r} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a {BEGIN!r} block is not closed by {END!r}")
    return "\n".join(out)


def student_notebook(nb: nbformat.NotebookNode, where: str = "notebook") -> nbformat.NotebookNode:
    """The student edition of a source notebook: solutions replaced by stubs, every output cleared."""
    student = copy.deepcopy(nb)
    for exercise in exercises(nb, where):
        cell = student.cells[exercise.solution_cell]
        cell.source = strip_solution(cell.source, exercise.stub())
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return student


def sync_links(nb: nbformat.NotebookNode, repo: Repository, stem: str) -> nbformat.NotebookNode:
    """`nb` with its Colab badge and its first code cell (the install cell) generated from `repo`."""
    synced = copy.deepcopy(nb)
    for cell in synced.cells:
        if cell.cell_type == "markdown" and BADGE.search(cell.source):
            cell.source = BADGE.sub(lambda _: repo.colab_badge(stem), cell.source)
    code = [cell for cell in synced.cells if cell.cell_type == "code"]
    if not code or "google.colab" not in code[0].source:
        raise ValueError(f"{stem}: the first code cell must be the Colab install cell")
    code[0].source = repo.install_cell()
    return synced


def _write_if_changed(path: Path, nb: nbformat.NotebookNode, check: bool) -> bool:
    """Write `nb` to `path` unless it is already there; True when the file was (or, with check, would be) changed."""
    text = nbformat.writes(nb) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    if not check:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sync Colab links and write the student editions of the chapters.")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root (default: here)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    repo = Repository.from_config(args.root)
    sources = sorted((args.root / "notebooks").glob("*.ipynb"))
    if not sources:
        parser.error(f"no notebooks in {args.root / 'notebooks'}")
    stale = []
    for path in sources:
        source = sync_links(nbformat.read(path, as_version=4), repo, path.stem)
        target = args.root / STUDENT_DIR / path.name
        for out, nb in ((path, source), (target, student_notebook(source, str(path)))):
            if _write_if_changed(out, nb, args.check):
                stale.append(out)
    expected = {p.name for p in sources}
    extra = [p for p in sorted((args.root / STUDENT_DIR).glob("*.ipynb")) if p.name not in expected]
    for path in extra:  # the student edition of a chapter that no longer exists
        stale.append(path)
        if not args.check:
            path.unlink()
    verb = "out of date" if args.check else "written"
    print("\n".join(f"{verb}: {p.relative_to(args.root)}" for p in stale) or "all up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
