"""Student editions: generated from the chapter notebooks, in sync with them, and free of solution code.

Every exercise of every chapter is found by aen_mini.book.student.exercises (no list to maintain here): its
stub (the student edition's function) must be rejected by its checker with a message, never a crash, and
its reference solution in the source notebook must pass the same checker. Solution functions are run from
their own cell: they may use only what that cell imports, plus torch and math.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

import nbformat
import pytest
import torch

from aen_mini.book import student
from aen_mini.book.exercises import EXERCISES, check
from aen_mini.book.links import STUDENT_DIR, Repository

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


EXERCISE_CASES = [(path, ex) for path in SOURCES for ex in student.exercises(_read(path), str(path))]


def _function(source: str, name: str):
    """`name` defined by a solution cell, run with only the cell's imports and function definitions."""
    tree = ast.parse(source)
    kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
    namespace = {"torch": torch, "math": math}
    exec(compile(ast.Module(body=kept, type_ignores=[]), f"<solution of {name}>", "exec"), namespace)  # noqa: S102
    assert name in namespace, f"the solution cell defines no function {name!r}"
    return namespace[name]


def test_strip_solution_keeps_the_indentation_and_the_rest() -> None:
    source = "import math\ndef f(x):\n    y = 1\n    # BEGIN SOLUTION\n    return x + y\n    # END SOLUTION\n"
    assert student.strip_solution(source, "raise E") == "import math\ndef f(x):\n    y = 1\n    raise E"
    two = "def f():\n  # BEGIN SOLUTION\n  a\n  # END SOLUTION\n\ndef g():\n        # BEGIN SOLUTION\n        b\n" \
          "        # END SOLUTION"
    assert student.strip_solution(two, "S") == "def f():\n  S\n\ndef g():\n        S"


