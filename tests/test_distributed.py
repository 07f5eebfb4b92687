"""Distributed training on the CPU (gloo, 2 processes) against one process doing the same work.

The two ranks run once for the whole module (spawning costs seconds); they write what they computed to files and
the tests compare those with a single process here."""
from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aen_mini.io.checkpoint import load_checkpoint
from aen_mini.data.source import TensorSource
from aen_mini.data.strided import StridedSource
from aen_mini.train.parallel import DataParallel
from aen_mini.train.sharding import LatentSharded, shard_sae
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train

WORLD = 2
D_IN, D_SAE = 8, 32
HYPER = {
    "aen": dict(l1_coeff=0.05, l2_coeff=0.01, ema_beta=0.5, ref_pct=0.1, dead_after_tokens=16),
    "topk": dict(k=4, aux_k=4, dead_after_tokens=16),
    "batch_topk": dict(k=4, aux_k=4, threshold_momentum=0.5, dead_after_tokens=16),
}
TOL = dict(rtol=1e-5, atol=1e-6)


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(64, D_IN, generator=g) * torch.linspace(0.5, 2.0, D_IN)


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig(**{**dict(steps=6, batch_size=16, lr=1e-2, grad_clip=0.5, log_every=1, progress=False), **overrides})


def _sharding_case(variant: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """An SAE with non-trivial running state (some dead latents, an uneven EMA) and a batch."""
    g = torch.Generator().manual_seed(3)
    sae = make_sae(variant, D_IN, D_SAE, seed=1, **HYPER[variant])
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.1)
        sae.tokens_since_fired.copy_(torch.randint(0, 32, (D_SAE,), generator=g))
        if variant == "aen":
            sae.reweighting.ema.copy_(torch.rand(D_SAE, generator=g) + 0.01)
    return sae, torch.randn(16, D_IN, generator=g)


class Crash(Exception):
    pass


def _crashing(strategy: type) -> type:
    """``strategy`` whose ranks all raise Crash when asked for batch ``after`` + 1: every rank stops at the same
    step, as a killed job does (the trainer's callback runs on rank 0 only, so it cannot stop the others)."""

    class Crashing(strategy):
        def __init__(self, device: str, after: int) -> None:
            super().__init__(device)
            self.batches_left = after

        def next_batch(self, source, batch_size):
            if self.batches_left == 0:
                raise Crash
            self.batches_left -= 1
            return super().next_batch(source, batch_size)

    return Crashing


