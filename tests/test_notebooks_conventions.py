"""The conventions every chapter notebook follows, checked statically (nothing is executed here).

Each notebook in notebooks/ is listed in _toc.yml and vice versa, and each one has
- a markdown cell with an "Open in Colab" badge linking to its student edition on GitHub,
- as its first code cell, the Colab install cell (a no-op outside Colab),
  both generated from the one repository URL of _config.yml (aen_mini.book.links; `make student` writes them),
- exactly one cell tagged ``config`` that sets ``SIZE = "ci"`` and a ``SIZES`` dict literal whose keys are
  ``"ci"`` and ``"full"``, each mapping to a dict literal with the same keys,
- the ``python3`` kernel, so the book build and nbval run it with the interpreter they run under.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from aen_mini.book.links import Repository

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REPO = Repository.from_config(ROOT)


def toc_files(entry: dict | list) -> list[str]:
    """Every ``file:`` in a sphinx-external-toc structure, in reading order."""
    found: list[str] = []
    if isinstance(entry, list):
        for item in entry:
            found += toc_files(item)
    elif isinstance(entry, dict):
        for key in ("root", "file"):
            if key in entry:
                found.append(entry[key])
        for key in ("parts", "chapters", "sections"):
            found += toc_files(entry.get(key, []))
    return found


def resolve(docname: str) -> Path | None:
    """The source file of a toc entry (entries carry no suffix)."""
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{docname}{suffix}"
        if path.is_file():
            return path
    return None


TOC = toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
TOC_NOTEBOOKS = [name for name in TOC if name.startswith("notebooks/")]
ON_DISK = sorted(p for p in NOTEBOOKS.glob("*.ipynb"))


def test_toc_parses_to_files() -> None:
    assert TOC[0] == "book/intro", "the landing page must be the toc's root"
    assert len(TOC) == len(set(TOC)), f"a file is listed twice in _toc.yml: {TOC}"


@pytest.mark.parametrize("docname", TOC)
def test_every_toc_entry_exists(docname: str) -> None:
    assert resolve(docname) is not None, f"_toc.yml lists {docname} but neither .ipynb nor .md exists"


def test_every_notebook_is_in_the_toc() -> None:
    listed = {f"notebooks/{p.stem}" for p in ON_DISK}
    assert listed <= set(TOC_NOTEBOOKS), f"notebooks missing from _toc.yml: {sorted(listed - set(TOC_NOTEBOOKS))}"


def test_chapters_are_in_numeric_order() -> None:
    stems = [Path(name).name for name in TOC_NOTEBOOKS]
    assert stems == sorted(stems), f"chapter notebooks must be listed in order of their number: {stems}"


def _config_dict(tree: ast.Module, name: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    return None


def _literal_keys(node: ast.expr, where: str) -> list[str]:
    assert isinstance(node, ast.Dict), f"{where} must be a dict literal"
    assert all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys), \
        f"{where} must have string-literal keys"
    return [k.value for k in node.keys]  # type: ignore[union-attr]


def check_notebook(nb: nbformat.NotebookNode, stem: str) -> None:
    """Raise AssertionError naming the first convention ``nb`` breaks."""
    badge = REPO.colab_badge(stem)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert any(badge in s for s in markdown), f"no markdown cell with the badge {badge} (run `make student`)"

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert code[0].source == REPO.install_cell(), \
        f"the first code cell must be the Colab install cell (run `make student`):\n{REPO.install_cell()}"

    config = [c for c in nb.cells if "config" in c.get("metadata", {}).get("tags", [])]
    assert len(config) == 1, f"expected exactly one cell tagged 'config', found {len(config)}"
    assert config[0].cell_type == "code", "the cell tagged 'config' must be a code cell"
    tree = ast.parse(config[0].source)
    size = _config_dict(tree, "SIZE")
    assert isinstance(size, ast.Constant) and size.value == "ci", 'the config cell must set SIZE = "ci"'
    sizes = _config_dict(tree, "SIZES")
    assert sizes is not None, "the config cell must define SIZES = {'ci': {...}, 'full': {...}}"
    assert sorted(_literal_keys(sizes, "SIZES")) == ["ci", "full"], "SIZES must have exactly the keys 'ci' and 'full'"
    ci, full = (_literal_keys(v, f"SIZES[{k.value!r}]") for k, v in zip(sizes.keys, sizes.values))  # type: ignore[union-attr]
    assert sorted(ci) == sorted(full), f"the ci and full sizes must set the same keys: {sorted(ci)} vs {sorted(full)}"

    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"kernelspec name must be 'python3', not {kernel!r}"

    # A captioned cell shows one figure: a last line that returns an artist (ax.legend(...)) adds a second output,
    # and the book build (-W) then fails on a duplicate figure target.
    for cell in code:
        if "figure" in cell.get("metadata", {}).get("mystnb", {}):
            last = ast.parse(cell.source).body[-1]
            shown = isinstance(last, ast.Expr) and not (isinstance(last.value, ast.Name) or _is_show(last.value))
            assert not shown or cell.source.rstrip().split("\n")[-1].split("#")[0].rstrip().endswith(";"), \
                f"a captioned figure cell ends in an expression with output ({ast.unparse(last)[:60]}): end it with ';'"


def _is_show(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "show"


@pytest.mark.parametrize("path", ON_DISK, ids=lambda p: p.stem)
def test_notebook_follows_conventions(path: Path) -> None:
    check_notebook(nbformat.read(path, as_version=4), path.stem)


def _good_notebook(stem: str) -> nbformat.NotebookNode:
    v4 = nbformat.v4
    return v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}, cells=[
        v4.new_markdown_cell(f"# T\n{REPO.colab_badge(stem)}"),
        v4.new_code_cell(REPO.install_cell()),
        v4.new_code_cell('SIZE = "ci"\nSIZES = {"ci": {"steps": 10}, "full": {"steps": 1000}}\nCFG = SIZES[SIZE]',
                         metadata={"tags": ["config"]}),
    ])


def test_checker_accepts_a_conforming_notebook() -> None:
    check_notebook(_good_notebook("09_x"), "09_x")


@pytest.mark.parametrize("breakage, message", [
    (lambda nb: nb.cells[0].update(source=nb.cells[0].source.replace("09_x", "08_y")), "Open In Colab"),
    (lambda nb: nb.cells[0].update(source=nb.cells[0].source.replace("/student/", "/notebooks/")), "Open In Colab"),
    (lambda nb: nb.cells[1].update(source=nb.cells[1].source.replace("@main", "")), "first code cell"),
    (lambda nb: nb.cells.pop(1), "first code cell"),
    (lambda nb: nb.cells[2].metadata.update(tags=[]), "exactly one cell tagged"),
    (lambda nb: nb.cells.append(nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["config"]})), "exactly one"),
    (lambda nb: nb.cells[2].update(source=nb.cells[2].source.replace('SIZE = "ci"', 'SIZE = "full"')), 'SIZE = "ci"'),
    (lambda nb: nb.cells[2].update(source=nb.cells[2].source.replace('"full"', '"big"')), "'ci' and 'full'"),
    (lambda nb: nb.cells[2].update(source=nb.cells[2].source.replace('{"steps": 1000}', '{"n": 1}')), "same keys"),
    (lambda nb: nb.metadata.update(kernelspec={"name": "python3.11"}), "kernelspec"),
    (lambda nb: nb.cells.append(nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.legend()", metadata={
        "mystnb": {"figure": {"caption": "c", "name": "fig-x"}}})), "captioned figure cell"),
])
def test_checker_rejects_each_broken_convention(breakage, message: str) -> None:
    nb = _good_notebook("09_x")
    breakage(nb)
    with pytest.raises(AssertionError, match=message):
        check_notebook(nb, "09_x")


# Where the repository URL appears outside the generated cells: install commands, clone commands, Colab links.
URL_USES = re.compile(r"(?:git\+https://github\.com/|git clone https://github\.com/|colab\.research\.google\.com/"
                      r"github/)([\w.-]+/[\w.-]+)")


def test_every_repository_link_uses_the_configured_url() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md")), *ON_DISK,
             *sorted((ROOT / "student").glob("*.ipynb"))]
    found = {(path.relative_to(ROOT).as_posix(), slug.removesuffix(".git"))
             for path in pages for slug in URL_USES.findall(path.read_text(encoding="utf-8"))}
    assert found, "no repository link found at all: the pattern is wrong"
    wrong = sorted(f"{where}: {slug}" for where, slug in found if slug != REPO.slug)
    assert not wrong, f"links to another repository than _config.yml's {REPO.url}: {wrong}"