@pytest.mark.parametrize("source, message", [
    ("# BEGIN SOLUTION\nx\n", "not closed"),
    ("x\n# END SOLUTION\n", "without a"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside another"),
])
def test_strip_solution_rejects_broken_markers(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        student.strip_solution(source, "S")


def _exercise_notebook(header: str, tags: list[str], solution: str = "def f(x):\n    # BEGIN SOLUTION\n    return x\n"
                       "    # END SOLUTION") -> nbformat.NotebookNode:
    v4 = nbformat.v4
    return v4.new_notebook(cells=[v4.new_markdown_cell(header), v4.new_code_cell(solution, metadata={"tags": tags}),
                                  v4.new_code_cell('check("sae_loss", f)', outputs=[
                                      v4.new_output("stream", text="correct")])])


def test_exercises_are_parsed_and_stubbed() -> None:
    nb = _exercise_notebook("**Exercise 9.1: a title** (difficulty: hard, about 25 min)\n\nTask.",
                            ["solution", "hide-input"])
    (ex,) = student.exercises(nb)
    assert (ex.number, ex.title, ex.difficulty, ex.minutes, ex.solution_cell, ex.check_name, ex.function) == \
        ("9.1", "a title", "hard", 25, 1, "sae_loss", "f")
    edition = student.student_notebook(nb)
    assert edition.cells[1].source == 'def f(x):\n    raise NotImplementedError("Exercise 9.1: your code here")'
    assert edition.cells[2].outputs == [] and nb.cells[2].outputs, "outputs are cleared in the copy only"


@pytest.mark.parametrize("header, tags, message", [
    ("**Exercise 9.1: a title** (about 25 min)", ["solution", "hide-input"], "must start with"),
    ("**Exercise 9.1: a title** (difficulty: hard, about 25 min)", ["hide-input"], "tagged 'solution'"),
    ("**Exercise 9.1: a title** (difficulty: hard, about 25 min)", ["solution"], "'hide-input' too"),
    ("Some text", ["solution", "hide-input"], "no exercise header"),
])
def test_exercises_reject_a_broken_format(header: str, tags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        student.exercises(_exercise_notebook(header, tags))


def test_main_syncs_links_writes_editions_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/someone/book\n  branch: dev\n")
    (tmp_path / "notebooks").mkdir()
    nb = _exercise_notebook("**Exercise 1.1: t** (difficulty: easy, about 5 min)", ["solution", "hide-input"])
    v4 = nbformat.v4
    nb.cells[:0] = [v4.new_markdown_cell("# T\n[![Open In Colab](https://x/badge.svg)](https://old/link.ipynb)"),
                    v4.new_code_cell("import sys\nif 'google.colab' in sys.modules:\n    pass")]
    nbformat.write(nb, tmp_path / "notebooks" / "01_t.ipynb")
    (tmp_path / STUDENT_DIR).mkdir()
    nbformat.write(nb, tmp_path / STUDENT_DIR / "02_gone.ipynb")
    root = ["--root", str(tmp_path)]
    assert student.main([*root, "--check"]) == 1
    assert (tmp_path / STUDENT_DIR / "02_gone.ipynb").exists(), "--check changes nothing"
    assert student.main(root) == 0 and student.main([*root, "--check"]) == 0
    assert not (tmp_path / STUDENT_DIR / "02_gone.ipynb").exists()
    repo = Repository("someone/book", "dev")
    source, edition = _read(tmp_path / "notebooks" / "01_t.ipynb"), _read(tmp_path / STUDENT_DIR / "01_t.ipynb")
    assert repo.colab_url("01_t") in source.cells[0].source and "/blob/dev/student/01_t.ipynb" in repo.colab_url("01_t")
    assert source.cells[1].source == edition.cells[1].source == repo.install_cell()
    assert "git+https://github.com/someone/book@dev" in repo.install_cell()
    assert "NotImplementedError" in edition.cells[3].source and "return x" in source.cells[3].source


def test_student_editions_are_in_sync_with_the_chapters() -> None:
    assert student.main(["--root", str(ROOT), "--check"]) == 0, "run `make student` and commit the result"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_no_solution_code_survives_in_the_student_edition(path: Path) -> None:
    source, edition = _read(path), _read(ROOT / STUDENT_DIR / path.name)
    student_code = "\n".join(c.source for c in edition.cells if c.cell_type == "code")
    assert student.BEGIN not in student_code and student.END not in student_code
    for ex in student.exercises(source, str(path)):
        cell = source.cells[ex.solution_cell].source
        inside = cell.split(student.BEGIN, 1)[1].split(student.END, 1)[0]
        for line in filter(None, (raw.strip() for raw in inside.splitlines())):
            assert line not in edition.cells[ex.solution_cell].source, f"exercise {ex.number}: {line!r} survived"
        assert ex.stub() in edition.cells[ex.solution_cell].source
    assert all(not c.get("outputs") for c in edition.cells if c.cell_type == "code")


def test_every_chapter_1_and_2_has_three_exercises_and_each_checker_is_used_once() -> None:
    numbers = [ex.number for _, ex in EXERCISE_CASES]
    assert len(numbers) == len(set(numbers)), f"an exercise number is used twice: {numbers}"
    for chapter in ("1", "2"):
        assert sum(n.split(".")[0] == chapter for n in numbers) >= 3, f"chapter {chapter} has < 3 exercises"
    used = [ex.check_name for _, ex in EXERCISE_CASES]
    assert set(used) <= set(EXERCISES), f"a notebook checks an unknown exercise: {sorted(set(used) - set(EXERCISES))}"


@pytest.mark.parametrize("path, ex", EXERCISE_CASES, ids=[f"{ex.number}-{ex.check_name}" for _, ex in EXERCISE_CASES])
def test_checker_rejects_the_stub_and_accepts_the_reference(path: Path, ex: student.Exercise) -> None:
    source = _read(path).cells[ex.solution_cell].source
    stub = _function(student.strip_solution(source, ex.stub()), ex.function)
    feedback = check(ex.check_name, stub)
    assert not feedback.passed and feedback.startswith("not yet")
    assert f"raised NotImplementedError: Exercise {ex.number}: your code here" in feedback
    reference = check(ex.check_name, _function(source, ex.function))
    assert reference.passed, f"the reference solution of exercise {ex.number} fails its own check:\n{reference}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_badge_and_install_cell_come_from_the_config(path: Path) -> None:
    """The one repository URL of _config.yml feeds the badge and the install cell of both editions."""
    repo = Repository.from_config(ROOT)
    for nb in (_read(path), _read(ROOT / STUDENT_DIR / path.name)):
        assert any(repo.colab_badge(path.stem) in c.source for c in nb.cells if c.cell_type == "markdown")
        assert next(c for c in nb.cells if c.cell_type == "code").source == repo.install_cell()
