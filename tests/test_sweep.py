"""The synthetic sweep: calibration reaches its L0 target, records carry every field, summaries and the claim
check compute what they say."""
import math

import pytest
import torch

from aen_mini.experiments import sweep, sweep_report
from aen_mini.experiments.sweep import SweepSize

TINY = SweepSize(n=16, m=24, k=3, d_sae=24, batch_size=64, steps=150, calib_steps=150, calib_trials=6, pool=2048,
                 eval_samples=1024, lr=4e-3)

RECORD_FIELDS = {"method", "rho", "seed", "dead_pct", "l0", "ev", "mse", "shrinkage", "support_f1", "dict_recovery",
                 "wall_s", "l1_coeff", "l2_coeff", "gamma", "steps", "tokens", "history", "calibration_trials"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_calibration_reaches_the_target_l0():
    result = sweep.calibrate_l1("relu_l1", 0.3, target_l0=3, size=TINY, rel_tol=0.15)
    assert abs(result["l0"] / 3 - 1) <= 0.15, result["trials"]
    assert result["l1_coeff"] in [t["l1_coeff"] for t in result["trials"]]
    # the search moves l1 the right way: a trial above the target is followed by a larger l1 and vice versa
    for before, after in zip(result["trials"], result["trials"][1:]):
        assert (after["l1_coeff"] > before["l1_coeff"]) == (before["l0"] > 3)


def test_topk_is_not_calibrated():
    assert sweep.calibrate_l1("topk_auxk", 0.5, size=TINY) == {"l1_coeff": None, "l0": 3.0, "converged": True, "trials": []}


def test_sweep_records_have_every_field_and_sane_values():
    seen = []
    records = sweep.run_synthetic_sweep(["aen", "topk_auxk"], [0.5], [0], size=TINY, progress=False,
                                        on_record=seen.append)
    assert [(r["method"], r["rho"], r["seed"]) for r in records] == [("aen", 0.5, 0), ("topk_auxk", 0.5, 0)]
    assert seen == records
    for r in records:
        assert RECORD_FIELDS <= set(r), RECORD_FIELDS - set(r)
        assert 0 <= r["dead_pct"] <= 100 and 0 <= r["support_f1"] <= 1 and 0 <= r["dict_recovery"] <= 1
        assert r["tokens"] == TINY.steps * TINY.batch_size and r["history"][-1]["step"] == TINY.steps
    aen, topk = records
    assert math.isclose(aen["l2_coeff"], 0.1 * aen["l1_coeff"]) and aen["gamma"] == 1.0
    assert topk["l0"] == TINY.k and topk["l1_coeff"] is None


def _fake(method, rho, seed, dead, ev):
    return {"method": method, "label": method, "rho": rho, "seed": seed, "dead_pct": dead, "ev": ev, "l1_coeff": 1.0}


def test_summary_is_the_mean_and_sample_std_over_seeds():
    rows = sweep_report.summarise([_fake("aen", 0.9, 0, 1.0, 0.5), _fake("aen", 0.9, 1, 3.0, 0.7)], ("dead_pct", "ev"))
    assert rows[0]["dead_pct_mean"] == 2.0 and math.isclose(rows[0]["dead_pct_std"], math.sqrt(2))
    assert math.isclose(rows[0]["ev_mean"], 0.6)
    assert (rows[0]["dead_pct_min"], rows[0]["dead_pct_max"]) == (1.0, 3.0)


@pytest.mark.parametrize("aen_dead, aen_ev, reproduced", [(0.5, 0.80, True), (4.5, 0.80, False), (0.5, 0.60, False)])
def test_claim_check_applies_its_criteria(aen_dead, aen_ev, reproduced):
    records = [_fake("relu_l1", 0.9, 0, 10.0, 0.75), _fake("topk_auxk", 0.9, 0, 8.0, 0.82),
               _fake("aen", 0.9, 0, aen_dead, aen_ev), _fake("aen", 0.0, 0, 50.0, 0.1)]
    check = sweep_report.claim_check(records)
    assert check["rho"] == 0.9 and check["reproduced"] is reproduced
    assert ("**Reproduced**" in sweep_report.claim_statement(check)) is reproduced


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method"):
        sweep.calibrate_l1("relu", 0.5, size=TINY)
