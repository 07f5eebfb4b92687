"""The fast step (aen_mini.train.fast) against the plain fp32 path: the same loss and gradients in fp32, the same
optimiser step (clipping folded into fused Adam), no update on a non-finite loss, and a bf16 training run whose
dead %, L0 and explained variance agree with the fp32 run."""
import copy

import pytest
import torch

from aen_mini.data.synthetic import SpikedSource
from aen_mini.train.fast import FastStep, fast_loss
from aen_mini.eval.metrics import explained_variance
from aen_mini.sae import VARIANTS, make_sae
from aen_mini.train.loop import TrainConfig, train

D, M = 12, 24


def variant_sae(variant, seed=0):
    kwargs = {"k": 4} if "topk" in variant else {"l1_coeff": 0.05}
    sae = make_sae(variant, D, M, seed=seed, dead_after_tokens=16, **kwargs)
    with torch.no_grad():  # move off the symmetric init so every term and gradient is non-trivial
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(seed + 1))
        sae.b_enc.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + 2))
        sae.tokens_since_fired[: M // 3] = 100  # some dead latents, so AuxK is active
    return sae


def batch(n=32, seed=0):
    return SpikedSource(n=D, m=2 * D, k=3, seed=seed).next_batch(n)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fp32_fast_loss_matches_sae_loss_in_value_and_gradient(variant):
    sae, x = variant_sae(variant), batch()
    reference = sae.loss(x)
    reference["loss"].backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    terms, h = fast_loss(sae, x, torch.float32)
    terms["loss"].backward()
    assert terms.keys() == reference.keys()
    for name in terms:
        torch.testing.assert_close(terms[name], reference[name].float(), rtol=1e-5, atol=1e-6)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(h, sae.encode(x))


def plain_step(sae, optimizer, x, lr, clip):
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    terms, codes = sae.loss_and_codes(x)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), clip)
    optimizer.step()
    sae.after_step(codes)


@pytest.mark.parametrize("variant", ["aen", "topk", "batch_topk"])
def test_fp32_fast_step_equals_the_plain_step(variant):
    plain, fast = variant_sae(variant), variant_sae(variant)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    step = FastStep(fast, torch.optim.Adam(fast.parameters(), lr=1e-2), grad_clip=0.5, dtype=torch.float32)
    assert not step.compile and not step.cuda_graph  # the CPU defaults
    for i in range(5):
        x, lr = batch(seed=i) * 4, 1e-2 / (i + 1)  # large inputs: the gradient norm exceeds the clip
        plain_step(plain, plain_opt, x, lr, clip=0.5)
        terms = step(x, lr).terms
        assert terms["loss"].dtype == torch.float32 and terms["loss"].ndim == 0
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_a_nonfinite_loss_leaves_the_weights_alone():
    sae = variant_sae("relu_l1")
    step = FastStep(sae, torch.optim.Adam(sae.parameters(), lr=1e-2), dtype=torch.float32)
    step(batch(), 1e-2)
    before = copy.deepcopy(sae.state_dict())
    x = batch(seed=1)
    x[3, 2] = float("nan")
    assert not torch.isfinite(step(x, 1e-2).terms["loss"])
    for name in ("W_enc", "b_enc", "b_dec"):
        assert torch.equal(sae.state_dict()[name], before[name]), name
    torch.testing.assert_close(sae.W_dec, before["W_dec"])  # renormalised unit columns: unchanged up to rounding


def test_rejects_bad_arguments():
    sae = variant_sae("aen")
    with pytest.raises(ValueError, match="dtype"):
        FastStep(sae, torch.optim.Adam(sae.parameters()), dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA"):
        FastStep(sae, torch.optim.Adam(sae.parameters()), cuda_graph=True)
    with pytest.raises(ValueError, match="compile_mode"):  # inductor's own CUDA graphs would nest inside ours
        FastStep(sae, torch.optim.Adam(sae.parameters()), compile_mode="reduce-overhead")
    with pytest.raises(TypeError, match="Adam"):
        FastStep(sae, torch.optim.SGD(sae.parameters(), lr=0.1))


def spiked_run(steps, precision, fast, **cfg):
    src = SpikedSource(n=16, m=32, k=3, rho=0.3, seed=1)
    sae = make_sae("aen", 16, 48, l1_coeff=0.05, l2_coeff=0.01, ema_beta=0.9, warmup_start=20, warmup_steps=40,
                   dead_after_tokens=2048, seed=2)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=3e-3, log_every=steps, progress=False, precision=precision,
                      fast=fast, **cfg)
    return train(sae, src, cfg)


def summary(result):
    x = SpikedSource(n=16, m=32, k=3, rho=0.3, seed=1).sample(2048, seed=9)[0]
    with torch.no_grad():
        x_hat, h = result.sae(x)
    record = result.history[-1]
    return {"dead_pct": record["dead_pct"], "l0": (h > 0).float().sum(-1).mean().item(),
            "ev": explained_variance(x, x_hat)}


def test_bf16_fast_run_agrees_with_the_fp32_run():
    reference, fast = summary(spiked_run(400, "fp32", False)), summary(spiked_run(400, "bf16", True))
    # The tolerances the GPU benchmark is held to as well (benchmarks/gpu_notes.md).
    assert abs(fast["dead_pct"] - reference["dead_pct"]) <= 5.0, (fast, reference)
    assert abs(fast["l0"] - reference["l0"]) <= 0.1 * reference["l0"], (fast, reference)
    assert abs(fast["ev"] - reference["ev"]) <= 0.02, (fast, reference)
    assert reference["ev"] > 0.5  # the run learned something, so the comparison means something