def _crash_then_resume(rank: int, out_dir: Path, name: str, variant: str, strategy: type, source_for_rank, cfg: dict,
                       crash_after: int) -> torch.nn.Module:
    """Train with checkpoints until every rank crashes after ``crash_after`` steps, keep that checkpoint as
    ``{name}_crashed.safetensors``, then resume it in a fresh SAE and train to the end with the same config."""
    path = out_dir / f"{name}_ckpt.safetensors"
    try:
        train(make_sae(variant, D_IN, D_SAE, **HYPER[variant]), source_for_rank(), _cfg(**cfg, checkpoint_path=str(path)),
              parallel=_crashing(strategy)("cpu", crash_after))
        raise AssertionError("the first leg did not crash")
    except Crash:
        pass
    if rank == 0:
        (out_dir / f"{name}_crashed.safetensors").write_bytes(path.read_bytes())
    dist.barrier()
    return train(make_sae(variant, D_IN, D_SAE, **HYPER[variant]), source_for_rank(), _cfg(**cfg, checkpoint_path=str(path)),
                 resume=out_dir / f"{name}_crashed.safetensors", parallel=strategy("cpu")).sae


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    # a rank that fails mid-run leaves the other waiting in a collective: 2 minutes, not gloo's default 30
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    out_dir = Path(out)
    try:
        for variant in ("aen", "topk"):  # data-parallel training
            source = StridedSource(TensorSource(_data(), seed=0), rank, WORLD)
            sae = make_sae(variant, D_IN, D_SAE, **HYPER[variant])
            result = train(sae, source, _cfg(), parallel=DataParallel("cpu"))
            torch.save({"state": result.sae.state_dict(), "history": result.history}, out_dir / f"dp_{variant}_{rank}.pt")
        # the fused step serves data parallelism too (the same Step body around DDP)
        source = StridedSource(TensorSource(_data(), seed=0), rank, WORLD)
        result = train(make_sae("aen", D_IN, D_SAE, **HYPER["aen"]), source, _cfg(fast=True), parallel=DataParallel("cpu"))
        torch.save({"state": result.sae.state_dict(), "history": result.history}, out_dir / f"dp_fast_aen_{rank}.pt")
        for variant in ("topk", "batch_topk", "aen"):  # one sharded loss and backward
            sae, x = _sharding_case(variant)
            local = shard_sae(sae, rank, WORLD)
            terms, codes = local.loss_and_codes(x)
            terms["loss"].backward()
            torch.save({"terms": {k: v.detach() for k, v in terms.items()}, "codes": codes,
                        "grads": {n: p.grad for n, p in local.named_parameters()}}, out_dir / f"shard_{variant}_{rank}.pt")
        for variant in ("aen", "batch_topk"):  # sharded training, checkpointed at the end
            sae = make_sae(variant, D_IN, D_SAE, **HYPER[variant])
            path = out_dir / f"latent_{variant}.safetensors"
            cfg = _cfg(steps=5, checkpoint_every=5, checkpoint_path=str(path))
            local = train(sae, TensorSource(_data(), seed=0), cfg, parallel=LatentSharded("cpu")).sae
            probe = _data()[:8]
            with torch.no_grad():
                x_hat, _ = local(probe)
            if rank == 0:
                torch.save({"x_hat": x_hat, "probe": probe}, out_dir / f"latent_{variant}_outputs.pt")
        # crash after a checkpoint, resume with the same world size (the uninterrupted runs are above)
        resumed = _crash_then_resume(rank, out_dir, "dp_aen", "aen", DataParallel,
                                     lambda: StridedSource(TensorSource(_data(), seed=0), rank, WORLD),
                                     dict(checkpoint_every=3), crash_after=4)
        torch.save(resumed.state_dict(), out_dir / f"dp_aen_resumed_{rank}.pt")
        # one data stream per rank (as an LLM harvest runs): each rank must get its own stream position back
        def own_stream():  # of different lengths, so the ranks' stream positions differ
            return TensorSource(_data()[:64 - 44 * rank], seed=rank)
        resumed = _crash_then_resume(rank, out_dir, "dp_own", "topk", DataParallel, own_stream, dict(checkpoint_every=3),
                                     crash_after=4)
        uninterrupted = train(make_sae("topk", D_IN, D_SAE, **HYPER["topk"]), own_stream(), _cfg(),
                              parallel=DataParallel("cpu")).sae
        torch.save({"resumed": resumed.state_dict(), "uninterrupted": uninterrupted.state_dict()},
                   out_dir / f"dp_own_{rank}.pt")
        for variant in ("aen", "batch_topk"):
            _crash_then_resume(rank, out_dir, f"latent_{variant}", variant, LatentSharded, lambda: TensorSource(_data(), seed=0),
                               dict(steps=5, checkpoint_every=2), crash_after=3)  # its last checkpoint: step 5
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def _assert_state_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("variant", ["aen", "topk"])
def test_data_parallel_equals_one_process_on_the_global_batch(ranks_out, variant):
    single = train(make_sae(variant, D_IN, D_SAE, **HYPER[variant]), TensorSource(_data(), seed=0), _cfg())
    for rank in range(WORLD):
        got = torch.load(ranks_out / f"dp_{variant}_{rank}.pt")
        _assert_state_close(got["state"], single.sae.state_dict())  # weights, EMA, dead counters, on every rank
        assert len(got["history"]) == len(single.history) == 6
        for step_got, step_want in zip(got["history"], single.history):  # step by step, global-batch statistics
            for key in ("loss", "mse", "l0", "dead_pct"):
                assert step_got[key] == pytest.approx(step_want[key], rel=1e-5, abs=1e-6), (step_got["step"], key)
    if variant == "aen":  # the EMA moved away from its start, so the weights w_j were exercised
        assert not torch.allclose(single.sae.reweighting.ema, torch.ones(D_SAE))


