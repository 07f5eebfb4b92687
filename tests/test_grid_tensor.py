"""Grid training on stored activations (aen_mini/train/grid_tensor.py) and the pieces of the LLM grid study
(aen_mini/experiments/llm_study.py, llm_grid_study.py) that plan the held-out window and the runs, at tiny sizes on CPU."""
import pytest
import torch

from aen_mini.train.grid import GridConfig, GridRun, train_grid
from aen_mini.train.grid_tensor import TensorStreams, passes
from aen_mini.sae import make_sae


def test_tensor_streams_draw_rows_of_the_harvest_per_stream():
    x = torch.arange(40, dtype=torch.bfloat16).reshape(20, 2)
    batches = TensorStreams(x, streams=3, seed=1)(16)
    assert batches.shape == (3, 16, 2) and batches.dtype == torch.float32
    rows = {tuple(r) for r in x.float().tolist()}
    assert all(tuple(r) in rows for r in batches.reshape(-1, 2).tolist())
    assert not torch.equal(batches[0], batches[1])  # each seed its own order
    assert torch.equal(batches, TensorStreams(x, streams=3, seed=1)(16))  # seeded
    with pytest.raises(ValueError, match="non-empty"):
        TensorStreams(torch.zeros(0, 2))


def test_scheduled_config_warms_up_then_decays():
    cfg = GridConfig(steps=100, lr=1.0, lr_warmup_steps=10, lr_decay_start=0.8)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0) and cfg.lr_at(50) == pytest.approx(1.0)
    assert cfg.lr_at(90) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        GridConfig(steps=10, lr_warmup_steps=-1)


def test_a_grid_trains_many_passes_over_a_small_harvest():
    torch.manual_seed(0)
    d, m, n = 8, 16, 64
    atoms = torch.randn(m, d)
    codes = torch.rand(n, m) * (torch.rand(n, m) < 0.2)
    x = codes @ atoms
    runs = [GridRun(make_sae("relu_l1", d, m, l1_coeff=0.05, seed=0), stream=0),
            GridRun(make_sae("aen", d, m, l1_coeff=0.05, l2_coeff=0.005, seed=1, warmup_start=10, warmup_steps=10), stream=1)]
    cfg = GridConfig(steps=60, batch_size=32, lr=1e-2, lr_warmup_steps=6)
    saes, trainer = train_grid(runs, TensorStreams(x, streams=2, seed=0), cfg)
    assert passes(cfg.steps, cfg.batch_size, n) == pytest.approx(30.0)
    for sae in saes:
        with torch.no_grad():
            x_hat, _ = sae(x)
        ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        assert ev > 0.5  # learned, from 30 passes over 64 rows
    assert not torch.equal(saes[0].W_dec, saes[1].W_dec)


def test_heldout_window_takes_the_asked_tokens_or_half_the_corpus():
    from aen_mini.experiments.llm_study import heldout_split

    assert heldout_split(n_contexts=1000, body=127, heldout_tokens=10_000) == 79  # ceil(10000 / 127)
    assert heldout_split(n_contexts=100, body=127, heldout_tokens=10_000_000) == 50  # at most half
    assert heldout_split(n_contexts=1, body=127, heldout_tokens=10) == 1


def test_runs_of_a_family_share_one_stream_per_seed_and_reuse_the_calibrated_l1():
    from aen_mini.experiments.llm_grid_study import RELU_FAMILY, TOPK_FAMILY, build_runs

    l1 = {("relu_l1", 32): 2.0, ("aen", 32): 0.3}
    runs = build_runs(RELU_FAMILY, ["relu_l1", "aen", "topk"], [32], [0, 5], 8, 64, 100, 16, l1)
    assert [(f["method"], f["seed"], r.stream) for f, r in runs] == [("relu_l1", 0, 0), ("aen", 0, 0), ("relu_l1", 5, 1), ("aen", 5, 1)]
    assert runs[0][1].sae.l1_coeff == 2.0 and runs[1][1].sae.l2_coeff == pytest.approx(0.03)
    assert runs[1][1].sae.reweighting.warmup_start == 25  # AEN's reweighting starts at a quarter of the planned steps
    topk = build_runs(TOPK_FAMILY, ["topk", "topk_noaux"], [32], [0], 8, 64, 100, 16, l1)
    assert [r.sae.aux_coeff for _, r in topk] == [pytest.approx(1 / 32), 0.0]
