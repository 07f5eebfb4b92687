"""The package's layers, checked statically (an AST walk) plus one import in a bare subprocess.

Imports run one way, down this list (a layer may import its own package and any layer below it, never a sibling):

    validate -> sae -> io -> data -> lm -> train | eval -> run -> experiments -> book

``aen_mini/__main__.py`` (the entry point) sits above them all. The library (every layer below experiments) never
imports experiments or the book, not even inside a function. matplotlib, ipywidgets, IPython and scipy are imported
at module level only in book/ and eval/recovery.py, so the core installs and imports with torch, numpy, safetensors
and tqdm alone: a test proves it with those packages made unimportable. No Python file in aen_mini/ or benchmarks/
exceeds MAX_LINES, no benchmark imports from tests/, and every name a chapter imports from the package exists.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aen_mini"
RANK = {"validate": 0, "sae": 1, "io": 2, "data": 3, "lm": 4, "train": 5, "eval": 5, "run": 6, "experiments": 7,
        "book": 8, "__main__": 9}
LIBRARY = [name for name, rank in RANK.items() if rank < RANK["experiments"]]
BOOK_ONLY = ("matplotlib", "ipywidgets", "IPython", "scipy")
BOOK_ONLY_ALLOWED = ("book", "eval/recovery.py")
MAX_LINES = 400
# Files still over MAX_LINES, each with the helper that splits it; an entry that no longer applies fails the test,
# so the list only shrinks.
OVER_LIMIT_FOR_NOW = {
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def layer(path: Path) -> str:
    """The layer a file of aen_mini/ belongs to: its subpackage, or its module name at the top."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imports(path: Path, module_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a file; relative imports are returned as '.'-prefixed names.

    module_level_only: only the imports that run on import (under a module-level if/try too, not in a function).
    """
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            if base == "aen_mini":  # from aen_mini import X: X may be a subpackage
                found.extend((node.lineno, f"aen_mini.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, base))
        for child in ast.iter_child_nodes(node):
            if not (module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
                visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def target_layer(name: str) -> str | None:
    """The layer an aen_mini import lands in (None for the package root, e.g. ``__version__``)."""
    parts = name.split(".")
    if parts[0] != "aen_mini" or len(parts) == 1 or parts[1] not in RANK:
        return None
    return parts[1]


def test_every_module_is_in_a_layer() -> None:
    unknown = sorted(str(p.relative_to(ROOT)) for p in MODULES if layer(p) not in RANK)
    assert not unknown, f"modules outside the layers (add them to a layer, or a layer to RANK): {unknown}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path: Path) -> None:
    own = layer(path)
    wrong = []
    for line, name in imports(path):
        if name.startswith("."):
            wrong.append(f"line {line}: relative import {name!r}; write aen_mini.<layer>.<module>")
            continue
        target = target_layer(name)
        if target is None or target == own:
            continue
        if RANK[target] >= RANK[own]:
            wrong.append(f"line {line}: {own} imports {name} ({target} is not below {own})")
    assert not wrong, f"{path.relative_to(ROOT)}: " + "; ".join(wrong)


def test_the_library_never_imports_experiments_or_the_book() -> None:
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in MODULES if layer(p) in LIBRARY
             for line, name in imports(p) if target_layer(name) in ("experiments", "book")]
    assert not wrong, wrong


def test_the_package_root_names_only_core_objects() -> None:
    import aen_mini

    for name, module in aen_mini._PUBLIC.items():
        assert target_layer(module) in LIBRARY, f"aen_mini.{name} comes from {module}, above the library"


def test_book_only_packages_are_imported_at_module_level_only_by_the_book_and_recovery() -> None:
    wrong = []
    for path in MODULES:
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(BOOK_ONLY_ALLOWED):
            continue
        wrong += [f"{rel}:{line} imports {name}" for line, name in imports(path, module_level_only=True)
                  if name.split(".")[0] in BOOK_ONLY]
    assert not wrong, f"import these inside the function that needs them (core must import without them): {wrong}"


def test_benchmarks_do_not_import_the_tests() -> None:
    """Benchmarks are scripts over the package: what they share with the tests lives in aen_mini (e.g. run/crash_worker)."""
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in sorted((ROOT / "benchmarks").glob("*.py"))
             for line, name in imports(p) if name.split(".")[0] in test_modules | {"tests"}]
    wrong += [f"{p.relative_to(ROOT)} puts tests/ on sys.path" for p in sorted((ROOT / "benchmarks").glob("*.py"))
              for line in p.read_text().splitlines() if "sys.path" in line and '"tests"' in line]
    assert not wrong, wrong


def test_no_python_file_is_longer_than_the_limit() -> None:
    files = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])
    lengths = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in files}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in OVER_LIMIT_FOR_NOW}
    assert not too_long, f"split these by job (at most {MAX_LINES} lines): {too_long}"
    stale = [name for name in OVER_LIMIT_FOR_NOW if lengths.get(name, 0) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove them from OVER_LIMIT_FOR_NOW: {stale}"


# Run in a fresh interpreter: a meta-path finder refuses the book-only packages, as on an install without extras.
CORE_WITHOUT_BOOK = textwrap.dedent("""
    import importlib, pkgutil, sys

    BLOCKED = {blocked!r}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not installed (blocked by tests/test_layers.py)")
            return None

    sys.meta_path.insert(0, Refuse())
    import aen_mini
    core = ["aen_mini.validate"]
    for package in {core!r}:
        module = importlib.import_module(f"aen_mini.{{package}}")
        core += [package_name for _, package_name, _ in pkgutil.walk_packages(module.__path__, f"aen_mini.{{package}}.")]
    for name in core:
        if name != "aen_mini.eval.recovery":
            importlib.import_module(name)
    try:
        import aen_mini.eval.recovery
    except ImportError as err:
        assert "scipy" in str(err), err
    else:
        raise AssertionError("the blocker let scipy through")

    import torch
    from aen_mini import SAE, TensorSource, TrainConfig, evaluate, load_sae, make_sae
    from aen_mini.train.loop import train

    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    sae = make_sae("aen", 8, 16, l1_coeff=0.05, l2_coeff=0.01)
    cfg = TrainConfig(steps=16, batch_size=128, lr=3e-3, checkpoint_every=16, checkpoint_path=sys.argv[1], progress=False)
    train(sae, TensorSource(x), cfg)
    report = evaluate(sae, x)
    assert 0.0 < report["ev"] <= 1.0, report
    assert isinstance(load_sae(sys.argv[1]), SAE)
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "a book-only package was imported"
    print("core ok", len(core), "modules; ev", round(report["ev"], 3))
""")


def test_the_core_imports_and_trains_without_the_book_packages(tmp_path: Path) -> None:
    code = CORE_WITHOUT_BOOK.format(blocked=set(BOOK_ONLY), core=["sae", "io", "data", "lm", "train", "eval", "run"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt.safetensors")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core ok" in done.stdout


def _notebook_imports() -> list[tuple[str, str, list[str]]]:
    """(notebook, module, names) of every `from aen_mini... import` in the chapters' code cells."""
    import json

    found = []
    sources = [(p, "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code"))
               for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    for path, source in sources:
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("!", "%")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aen_mini"):
                found.append((path.name, node.module, [a.name for a in node.names]))
    return found


def test_the_chapters_import_names_that_exist() -> None:
    """A moved or renamed name fails here in seconds, not in the notebooks' run under nbval."""
    import importlib
    import importlib.util

    def exists(module: str, name: str) -> bool:
        imported = importlib.import_module(module)
        if hasattr(imported, name):
            return True
        return hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None  # a submodule

    missing = [f"{nb}: from {module} import {name}" for nb, module, names in _notebook_imports() for name in names
               if not exists(module, name)]
    assert not missing, missing
