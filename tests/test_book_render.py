"""The book's rendering pipeline, end to end, in headless Chromium at 1280 px, offline.

Three books are rendered:
- a tiny one-chapter book with the repository's own _config.yml (a notebook that draws a captioned figure and
  an HTML table, and a formula): it must build warning-free and render;
- a subset of the real book, built here (`SAMPLE_TOC`: the landing page, chapters 1 and 2 executed, the
  teachers' page, glossary and bibliography), so `make test` checks real pages on a fresh clone;
- every page of _build/html when `make book` has built it (chapters older than their notebook are stale and
  are skipped, saying so).

On each page: no cell error or traceback, no image whose file is missing, every figure in a cell's output
numbered and captioned, no figure or output wider than the text column, no raw markdown table (`|---|`),
every formula typeset by the MathJax copy that the built site serves itself (no raw `\\(` left, nothing
loaded from the network: every host name fails to resolve). Without Chromium these tests fail, unless
AEN_MINI_NO_BROWSER=1 asks to skip them (`make chromium` installs it with apt-get when run as root).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import matplotlib.image
import nbformat
import pytest

from aen_mini.book.links import Repository

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "_build" / "html"
MATHJAX = ROOT / "_mathjax" / "mathjax" / "tex-chtml.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
# One thread: CI-size models are tiny, and on shared cores several threads mostly wait for each other.
BUILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
STDERR_ERROR = re.compile(r"Traceback \(most recent call last\)|\b\w+Error\b")
RAW_TABLE = re.compile(r"\|\s*:?-{3,}:?\s*\|")
SAMPLE_TOC = """format: jb-book
root: book/intro
parts:
  - caption: Chapters
    numbered: true
    chapters:
      - file: notebooks/01_sae_in_one_sitting
      - file: notebooks/02_geometry_of_l1
      - file: book/for_teachers
  - caption: Reference
    chapters:
      - file: book/glossary
      - file: book/bibliography
