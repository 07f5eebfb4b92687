"""The shared pieces of experiments: the recipes every study reads, provenance, and the one table writer."""
from __future__ import annotations

import json

import pytest

from aen_mini.experiments import recipes
from aen_mini.experiments.report import markdown_table, provenance, write_report


def test_markdown_table_aligns_escapes_and_refuses_ragged_rows() -> None:
    text = markdown_table(["method", "dead %"], [["AEN", 0.5], ["a|b", 12]], align="lr")
    assert text.splitlines() == ["| method | dead % |", "| --- | ---: |", "| AEN | 0.5 |", "| a/b | 12 |"]
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        markdown_table(["a", "b"], [], align="c")


def test_provenance_says_command_versions_and_device(tmp_path) -> None:
    meta = provenance(["benchmarks/x.py", "--size", "ci"], "cpu", packages=("numpy", "not-a-package-xyz"))
    assert meta["command"] == "benchmarks/x.py --size ci" and meta["device"] == "cpu" and meta["gpu"] is None
    assert meta["torch"] and meta["numpy"] and meta["not-a-package-xyz"] is None and meta["aen_mini_version"]
    json_path, md_path = write_report(tmp_path / "out", "x", meta, "# x")
    assert json.loads(json_path.read_text()) == meta and md_path.read_text() == "# x\n"


def test_recipes_set_each_method_as_the_studies_did() -> None:
    aen = recipes.build_sae("aen", 8, 16, 0.2, steps=400, k=3, batch_size=32, seed=0)
    assert (aen.l1_coeff, aen.l2_coeff) == (0.2, pytest.approx(0.02))
    assert recipes.hyperparameters("aen", 0.2, 400, 3)["warmup_start"] == 100
    assert recipes.hyperparameters("aen", 0.2, 400, 3)["warmup_steps"] == 100
    assert recipes.hyperparameters("topk_auxk", None, 400, 3) == {"k": 3, "aux_coeff": 1 / 32}
    assert recipes.hyperparameters("relu_l1", 0.5, 400, 3) == {"l1_coeff": 0.5}
    assert recipes.dead_after_tokens(32, 400) == 32 * 20
    assert not recipes.METHODS["topk_auxk"].calibrated and recipes.METHODS["aen"].calibrated
    assert not recipes.METHODS["batch_topk_auxk"].calibrated
    with pytest.raises(ValueError, match="needs an l1_coeff"):
        recipes.hyperparameters("aen", None, 400, 3)
    with pytest.raises(ValueError, match="method"):
        recipes.method("relu")
