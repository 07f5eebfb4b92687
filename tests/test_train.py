"""The trainer: determinism, exact resume, NaN handling, schedules, resampling, and recovery of ground truth."""
import pytest
import torch

from aen_mini.io.checkpoint import load_checkpoint
from aen_mini.data.source import TensorSource
from aen_mini.data.synthetic import SpikedSource
from aen_mini.eval.recovery import dictionary_recovery
from aen_mini.sae import make_sae
from aen_mini.train.loop import NonFiniteLossError, TrainConfig, train


def small_run(steps=40, resume=None, callback=None, **cfg):
    src = SpikedSource(n=16, m=32, k=3, rho=0.3, seed=1)
    sae = make_sae("aen", 16, 32, l1_coeff=0.1, l2_coeff=0.01, ema_beta=0.9, warmup_start=5, warmup_steps=10, seed=2)
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=32, log_every=10, progress=False, lr_warmup_steps=5,
                                lr_decay_start=0.5), **cfg})
    return train(sae, src, cfg, resume=resume, callback=callback)


def test_two_runs_with_one_seed_are_identical():
    a, b = small_run().sae, small_run().sae
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


class Crash(Exception):
    pass


def crash_at(step_to_crash):
    def callback(step, record, sae):
        if step == step_to_crash:
            raise Crash
    return callback


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    full = small_run()
    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(Crash):  # dies at step 20, after the checkpoint of step 15
        small_run(checkpoint_every=15, checkpoint_path=str(ckpt), callback=crash_at(20))
    state = load_checkpoint(ckpt).train_state
    assert state["step"] == 15 and state["source"]["batches_drawn"] == 15
    resumed = small_run(resume=ckpt)
    for (name, pa), pb in zip(full.sae.state_dict().items(), resumed.sae.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert resumed.sae.reweighting.step.item() == 40
    assert [h["step"] for h in resumed.history] == [10, 20, 30, 40]


@pytest.fixture(scope="module")
def halfway(tmp_path_factory):
    """small_run's checkpoint at step 20 of 40 (lr decays from step 20)."""
    ckpt = tmp_path_factory.mktemp("halfway") / "run.safetensors"
    with pytest.raises(Crash):
        small_run(checkpoint_every=20, checkpoint_path=str(ckpt), callback=crash_at(30))
    return ckpt


@pytest.mark.parametrize("changed,want", [
    (dict(batch_size=64), "with batch_size=32; this run has batch_size=64"),
    (dict(adam_betas=(0.9, 0.99)), r"with adam_betas=\[0.9, 0.999\]; this run has adam_betas=\[0.9, 0.99\]"),
    (dict(steps=50, seed=1), "with steps=40, seed=0; this run has steps=50, seed=1"),  # steps: the decay moves
])
def test_resuming_with_a_different_trajectory_config_is_refused(halfway, changed, want):
    with pytest.raises(ValueError, match=f"checkpoint {halfway} was trained {want} "):
        small_run(resume=halfway, **changed)


def test_resuming_with_other_device_logging_or_checkpointing_is_exact(halfway, tmp_path):
    full = small_run()
    resumed = small_run(resume=halfway, progress=True, log_every=5, checkpoint_every=7,
                        checkpoint_path=str(tmp_path / "again.safetensors"), device="cpu:0")
    for (name, pa), pb in zip(full.sae.state_dict().items(), resumed.sae.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_a_run_without_lr_decay_can_be_extended(tmp_path):
    """Without decay the lr schedule does not depend on steps: 20 steps resumed to 40 is the 40-step run."""
    ckpt = tmp_path / "short.safetensors"
    small_run(steps=20, lr_decay_start=1.0, checkpoint_every=20, checkpoint_path=str(ckpt))
    extended = small_run(resume=ckpt, lr_decay_start=1.0)
    full = small_run(lr_decay_start=1.0)
    for (name, pa), pb in zip(full.sae.state_dict().items(), extended.sae.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_lr_schedule_warms_up_and_decays_linearly():
    cfg = TrainConfig(steps=10, lr=1.0, lr_warmup_steps=4, lr_decay_start=0.6)
    assert [round(cfg.lr_at(s), 6) for s in range(10)] == [0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25]


class PoisonedSource(TensorSource):
    """Finite first batch (passes the boundary check), inf from batch 3 on."""

    def next_batch(self, batch_size):
        x = super().next_batch(batch_size)
        return x * float("inf") if self.position > 3 * batch_size else x


def test_nonfinite_loss_stops_with_the_step_and_writes_no_nan_checkpoint(tmp_path):
    ckpt = tmp_path / "c.safetensors"
    sae = make_sae("relu_l1", 4, 8)
    src = PoisonedSource(torch.randn(400, 4), shuffle=False)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(sae, src, TrainConfig(steps=10, batch_size=10, progress=False, checkpoint_every=2, checkpoint_path=str(ckpt)))
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert load_checkpoint(ckpt).train_state["step"] == 2  # the last good checkpoint is intact


def test_first_batch_with_nan_or_wrong_width_is_rejected():
    x = torch.randn(50, 4)
    x[7, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf .*row 7"):
        train(make_sae("relu_l1", 4, 8), _Raw(x), TrainConfig(steps=2, batch_size=50, progress=False))
    with pytest.raises(ValueError, match="d_in=5 .* d_in=4"):
        train(make_sae("relu_l1", 4, 8), TensorSource(torch.randn(10, 5)), TrainConfig(steps=1, progress=False))


class _Raw:
    """A source that hands out a fixed tensor without checking it (as a user's own source might)."""

    def __init__(self, x):
        self.x, self.d_in = x, x.shape[1]

    def next_batch(self, batch_size):
        return self.x[:batch_size]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("field,value,match", [("steps", 0, "steps"), ("lr", -1.0, "lr"), ("precision", "fp8", "precision.*fp32"),
                                               ("checkpoint_every", 5, "checkpoint_path")])
def test_train_config_names_the_bad_field(field, value, match):
    kwargs = {"steps": 10, field: value}
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_resampling_revives_dead_latents():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    sae = make_sae("relu_l1", 8, 16, l1_coeff=0.01, dead_after_tokens=64)
    with torch.no_grad():
        sae.b_enc[:8] = -100.0  # half the latents can never fire
    cfg = dict(steps=6, batch_size=64, progress=False, log_every=1, init_b_dec=False)
    dead_without = train(sae, TensorSource(x), TrainConfig(**cfg)).history[-1]["dead_pct"]
    assert dead_without == 50.0
    revived = train(sae, TensorSource(x), TrainConfig(resample_every=3, **cfg)).sae
    assert revived.b_enc[:8].abs().max() < 1 and revived.dead_mask().float().mean() < 0.5  # moved off -100, firing
    assert torch.allclose(revived.W_dec.norm(dim=0), torch.ones(16), atol=1e-5)


def test_aen_recovers_the_spiked_dictionary_at_rho_zero():
    """Ground truth: 128 unit atoms in 64 dims, 4 active per sample; >= 90% found at cosine > 0.9."""
    torch.set_num_threads(1)
    src = SpikedSource(n=64, m=128, k=4, rho=0.0, seed=0)
    sae = make_sae("aen", 64, 128, l1_coeff=0.3, l2_coeff=0.01, ema_beta=0.99, warmup_start=375, warmup_steps=375,
                   dead_after_tokens=20_000, seed=1)
    train(sae, src, TrainConfig(steps=1500, batch_size=256, lr=3e-3, progress=False))
    recovery = dictionary_recovery(src.dictionary, sae.W_dec.detach())
    assert recovery["frac_above"] >= 0.9, recovery["frac_above"]


def test_log_every_zero_logs_only_the_last_step():
    result = train(make_sae("relu_l1", 4, 8), TensorSource(torch.randn(64, 4)),
                   TrainConfig(steps=5, batch_size=16, log_every=0, progress=False))
    assert [record["step"] for record in result.history] == [5]
