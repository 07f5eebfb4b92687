"""aen_mini.train.lanes: SAEs stepped side by side on shared batches train exactly as ``train`` trains each alone."""
from __future__ import annotations

import pytest
import torch

from aen_mini.data.source import TensorSource
from aen_mini.sae import make_sae
from aen_mini.train.config import TrainConfig
from aen_mini.train.lanes import Lane
from aen_mini.train.loop import NonFiniteLossError, train


def _sae(variant: str, seed: int):
    hyper = {"k": 4} if variant in ("topk", "batch_topk") else {"l1_coeff": 0.3}
    if variant == "aen":
        hyper.update(l2_coeff=0.03, warmup_start=5, warmup_steps=5)
    return make_sae(variant, 12, 32, seed=seed, dead_after_tokens=64, **hyper)


@pytest.mark.parametrize("fast", [False, True])
def test_lanes_on_shared_batches_match_separate_runs(fast):
    data = torch.randn(40 * 16, 12) * torch.linspace(0.5, 2.0, 12)
    variants = ("relu_l1", "batch_topk", "aen")
    cfgs = {v: TrainConfig(steps=40 if v != "relu_l1" else 25, batch_size=16, lr=3e-3, seed=1, log_every=10,
                           l1_warmup_steps=8 if v == "relu_l1" else 0, fast=fast, progress=False) for v in variants}
    alone = {v: train(_sae(v, 3), TensorSource(data, seed=7), cfgs[v]) for v in variants}
    lanes = {v: Lane(_sae(v, 3), cfgs[v]) for v in variants}
    source = TensorSource(data, seed=7)
    while not all(lane.finished for lane in lanes.values()):
        x = source.next_batch(16)  # drawn once, stepped by every lane still running
        for lane in lanes.values():
            if not lane.finished:
                lane.step(x)
    for v in variants:
        for name, value in alone[v].sae.state_dict().items():
            assert torch.allclose(lanes[v].sae.state_dict()[name], value, atol=1e-6), (v, name)
        assert [h["step"] for h in lanes[v].history] == [h["step"] for h in alone[v].history]
        assert lanes[v].history[-1]["l0"] == pytest.approx(alone[v].history[-1]["l0"])
    assert lanes["relu_l1"].done == 25 and lanes["relu_l1"].sae.penalty_scale.item() == 1.0  # warm-up reset at the end
    with pytest.raises(RuntimeError, match="has run its 25 steps"):
        lanes["relu_l1"].step(x)


def test_a_lane_refuses_a_non_sae_and_stops_on_a_nonfinite_loss():
    with pytest.raises(TypeError, match="aen_mini SAE"):
        Lane(torch.nn.Linear(2, 2), TrainConfig(steps=2, progress=False))
    lane = Lane(_sae("relu_l1", 0), TrainConfig(steps=5, batch_size=4, progress=False))
    lane.step(torch.randn(4, 12))
    before = lane.sae.W_dec.detach().clone()
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        lane.step(torch.full((4, 12), float("nan")))
    assert torch.equal(lane.sae.W_dec, before)  # the NaN never reached the weights


@pytest.mark.parametrize("fast", [False, True])
def test_a_lane_continued_from_its_state_matches_one_run_through(fast):
    data = torch.randn(30 * 8, 12)
    cfg = TrainConfig(steps=30, batch_size=8, lr=3e-3, seed=0, log_every=5, l1_warmup_steps=20, fast=fast, progress=False)
    batches = [data[i * 8:(i + 1) * 8] for i in range(30)]
    through, first = Lane(_sae("aen", 2), cfg), Lane(_sae("aen", 2), cfg)
    for x in batches:
        through.step(x)
    for x in batches[:12]:
        first.step(x)
    second = Lane(_sae("aen", 9), cfg, state=first.state_dict())  # another init: the state replaces it
    for x in batches[12:]:
        second.step(x)
    for name, value in through.sae.state_dict().items():
        assert torch.allclose(second.sae.state_dict()[name], value, atol=1e-6), name
    assert [h["step"] for h in second.history] == [h["step"] for h in through.history] and second.finished
