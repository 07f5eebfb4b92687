"""Grid training on stored activations (aen_mini/train/grid_tensor.py) at tiny sizes on CPU."""
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