def test_fused_data_parallel_equals_the_fused_step_in_one_process(ranks_out):
    single = train(make_sae("aen", D_IN, D_SAE, **HYPER["aen"]), TensorSource(_data(), seed=0), _cfg(fast=True))
    for rank in range(WORLD):
        got = torch.load(ranks_out / f"dp_fast_aen_{rank}.pt")
        _assert_state_close(got["state"], single.sae.state_dict())
        for step_got, step_want in zip(got["history"], single.history):
            for key in ("loss", "l0", "dead_pct"):
                assert step_got[key] == pytest.approx(step_want[key], rel=1e-5, abs=1e-6), (step_got["step"], key)


@pytest.mark.parametrize("variant", ["topk", "batch_topk", "aen"])
def test_latent_sharded_loss_gradients_and_selection_equal_unsharded(ranks_out, variant):
    sae, x = _sharding_case(variant)
    terms, codes = sae.loss_and_codes(x)
    terms["loss"].backward()
    if variant != "aen":
        assert terms["aux"] > 0  # some latents are dead, so the AuxK path is compared too
    width = D_SAE // WORLD
    for rank in range(WORLD):
        got = torch.load(ranks_out / f"shard_{variant}_{rank}.pt")
        own = slice(rank * width, (rank + 1) * width)
        assert got["terms"].keys() == terms.keys()
        for name, value in terms.items():
            torch.testing.assert_close(got["terms"][name], value.detach(), **TOL)
        assert torch.equal(got["codes"] > 0, codes[:, own] > 0)  # the same latents selected
        torch.testing.assert_close(got["codes"], codes[:, own], **TOL)
        want_grads = {"W_enc": sae.W_enc.grad[own], "b_enc": sae.b_enc.grad[own], "W_dec": sae.W_dec.grad[:, own],
                      "b_dec": sae.b_dec.grad}
        _assert_state_close(got["grads"], want_grads)


@pytest.mark.parametrize("variant", ["aen", "batch_topk"])
def test_checkpoint_from_two_sharded_ranks_loads_in_one_process(ranks_out, variant, tmp_path):
    ckpt = load_checkpoint(ranks_out / f"latent_{variant}.safetensors")
    outputs = torch.load(ranks_out / f"latent_{variant}_outputs.pt")
    with torch.no_grad():
        x_hat, _ = ckpt.sae(outputs["probe"])
    torch.testing.assert_close(x_hat, outputs["x_hat"], rtol=1e-6, atol=1e-6)
    # and the sharded run trained exactly what one process trains: weights, buffers and Adam moments
    path = tmp_path / "single.safetensors"
    train(make_sae(variant, D_IN, D_SAE, **HYPER[variant]), TensorSource(_data(), seed=0),
          _cfg(steps=5, checkpoint_every=5, checkpoint_path=str(path)))
    single = load_checkpoint(path)
    _assert_state_close(ckpt.sae.state_dict(), single.sae.state_dict())
    assert ckpt.train_state["step"] == single.train_state["step"] == 5
    assert ckpt.optimizer_state["state"].keys() == single.optimizer_state["state"].keys() == {0, 1, 2, 3}
    for idx, moments in single.optimizer_state["state"].items():
        _assert_state_close(ckpt.optimizer_state["state"][idx], moments)


def _same_trajectory(got: list[dict], want: list[dict]) -> None:
    assert [h["step"] for h in got] == [h["step"] for h in want]
    for step_got, step_want in zip(got, want):
        for key in ("loss", "mse", "l0", "dead_pct", "lr"):
            assert step_got[key] == pytest.approx(step_want[key], rel=1e-5, abs=1e-6), (step_got["step"], key)


