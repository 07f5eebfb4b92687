"""Numbers quoted in prose (README, book pages, notebook markdown) are read from committed results files.

Each `tests/claims/*.toml` file lists claims::

    [[claim]]
    where = "README.md"                          # the file that quotes the number (.md or .ipynb)
    quote = "AEN keeps {} % dead"                # the exact text, with {} where each number stands
    source = "benchmarks/replication.json"       # the committed results file the number comes from
    values = ["r['summary']['aen']['dead_pct']"] # one Python expression per {}, over the loaded JSON `r`
    format = "{:.1f}"                            # how each value is written in prose (optional; default {:.3g})

The test formats the values from the results file into `quote` and asserts that the text appears in `where`,
so a number in prose cannot silently go stale when the results change.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLAIM_FILES = sorted((ROOT / "tests" / "claims").glob("*.toml"))


def _claims() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in CLAIM_FILES:
        for i, claim in enumerate(tomllib.loads(path.read_text())["claim"]):
            out.append((f"{path.stem}[{i}]", claim))
    return out


def _text(path: Path) -> str:
    """The prose of a page: a notebook's markdown cells and figure captions, or a markdown file, whitespace-normalised."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        cells = json.loads(raw)["cells"]
        captions = [(c.get("metadata", {}).get("mystnb", {}).get("figure") or {}).get("caption", "") for c in cells]
        raw = "\n".join(["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"] + captions)
    return " ".join(raw.split())


def render(claim: dict[str, Any]) -> str:
    """The quote with each {} replaced by its value from the results file, formatted as in prose."""
    r = json.loads((ROOT / claim["source"]).read_text())
    fmt = claim.get("format", "{:.3g}")
    values = [fmt.format(eval(expr, {"r": r})) for expr in claim["values"]]  # noqa: S307 (our own files)
    assert claim["quote"].count("{}") == len(values), "one expression per {} in the quote"
    return claim["quote"].format(*values)


def test_claim_files_exist() -> None:
    assert CLAIM_FILES, "tests/claims/ holds no claim files"


@pytest.mark.parametrize(("name", "claim"), _claims(), ids=[n for n, _ in _claims()])
def test_prose_quotes_results(name: str, claim: dict[str, Any]) -> None:
    expected = " ".join(render(claim).split())
    assert expected in _text(ROOT / claim["where"]), f"{claim['where']} should say {expected!r} ({claim['source']})"


def test_render_reads_the_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"a": {"dead": 12.345}}))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    claim = {"source": "r.json", "quote": "{} % dead", "values": ["r['a']['dead']"], "format": "{:.1f}"}
    assert render(claim) == "12.3 % dead"