@pytest.mark.parametrize("variant", ["relu_l1", "aen"])
def test_fast_loss_scales_l1_and_l2_by_the_warmup_factor_in_value_and_gradient(variant):
    """The warm-up factor is a buffer both losses read: at 0.25 the fast terms and gradients equal the plain
    ones, and the penalty is a quarter of the unscaled one."""
    sae, x = variant_sae(variant), batch()
    unscaled = fast_loss(sae, x, torch.float32)[0]
    sae.penalty_scale.fill_(0.25)
    reference = sae.loss(x)
    reference["loss"].backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    terms = fast_loss(sae, x, torch.float32)[0]
    terms["loss"].backward()
    torch.testing.assert_close(terms["l1"], 0.25 * unscaled["l1"], rtol=1e-5, atol=1e-7)
    for name in terms:
        torch.testing.assert_close(terms[name], reference[name].float(), rtol=1e-5, atol=1e-6)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fast_run_with_a_penalty_warmup_matches_the_plain_run():
    """TrainConfig.l1_warmup_steps in the fused step: the same weights as the plain fp32 step, and not the weights
    of a run without the warm-up (so the fast step did not ignore it)."""
    def run(fast, warmup):
        sae = make_sae("relu_l1", 16, 48, l1_coeff=0.5, seed=2)
        cfg = TrainConfig(steps=12, batch_size=64, lr=3e-3, log_every=12, progress=False, precision="fp32",
                          fast=fast, l1_warmup_steps=warmup, grad_clip=None)
        return train(sae, SpikedSource(n=16, m=32, k=3, rho=0.3, seed=1), cfg).sae

    plain, fast, without = run(False, 8), run(True, 8), run(True, 0)
    for (name, a), b, c in zip(plain.state_dict().items(), fast.state_dict().values(), without.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(fast.b_enc, without.b_enc, atol=1e-4)
    assert float(fast.penalty_scale) == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_step_follows_the_penalty_warmup():
    """The graph is captured after a few eager steps, inside the warm-up: its replays must read the factor the
    trainer fills in, so the graphed run trains as the plain one does."""
    torch.backends.cuda.matmul.allow_tf32 = False

    def run(fast):
        sae = make_sae("relu_l1", 16, 48, l1_coeff=0.5, seed=2)
        cfg = TrainConfig(steps=12, batch_size=64, lr=3e-3, log_every=12, progress=False, precision="fp32",
                          fast=fast, l1_warmup_steps=8, grad_clip=None, device="cuda")
        return train(sae, SpikedSource(n=16, m=32, k=3, rho=0.3, seed=1), cfg).sae

    plain, graphed = run(False), run(True)
    for (name, a), b in zip(plain.state_dict().items(), graphed.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5, msg=name)


def test_fast_run_resumes_exactly(tmp_path):
    full = spiked_run(30, "bf16", True).sae
    ckpt = tmp_path / "fast.safetensors"
    spiked_run(15, "bf16", True, checkpoint_every=15, checkpoint_path=str(ckpt))
    src = SpikedSource(n=16, m=32, k=3, rho=0.3, seed=1)
    sae = make_sae("aen", 16, 48, l1_coeff=0.05, l2_coeff=0.01, ema_beta=0.9, warmup_start=20, warmup_steps=40,
                   dead_after_tokens=2048, seed=2)
    resumed = train(sae, src, TrainConfig(steps=30, batch_size=64, lr=3e-3, log_every=30, progress=False,
                                          precision="bf16", fast=True), resume=ckpt).sae
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_compiled_fast_step_equals_the_eager_fast_step():
    """torch.compile (inductor, the CUDA default) of the loss and of after_step changes the kernels, not the
    arithmetic: the weights, the adaptive EMA and the firing counters agree."""
    eager, compiled = variant_sae("aen"), variant_sae("aen")
    step_e = FastStep(eager, torch.optim.Adam(eager.parameters(), lr=1e-2), dtype=torch.float32)
    step_c = FastStep(compiled, torch.optim.Adam(compiled.parameters(), lr=1e-2), dtype=torch.float32, compile=True)
    for i in range(3):
        x = batch(seed=i)
        torch.testing.assert_close(step_c(x, 1e-2).terms["loss"], step_e(x, 1e-2).terms["loss"], rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    assert eager.reweighting.step.item() == 3 and torch.any(eager.reweighting.ema != 1.0)  # after_step ran


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_float64_fast_loss_gradients_equal_autograd_of_sae_loss(variant):
    """The codes' penalty gradient comes from torch.func.grad of the variant's own `penalties` and joins the
    decoder's gradient in one masked pass (_CodesWithPenaltyGrad): in float64 it equals plain autograd of
    `sae.loss` to rounding, for every variant (AuxK's dead latents included)."""
    sae, x = variant_sae(variant).double(), batch().double()
    sae.loss(x)["loss"].backward()
    expected = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    fast_loss(sae, x, torch.float64)[0]["loss"].backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("variant", ["relu_l1", "elastic_net", "aen"])
def test_float64_fast_loss_passes_gradcheck(variant):
    """Finite differences through the whole loss, the fused code-gradient pass included (d loss / d x goes
    through dL/dpre). Not TopK: AuxK's residual is detached by design, so its gradient is not a derivative."""
    sae, x = variant_sae(variant).double(), batch(8).double()
    assert torch.autograd.gradcheck(lambda x: fast_loss(sae, x, torch.float64)[0]["loss"], x.requires_grad_())
