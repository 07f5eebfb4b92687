"""The book's rendering pipeline, end to end, in headless Chromium.

A one-chapter book built from the repository's own _config.yml (a notebook that draws a matplotlib
figure) must build warning-free, and Chromium must render it with the figure present and no error output.
A notebook whose cell raises must fail the build. If `make book` has produced _build/html, every built
page is checked the same way, and every chapter page must show at least one figure and a Colab link.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import matplotlib.image
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
# One thread: CI-size models are tiny, and on shared cores several threads mostly wait for each other.
BUILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
STDERR_ERROR = re.compile(r"Traceback \(most recent call last\)|\b\w+Error\b")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed and `make chromium` could not install it "
                             "(it runs `apt-get install -y chromium`, which needs root and Debian's archive)")


class PageScan(HTMLParser):
    """Images and error output in a page, from the DOM Chromium serialised after rendering it."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, bool]] = []  # (src, inside a cell's output)
        self.errors: list[str] = []
        self._divs: list[set[str]] = []  # classes of each open <div>

    def _inside(self, cls: str) -> bool:
        return any(cls in classes for classes in self._divs)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "div":
            classes = set((attributes.get("class") or "").split())
            if "traceback" in classes or "output_error" in classes:
                self.errors.append("a cell's output is an error traceback")
            self._divs.append(classes)
        elif tag == "img":
            self.images.append((attributes.get("src") or "", self._inside("cell_output")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._divs:
            self._divs.pop()

    def handle_data(self, data: str) -> None:
        # A chapter may print an exception's name on purpose (to show validation); on stderr it is a failure.
        pattern = STDERR_ERROR if self._inside("stderr") else TRACEBACK if self._inside("cell_output") else None
        if pattern is not None and pattern.search(data):
            self.errors.append(f"error text in a cell's output: {data.strip()[:200]!r}")


def page_problems(dom: str, page: Path, *, min_figures: int = 0) -> list[str]:
    """Everything wrong with a rendered page: error output, images whose file is missing, too few figures."""
    scan = PageScan()
    scan.feed(dom)
    problems = list(scan.errors)
    for src, _ in scan.images:
        parts = urlsplit(src)
        if parts.scheme in ("http", "https", "data"):
            continue
        target = Path(unquote(parts.path)) if parts.scheme == "file" else page.parent / unquote(parts.path)
        if not target.is_file():
            problems.append(f"image {src!r} points to a missing file")
    figures = [src for src, in_output in scan.images if in_output]
    if len(figures) < min_figures:
        problems.append(f"expected at least {min_figures} figure(s) in cell outputs, found {len(figures)}")
    return problems


def chromium(page: Path, profile: Path, *extra: str) -> str:
    """Run headless Chromium on a local page, offline: every host name fails to resolve."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
               "--window-size=1280,2400", *extra, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium failed on {page}:\n{done.stderr[-3000:]}"
    return done.stdout


def dump_dom(page: Path, profile: Path) -> str:
    dom = chromium(page, profile, "--dump-dom")
    assert "</html>" in dom, f"chromium returned no DOM for {page}"
    return dom


def build_book(book: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(JUPYTER_BOOK), "build", str(book), "-W", "--keep-going", "-n"],
                          capture_output=True, text=True, timeout=600, env=BUILD_ENV)


def make_book(book: Path, cells: list[str]) -> None:
    """A book with the repository's _config.yml, a landing page and one chapter notebook made of ``cells``."""
    (book / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", book / "book" / "references.bib")
    (book / "_toc.yml").write_text("format: jb-book\nroot: index\nchapters:\n  - file: chapter\n")
    (book / "index.md").write_text("# A tiny book\n\nIt has one chapter, $e^{i\\pi} = -1$.\n")
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_markdown_cell("# Chapter"), *map(v4.new_code_cell, cells)],
                         metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, book / "chapter.ipynb")


FIGURE_CELLS = [
    "import matplotlib.pyplot as plt",
    "import math\nxs = [i / 50 for i in range(315)]\nplt.plot(xs, [math.sin(x) for x in xs])\nplt.title('sine')\nplt.show()",
    "print('sum of the first ten squares:', sum(i * i for i in range(10)))",
]


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    book = tmp_path_factory.mktemp("tiny_book")
    make_book(book, FIGURE_CELLS)
    done = build_book(book)
    assert done.returncode == 0, f"the tiny book failed to build:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return book / "_build" / "html"


def test_page_scan_finds_each_problem(tmp_path: Path) -> None:
    (tmp_path / "fig.png").write_bytes(b"\x89PNG")
    good = ('<html><body><div class="cell_output"><img src="fig.png"></div>'
            '<img src="https://example.org/badge.svg"><div class="output stream">ok</div></body></html>')
    assert page_problems(good, tmp_path / "page.html", min_figures=1) == []
    bad = ('<html><body><div class="cell_output"><img src="gone.png">'
           '<div class="output traceback">...</div>'
           '<div class="output stderr">ValueError: x must be positive</div></div></body></html>')
    problems = page_problems(bad, tmp_path / "page.html", min_figures=2)
    assert any("traceback" in p for p in problems)
    assert any("ValueError" in p for p in problems)
    assert any("gone.png" in p for p in problems)
    assert any("at least 2 figure" in p for p in problems)
    assert len(problems) == 4


@needs_chromium
def test_tiny_book_renders_its_figure(tiny_book: Path, tmp_path: Path) -> None:
    page = tiny_book / "chapter.html"
    dom = dump_dom(page, tmp_path / "profile")
    assert page_problems(dom, page, min_figures=1) == []
    assert "sum of the first ten squares: 285" in dom

    shot = tmp_path / "chapter.png"
    chromium(page, tmp_path / "profile", f"--screenshot={shot}")
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 0.05, "the screenshot is (nearly) blank"


def test_failing_cell_fails_the_build(tmp_path: Path) -> None:
    make_book(tmp_path, ["raise ValueError('this cell fails on purpose')"])
    done = build_book(tmp_path)
    assert done.returncode != 0, "a notebook whose cell raises was built without error"
    assert "this cell fails on purpose" in done.stdout + done.stderr


def built_pages() -> list[Path]:
    if not (BUILT / "index.html").is_file():
        return []
    return sorted(p for sub in ("book", "notebooks") for p in (BUILT / sub).glob("*.html"))


@needs_chromium
@pytest.mark.parametrize("page", built_pages(), ids=lambda p: str(p.relative_to(BUILT)))
def test_built_page_renders(page: Path, tmp_path: Path) -> None:
    """Pages from the last `make book`; a chapter whose notebook changed since is skipped as stale."""
    is_chapter = page.parent.name == "notebooks"
    if is_chapter:
        source = ROOT / "notebooks" / f"{page.stem}.ipynb"
        if not source.is_file() or source.stat().st_mtime > page.stat().st_mtime:
            pytest.skip(f"{page.name} is older than its notebook (or the notebook is gone): run `make book`")
    dom = dump_dom(page, tmp_path / "profile")
    assert page_problems(dom, page, min_figures=1 if is_chapter else 0) == []
    if is_chapter:
        colab = f"https://colab.research.google.com/github/aen-mini/aen-mini/blob/main/notebooks/{page.stem}.ipynb"
        assert colab in dom, f"{page.name} has no link to {colab}"