def test_data_parallel_resume_equals_an_uninterrupted_run(ranks_out):
    crashed = load_checkpoint(ranks_out / "dp_aen_crashed.safetensors")
    assert crashed.train_state["step"] == 3 and len(crashed.train_state["rank_sources"]) == WORLD
    for rank in range(WORLD):  # the same 2 ranks without the crash
        _assert_state_close(torch.load(ranks_out / f"dp_aen_resumed_{rank}.pt"),
                            torch.load(ranks_out / f"dp_aen_{rank}.pt")["state"])
    resumed = load_checkpoint(ranks_out / "dp_aen_ckpt.safetensors")  # written by the resumed leg at step 6
    _same_trajectory(resumed.train_state["history"], torch.load(ranks_out / "dp_aen_0.pt")["history"])
    # one process on the global batch, uninterrupted, and one process resuming the 2-rank checkpoint
    single = train(make_sae("aen", D_IN, D_SAE, **HYPER["aen"]), TensorSource(_data(), seed=0), _cfg())
    _assert_state_close(resumed.sae.state_dict(), single.sae.state_dict())
    one_process = train(make_sae("aen", D_IN, D_SAE, **HYPER["aen"]), TensorSource(_data(), seed=0), _cfg(),
                        resume=ranks_out / "dp_aen_crashed.safetensors")
    _assert_state_close(one_process.sae.state_dict(), single.sae.state_dict())


def test_data_parallel_resume_restores_each_ranks_own_stream(ranks_out):
    crashed = load_checkpoint(ranks_out / "dp_own_crashed.safetensors")
    streams = crashed.train_state["rank_sources"]
    assert len(streams) == WORLD and streams[0] != streams[1]
    for rank in range(WORLD):
        got = torch.load(ranks_out / f"dp_own_{rank}.pt")
        _assert_state_close(got["resumed"], got["uninterrupted"])
    with pytest.raises(ValueError, match="2 per-rank data streams but 1 processes"):
        train(make_sae("topk", D_IN, D_SAE, **HYPER["topk"]), TensorSource(_data(), seed=0), _cfg(),
              resume=ranks_out / "dp_own_crashed.safetensors", parallel=None)


@pytest.mark.parametrize("variant", ["aen", "batch_topk"])
def test_latent_sharded_resume_equals_an_uninterrupted_run(ranks_out, variant):
    crashed = load_checkpoint(ranks_out / f"latent_{variant}_crashed.safetensors")
    assert crashed.train_state["step"] == 2
    resumed = load_checkpoint(ranks_out / f"latent_{variant}_ckpt.safetensors")  # 2 shards resumed, at step 5
    uninterrupted = load_checkpoint(ranks_out / f"latent_{variant}.safetensors")
    assert resumed.train_state["step"] == uninterrupted.train_state["step"] == 5
    _assert_state_close(resumed.sae.state_dict(), uninterrupted.sae.state_dict())
    for idx, moments in uninterrupted.optimizer_state["state"].items():
        _assert_state_close(resumed.optimizer_state["state"][idx], moments)
    _same_trajectory(resumed.train_state["history"], uninterrupted.train_state["history"])
    one_process = train(make_sae(variant, D_IN, D_SAE, **HYPER[variant]), TensorSource(_data(), seed=0), _cfg(steps=5),
                        resume=ranks_out / f"latent_{variant}_crashed.safetensors")
    _assert_state_close(one_process.sae.state_dict(), uninterrupted.sae.state_dict())


def test_strided_source_partitions_the_global_batch():
    data = _data()
    ranks = [StridedSource(TensorSource(data, seed=0), r, WORLD) for r in range(WORLD)]
    whole = TensorSource(data, seed=0)
    for _ in range(5):  # crosses an epoch boundary
        batch = whole.next_batch(16)
        parts = [s.next_batch(8) for s in ranks]
        assert torch.equal(torch.stack(parts, 1).reshape(16, D_IN), batch)
    assert ranks[0].state_dict() == ranks[1].state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="rank"):
        StridedSource(whole, 2, WORLD)


def test_shard_sae_refuses_uneven_split():
    with pytest.raises(ValueError, match="divisible"):
        shard_sae(make_sae("aen", D_IN, 30), 0, 4)
