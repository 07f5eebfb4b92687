"""evaluate's Report: a dict of floats for code and JSON that prints as a rounded, explained table."""
import json

import torch

from aen_mini.data.synthetic import SpikedSource
from aen_mini.eval.metrics import Report, evaluate
from aen_mini.sae import make_sae


def test_report_prints_each_number_rounded_with_its_meaning():
    report = Report({"dead_pct": 12.3456, "l0": 5.23456, "ev": 0.6412345, "recovery_frac_above": 0.25, "new_key": 1.23456789})
    lines = str(report).splitlines()
    assert len(lines) == 5
    assert lines[0].split() [:4] == ["dead", "latents", "12.3", "%"] and "fire on none" in lines[0]
    assert "L0" in lines[1] and "5.2 " in lines[1] and "5.23" not in lines[1]
    assert "0.641" in lines[2] and "1 = perfect" in lines[2]
    assert "25.0%" in lines[3]
    assert lines[4].split() == ["new_key", "1.235"]  # a number it has no words for is still shown, rounded


def test_evaluate_returns_a_report_that_is_still_a_plain_dict_of_floats():
    source = SpikedSource(n=8, m=16, k=2, seed=0)
    x, codes = source.sample(256, seed=1)
    report = evaluate(make_sae("relu_l1", 8, 16).eval(), x, codes_true=codes, D_true=source.dictionary)
    assert isinstance(report, Report) and isinstance(report, dict)
    assert json.loads(json.dumps(report)) == dict(report)
    assert len(str(report).splitlines()) == len(report) and "{" not in str(report)
    assert all(isinstance(v, float) for v in report.values()) and torch.isfinite(torch.tensor(list(report.values()))).all()
