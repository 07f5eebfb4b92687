"""The teachers' page states only what the repository holds: files and make targets it names exist, the
exercises it names exist, and its table's minutes follow from the chapters (reading at 120 words per minute
rounded up to 5, exercises the sum of their headers' estimates)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest

from aen_mini.book import student

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "for_teachers.md"
TEXT = PAGE.read_text(encoding="utf-8")
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PATH_LIKE = re.compile(r"`([\w./-]+(?:/|\.py|\.md|\.ipynb|\.json|\.toml))`")


def _exercises() -> dict[str, student.Exercise]:
    return {ex.number: ex for path in CHAPTERS for ex in student.exercises(nbformat.read(path, 4), str(path))}


def test_every_file_the_page_names_exists() -> None:
    named = sorted(set(PATH_LIKE.findall(TEXT)))
    assert named, "the pattern finds no file reference: it is wrong"
    missing = [name for name in named if not (ROOT / name).exists()]
    assert not missing, f"book/for_teachers.md names files that do not exist: {missing}"


def test_every_make_target_the_page_names_exists() -> None:
    targets = set(re.findall(r"`make (\w[\w-]*)`", TEXT))
    makefile = (ROOT / "Makefile").read_text()
    missing = sorted(t for t in targets if not re.search(rf"^{re.escape(t)}:", makefile, re.M))
    assert targets and not missing, f"make targets named on the page but not in the Makefile: {missing}"


def test_every_exercise_the_page_names_exists() -> None:
    known = _exercises()
    named: set[str] = set()
    for first, last in re.findall(r"Exercises? (\d+\.\d+)(?:-(\d+\.\d+))?", TEXT):
        chapter, start = first.split(".")
        end = last.split(".")[1] if last else start
        named |= {f"{chapter}.{m}" for m in range(int(start), int(end) + 1)}
    named |= {n for pair in re.findall(r"Exercises (\d+\.\d+) and (\d+\.\d+)", TEXT) for n in pair}
    assert named, "the page names no exercise"
    assert named <= set(known), f"the page names exercises that no chapter has: {sorted(named - set(known))}"


def _table() -> dict[int, list[str]]:
    rows = re.findall(r"^\| (\d) \| (.+) \|$", TEXT, re.M)
    return {int(n): [c.strip() for c in rest.split("|")] for n, rest in rows if len(rest.split("|")) == 4}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_minutes_follow_from_the_chapter(path: Path) -> None:
    number = int(path.stem.split("_")[0])
    table = _table()
    assert number in table, f"chapter {number} has no row in the teachers' table"
    _, _, reading, exercises = table[number]
    nb = nbformat.read(path, 4)
    words = sum(len(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    expected_reading = 5 * math.ceil(words / 120 / 5)
    # Within 5 minutes: a paragraph more or less should not force an edit here, a rewritten chapter should.
    assert abs(int(reading) - expected_reading) <= 5, \
        f"chapter {number}: {words} words read in about {expected_reading} min, the page says {reading}"
    minutes = sum(ex.minutes for ex in student.exercises(nb, str(path)))
    assert exercises == (str(minutes) if minutes else "—"), \
        f"chapter {number}: its exercises add up to {minutes} min, the page says {exercises!r}"