"""


@pytest.fixture(scope="session")
def browser() -> str:
    """Chromium's path; a missing Chromium fails the test unless AEN_MINI_NO_BROWSER=1 opts out."""
    if CHROMIUM is None:
        message = ("chromium is not installed: run `make chromium` as root (apt-get install -y chromium), or set "
                   "AEN_MINI_NO_BROWSER=1 to skip the browser tests")
        if os.environ.get("AEN_MINI_NO_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return CHROMIUM


def _require_mathjax() -> None:
    if not MATHJAX.is_file():
        pytest.fail(f"{MATHJAX.relative_to(ROOT)} is missing: run `make mathjax` (the book serves MathJax itself)")


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
    """Everything wrong in a rendered page's DOM: error output, images whose file is missing, too few figures."""
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


# Runs in the page once MathJax has typeset it (or at load when the page has no MathJax), and leaves its
# measurements in an attribute of <body> for --dump-dom to carry out.
MEASURE_JS = r"""
<script>
(function () {
  function measure() {
    const column = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
    const right = column.getBoundingClientRect().right;
    const out = {figures: [], overflow: [], math: 0, untypeset: 0, mathjax_src: [], text: ""};
    document.querySelectorAll(".cell_output img").forEach(function (img) {
      const figure = img.closest("figure");
      const caption = figure ? figure.querySelector("figcaption") : null;
      out.figures.push({src: img.getAttribute("src"), caption: caption ? caption.innerText.trim() : null,
                        right: img.getBoundingClientRect().right, width: img.getBoundingClientRect().width});
    });
    document.querySelectorAll(".cell_output, .cell_output > div, .cell_output table").forEach(function (el) {
      const box = el.getBoundingClientRect();
      if (el.scrollWidth > el.clientWidth + 1 || box.right > right + 1) {
        out.overflow.push((el.className || el.tagName) + ": " + el.scrollWidth + " px of content in " +
                          el.clientWidth + " px, right edge " + Math.round(box.right) + " > " + Math.round(right));
      }
    });
    document.querySelectorAll(".math").forEach(function (el) {
      out.math += 1;
      if (!el.querySelector("mjx-container")) { out.untypeset += 1; }
    });
    document.querySelectorAll("script[src*='mathjax' i], script[src*='tex-' i]").forEach(function (s) {
      out.mathjax_src.push(s.getAttribute("src"));
    });
    out.remote = [];
    document.querySelectorAll("script[src], link[rel='stylesheet'][href]").forEach(function (el) {
      const url = el.getAttribute("src") || el.getAttribute("href");
      if (/^(https?:)?\/\//.test(url)) { out.remote.push(url); }
    });
    const copy = document.body.cloneNode(true);
    copy.querySelectorAll("pre, code, script, style, mjx-container, .highlight").forEach(function (el) { el.remove(); });
    out.text = copy.textContent;
    document.body.setAttribute("data-aen-measure", JSON.stringify(out));
  }
  window.addEventListener("load", function () {
    const ready = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (ready ? MathJax.startup.promise : Promise.resolve()).then(function () { setTimeout(measure, 200); });
  });
})();
</script>
"""


def layout_problems(m: dict, *, needs_math: bool = False) -> list[str]:
    """What the in-page measurements say is wrong: uncaptioned or overflowing figures, raw tables and math."""
    problems = [f"a cell's output is wider than the text column: {o}" for o in m["overflow"]]
    for figure in m["figures"]:
        if not figure["caption"] or not re.match(r"Fig\. ?[\d.]+", figure["caption"]):
            problems.append(f"figure {figure['src']} has no numbered caption (mystnb figure metadata)")
    text = " ".join(m["text"].split())
    raw = RAW_TABLE.search(text)
    if raw:
        problems.append(f"raw markdown table text in the page: {text[max(0, raw.start() - 60):raw.end() + 20]!r}")
    for delimiter in ("\\(", "\\[", "$$"):
        if delimiter in text:
            at = text.index(delimiter)
            problems.append(f"raw LaTeX {delimiter!r} in the page: {text[max(0, at - 40):at + 60]!r}")
    if m["untypeset"]:
        problems.append(f"{m['untypeset']} of {m['math']} formulas were not typeset by MathJax")
    remote = [src for src in m["mathjax_src"] if urlsplit(src).scheme in ("http", "https")]
    if remote:
        problems.append(f"MathJax is loaded from the network: {remote}")
    if m.get("remote"):
        problems.append(f"the page loads scripts or styles from the network: {m['remote']}")
    if needs_math and not m["math"]:
        problems.append("the page has no formula, though it should")
    return problems


def chromium(browser: str, page: Path, profile: Path, *extra: str) -> str:
    """Run headless Chromium on a local page, offline: every host name fails to resolve."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
               "--allow-file-access-from-files", "--window-size=1280,2400", *extra, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium failed on {page}:\n{done.stderr[-3000:]}"
    return done.stdout


def render(browser: str, page: Path, profile: Path) -> tuple[str, dict]:
    """The DOM Chromium builds from `page`, and the in-page measurements (MEASURE_JS) taken once it is typeset."""
    probe = page.with_name(f".{page.stem}.measure.html")  # beside the page, so relative links resolve
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE_JS + "</body>"), encoding="utf-8")
    try:
        dom = chromium(browser, probe, profile, "--virtual-time-budget=30000", "--dump-dom")
    finally:
        probe.unlink()
    assert "</html>" in dom, f"chromium returned no DOM for {page}"
    found = re.search(r'data-aen-measure="([^"]*)"', dom)
    assert found, f"the measuring script did not finish on {page} (MathJax never became ready?)"
    return dom, json.loads(unescape(found.group(1)))


def build_book(book: Path, *extra: str, warnings_are_errors: bool = True) -> subprocess.CompletedProcess[str]:
    strict = ["-W", "--keep-going", "-n"] if warnings_are_errors else ["--keep-going"]
    return subprocess.run([str(JUPYTER_BOOK), "build", str(book), *strict, *extra],
                          capture_output=True, text=True, timeout=900, env=BUILD_ENV)


def make_book(book: Path, cells: list[nbformat.NotebookNode]) -> None:
    """A book with the repository's _config.yml (and its MathJax), a landing page and one chapter of `cells`."""
    (book / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", book / "book" / "references.bib")
    (book / "_mathjax").symlink_to(ROOT / "_mathjax", target_is_directory=True)
    (book / "_toc.yml").write_text("format: jb-book\nroot: index\nchapters:\n  - file: chapter\n")
    (book / "index.md").write_text("# A tiny book\n\nIt has one chapter, $e^{i\\pi} = -1$, and\n\n"
                                   "$$\n\\sum_{k=1}^n k = \\frac{n(n+1)}{2}.\n$$\n")
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[v4.new_markdown_cell("# Chapter\n\nA formula: $\\lambda_1 \\ge 0$."), *cells],
                         metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, book / "chapter.ipynb")


def _cell(source: str, caption: str | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if caption:
        cell.metadata["mystnb"] = {"figure": {"caption": caption, "name": "fig-tiny-sine"}}
    return cell


FIGURE_CELLS = [
    _cell("import matplotlib.pyplot as plt"),
    _cell("import math\nxs = [i / 50 for i in range(315)]\nplt.plot(xs, [math.sin(x) for x in xs])\nplt.title('sine')\n"
          "plt.show()", caption="One period of the sine, drawn by a test."),
    _cell("print('sum of the first ten squares:', sum(i * i for i in range(10)))"),
    _cell("from aen_mini.book.tables import html_table\nhtml_table([['a', 1.23456]], ['name', 'value'], caption='a table')"),
]


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_mathjax()
    book = tmp_path_factory.mktemp("tiny_book")
    make_book(book, FIGURE_CELLS)
    done = build_book(book)
    assert done.returncode == 0, f"the tiny book failed to build:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return book / "_build" / "html"


@pytest.fixture(scope="session")
def sample_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chapters 1 and 2 and the light pages of the real book, built (and executed) into a temporary folder."""
    _require_mathjax()
    out = tmp_path_factory.mktemp("sample_book")
    (out / "_toc.yml").write_text(SAMPLE_TOC)
    # Not -W: the landing page refers to chapters that this subset leaves out. Failing cells still fail the build.
    done = build_book(ROOT, "--toc", str(out / "_toc.yml"), "--path-output", str(out), warnings_are_errors=False)
    assert done.returncode == 0, f"the sample book failed to build:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    # Warnings are allowed only where the landing page or the glossary refers to a chapter outside the sample.
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if ": WARNING:" in line
                and not re.search(r"book/(intro|glossary)\.md:\d+: WARNING: (undefined label|unknown document)", line)]
    assert not warnings, "the sample pages build with warnings:\n" + "\n".join(warnings[:20])
    return out / "_build" / "html"


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


def test_layout_problems_finds_each_problem() -> None:
    good = {"figures": [{"src": "a.png", "caption": "Fig. 2.1 A caption.", "right": 900, "width": 700}],
            "overflow": [], "math": 3, "untypeset": 0, "mathjax_src": ["_static/mathjax/tex-chtml.js"],
            "text": "A table | a | b | in prose is fine, and so is x − y."}
    assert layout_problems(good, needs_math=True) == []
    bad = {"figures": [{"src": "a.png", "caption": None, "right": 900, "width": 700},
                       {"src": "b.png", "caption": "sine", "right": 900, "width": 700}],
           "overflow": ["output: 1400 px of content in 752 px"], "math": 2, "untypeset": 1,
           "mathjax_src": ["https://cdn.example/tex-chtml.js"], "remote": ["https://cdn.example/require.js"],
           "text": "| method | L0 | |---|---| | AEN | 3 | and \\( x \\) raw"}
    problems = layout_problems(bad)
    for words in ("a.png has no numbered caption", "b.png has no numbered caption", "wider than the text column",
                  "raw markdown table", "raw LaTeX '\\\\('", "1 of 2 formulas", "loaded from the network",
                  "scripts or styles from the network"):
        assert any(words in p for p in problems), f"{words!r} not in {problems}"
    assert "no formula" in layout_problems({**good, "math": 0}, needs_math=True)[0]


def test_tiny_book_renders_figure_table_and_formulas(browser: str, tiny_book: Path, tmp_path: Path) -> None:
    page = tiny_book / "chapter.html"
    dom, measured = render(browser, page, tmp_path / "profile")
    assert page_problems(dom, page, min_figures=1) == []
    assert layout_problems(measured, needs_math=True) == []
    assert "sum of the first ten squares: 285" in dom and "<caption>a table</caption>" in dom
    assert measured["figures"][0]["caption"].startswith("Fig. 1")
    assert (tiny_book / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is not served by the site"
    _, index = render(browser, tiny_book / "index.html", tmp_path / "profile")
    assert index["math"] == 2 and index["untypeset"] == 0

    shot = tmp_path / "chapter.png"
    chromium(browser, page, tmp_path / "profile", f"--screenshot={shot}")
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 0.05, "the screenshot is (nearly) blank"


def test_an_uncaptioned_figure_is_caught(browser: str, tmp_path: Path) -> None:
    _require_mathjax()
    make_book(tmp_path, [_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")])
    assert build_book(tmp_path).returncode == 0
    _, measured = render(browser, tmp_path / "_build" / "html" / "chapter.html", tmp_path / "profile")
    assert any("no numbered caption" in p for p in layout_problems(measured))


def test_failing_cell_fails_the_build(tmp_path: Path) -> None:
    _require_mathjax()
    make_book(tmp_path, [_cell("raise ValueError('this cell fails on purpose')")])
    done = build_book(tmp_path)
    assert done.returncode != 0, "a notebook whose cell raises was built without error"
    assert "this cell fails on purpose" in done.stdout + done.stderr


def _check_page(browser: str, page: Path, profile: Path) -> None:
    is_chapter = page.parent.name == "notebooks"
    dom, measured = render(browser, page, profile)
    problems = page_problems(dom, page, min_figures=1 if is_chapter else 0) + layout_problems(measured)
    assert problems == [], f"{page.name}:\n" + "\n".join(problems)
    if is_chapter:
        colab = Repository.from_config(ROOT).colab_url(page.stem)
        assert colab in dom, f"{page.name} has no link to its student edition {colab}"
        # Every cell captioned as a figure must have drawn one (a cell that shows nothing leaves an empty caption).
        source = nbformat.read(ROOT / "notebooks" / f"{page.stem}.ipynb", as_version=4)
        names = [c.metadata["mystnb"]["figure"]["name"] for c in source.cells if "figure" in c.metadata.get("mystnb", {})]
        drawn = set(re.findall(r'<figure[^>]*\bid="([^"]+)"[^>]*>\s*<img', dom))
        missing = [name for name in names if name not in drawn]
        assert not missing, f"{page.name}: captioned cells that drew no figure: {missing}"


SAMPLE_PAGES = ["book/intro", "notebooks/01_sae_in_one_sitting", "notebooks/02_geometry_of_l1", "book/for_teachers",
                "book/glossary", "book/bibliography"]


@pytest.mark.parametrize("name", SAMPLE_PAGES)
def test_sample_page_renders(browser: str, sample_book: Path, name: str, tmp_path: Path) -> None:
    page = sample_book / f"{name}.html"
    assert page.is_file(), f"{name} was not built"
    _check_page(browser, page, tmp_path / "profile")


def built_pages() -> list[Path | None]:
    """Every page of the last `make book`, or [None] when there is none (a test that says so)."""
    if not (BUILT / "index.html").is_file():
        return [None]
    return sorted(p for sub in ("book", "notebooks") for p in (BUILT / sub).glob("*.html"))


@pytest.mark.parametrize("page", built_pages(), ids=lambda p: str(p.relative_to(BUILT)) if p else "no-full-build")
def test_built_page_renders(browser: str, page: Path | None, tmp_path: Path) -> None:
    """Pages from the last `make book`; a chapter whose notebook changed since is skipped as stale."""
    if page is None:
        pytest.skip("no _build/html: `make book` builds the whole book, whose pages are then checked here too "
                    "(the sample pages above were built and checked)")
    if page.parent.name == "notebooks":
        source = ROOT / "notebooks" / f"{page.stem}.ipynb"
        if not source.is_file() or source.stat().st_mtime > page.stat().st_mtime:
            pytest.skip(f"{page.name} is older than its notebook (or the notebook is gone): run `make book`")
    _check_page(browser, page, tmp_path / "profile")
