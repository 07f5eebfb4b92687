"""Adding a variant is one file (a class and its config dataclass) plus one registry line: a toy variant defined
here goes through make_sae, training, a checkpoint round trip, SAELens export and latent sharding untouched."""
from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from aen_mini.io.checkpoint import load_checkpoint, save_checkpoint
from aen_mini.data.source import TensorSource
from aen_mini.train.sharding import shard_sae
from aen_mini.sae import VARIANTS, SAE, SAEConfig, make_sae, register_variant, sae_from_config
from aen_mini.sae.collective import LOCAL_STATS
from aen_mini.io.saelens import export_to_saelens, import_from_saelens
from aen_mini.train.loop import TrainConfig, train
from aen_mini.validate import check_in_range


@dataclass
class SqrtL1Config(SAEConfig):
    coeff: float = 0.05  # weight of the sqrt penalty
    usage_decay: float = 0.9  # decay of the running mean of each latent's firing rate

    def __post_init__(self) -> None:
        super().__post_init__()
        self.usage_decay = check_in_range("usage_decay", self.usage_decay, 0.0, 1.0)


class SqrtL1(SAE):
    """loss = mse + coeff * mean sum_j sqrt(h_j + eps), with a per-latent running firing rate."""

    variant = "toy_sqrt_l1"
    config_class = SqrtL1Config
    latent_state = {**SAE.latent_state, "usage": 0}
    penalty_reduction = {"sqrt": "latent_sum"}

    def __init__(self, cfg: SqrtL1Config, **shard) -> None:
        super().__init__(cfg, **shard)
        self.register_buffer("usage", torch.zeros(self.n_latents))

    def penalties(self, h, pre, x, x_hat):
        return {"sqrt": self.coeff * (h + 1e-6).sqrt().sum(-1).mean()}

    def update_state(self, h, stats=LOCAL_STATS):
        self.usage.lerp_(stats.batch_mean((h > 0).float().mean(0)), 1 - self.usage_decay)


@pytest.fixture
def toy():
    register_variant(SqrtL1)
    yield
    VARIANTS.pop(SqrtL1.variant)


def test_a_new_variant_trains_saves_and_exports(toy, tmp_path):
    sae = make_sae("toy_sqrt_l1", 6, 12, coeff=0.02, seed=3)
    assert sae.config()["coeff"] == 0.02 and sae.cfg == SqrtL1Config(6, 12, coeff=0.02, seed=3)
    with pytest.raises(ValueError, match="no hyperparameter"):
        make_sae("toy_sqrt_l1", 6, 12, l1_coeff=0.1)
    data = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "toy.safetensors"
    result = train(sae, TensorSource(data, seed=0), TrainConfig(steps=6, batch_size=16, lr=1e-2, progress=False,
                                                                log_every=3, checkpoint_every=6, checkpoint_path=str(path)))
    assert "sqrt" in result.history[-1] and sae.usage.abs().sum() > 0  # its penalty was logged, its state updated
    probe = data[:5]
    loaded = load_checkpoint(path).sae
    assert type(loaded) is SqrtL1 and torch.equal(loaded.usage, sae.usage)
    torch.testing.assert_close(loaded(probe)[0], sae(probe)[0])
    assert type(sae_from_config(sae.config())) is SqrtL1
    imported = import_from_saelens(export_to_saelens(sae, tmp_path / "saelens"))
    assert type(imported) is SqrtL1
    torch.testing.assert_close(imported(probe)[0], sae.eval()(probe)[0])
    save_checkpoint(tmp_path / "again.safetensors", loaded)


def test_a_new_variant_shards_by_its_declarations(toy, tmp_path):
    """One rank holding every latent through the sharded code path (gloo, world size 1): the same loss."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        sae = make_sae("toy_sqrt_l1", 6, 12, seed=1)
        local = shard_sae(sae, 0, 1)
        assert type(local) is SqrtL1 and local.comms.sharded and local.usage.shape == (12,)
        x = torch.randn(8, 6)
        torch.testing.assert_close(local.loss(x)["loss"], sae.loss(x)["loss"])
        SqrtL1.penalty_reduction = {}  # an undeclared penalty is refused, not silently mis-summed
        with pytest.raises(ValueError, match="penalty_reduction"):
            local.loss(x)
    finally:
        SqrtL1.penalty_reduction = {"sqrt": "latent_sum"}
        dist.destroy_process_group()


def test_a_new_variant_is_on_the_command_line(toy, tmp_path):
    from aen_mini.run.cli import main, run_options

    assert "sae.usage_decay" in {name for name, *_ in run_options()}
    out = tmp_path / "run"
    assert main(["train", "--data.model", "spiked", "--sae.variant", "toy_sqrt_l1", "--sae.latents", "8",
                 "--sae.usage-decay", "0.5", "--tokens", "512", "--train.batch-size", "256", "--no-train.progress",
                 "--out", str(out)]) == 0
    assert type(load_checkpoint(out / "checkpoint.safetensors").sae) is SqrtL1
