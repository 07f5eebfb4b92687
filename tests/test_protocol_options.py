"""The options that make the authors' protocol and the controlled study (issue 11): the authors' init, the loss
scale and its coefficient conversion, the l1/l2 warm-up, clipping off, TopK without AuxK, centred spiked data."""
import math

import pytest
import torch

from aen_mini.data.source import TensorSource
from aen_mini.data.synthetic import SpikedSource
from aen_mini.sae import make_sae
from aen_mini.sae.base import coefficients_for_scale
from aen_mini.train.loop import TrainConfig, train


def test_authors_init_has_nn_linear_statistics():
    d_in, d_sae = 256, 1024
    sae = make_sae("relu_l1", d_in, d_sae, seed=3).init_like_authors_(seed=3).requires_grad_(False)
    bound = 1 / math.sqrt(d_in)
    # nn.Linear(d_in, d_sae): weights and bias uniform in +-1/sqrt(d_in); a row's norm is about sqrt(1/3)
    assert sae.W_enc.abs().max() <= bound and sae.b_enc.abs().max() <= bound
    assert sae.b_enc.abs().max() > 0.95 * bound and sae.b_enc.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert sae.W_enc.norm(dim=1).mean() == pytest.approx(math.sqrt(1 / 3), rel=0.02)
    assert torch.equal(sae.b_dec, torch.zeros(d_in))
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(d_sae), atol=1e-5)
    # untied: the encoder is no longer the decoder's transpose (ours is, exactly)
    ours = make_sae("relu_l1", d_in, d_sae, seed=3)
    assert torch.equal(ours.W_enc, ours.W_dec.T)
    cos = torch.nn.functional.cosine_similarity(sae.W_enc, sae.W_dec.T, dim=1)
    assert cos.abs().mean() < 0.1


def test_trainer_applies_the_authors_init_and_leaves_b_dec_at_zero():
    src = SpikedSource(n=16, m=32, k=3, rho=0.9, seed=0)
    sae = make_sae("relu_l1", 16, 32, l1_coeff=0.0, seed=1)
    expected = make_sae("relu_l1", 16, 32, l1_coeff=0.0, seed=1).init_like_authors_(seed=1)
    cfg = TrainConfig(steps=1, batch_size=8, lr=1e-9, init="authors", grad_clip=None, progress=False)
    train(sae, src, cfg)
    assert torch.allclose(sae.W_enc, expected.W_enc, atol=1e-6)
    assert sae.b_dec.abs().max() < 1e-6  # not the batch mean (the spike makes that large)


@pytest.mark.parametrize("variant,hp", [("relu_l1", {"l1_coeff": 2e-3}), ("aen", {"l1_coeff": 2e-3, "l2_coeff": 1e-3})])
def test_mean_scale_is_sum_scale_with_coefficients_times_d_in_divided_by_d_in(variant, hp):
    d_in = 12
    x = torch.randn(10, d_in) + 0.5
    mean = make_sae(variant, d_in, 20, seed=0, loss_scale="mean", **hp)
    summed = make_sae(variant, d_in, 20, seed=0, loss_scale="sum",
                      **{k: coefficients_for_scale(v, d_in, "mean", "sum") for k, v in hp.items()})
    assert coefficients_for_scale(hp["l1_coeff"], d_in, "mean", "sum") == pytest.approx(d_in * hp["l1_coeff"])
    lm, ls = mean.loss(x)["loss"], summed.loss(x)["loss"]
    assert lm.item() == pytest.approx(ls.item() / d_in, rel=1e-5)
    lm.backward(), ls.backward()
    for a, b in zip(mean.parameters(), summed.parameters()):
        assert torch.allclose(a.grad * d_in, b.grad, rtol=1e-4, atol=1e-6)


def test_unknown_loss_scale_and_init_are_named():
    with pytest.raises(ValueError, match="loss_scale"):
        make_sae("relu_l1", 4, 8, loss_scale="avg")
    with pytest.raises(ValueError, match="init"):
        TrainConfig(steps=1, init="xavier")


def test_penalty_warmup_schedule_by_hand():
    cfg = TrainConfig(steps=10, l1_warmup_steps=4)
    assert [cfg.penalty_scale_at(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert TrainConfig(steps=3).penalty_scale_at(0) == 1.0


def test_trainer_scales_l1_and_l2_during_the_warmup_only():
    seen = []
    sae = make_sae("elastic_net", 8, 16, l1_coeff=0.3, l2_coeff=0.2, seed=0)
    loss = sae.loss_and_codes

    def recording_loss(x):
        terms, h = loss(x)
        seen.append(float(sae.penalty_scale))
        # the scaled terms are coefficient * scale * the unscaled sums
        assert terms["l1"].item() == pytest.approx(0.3 * seen[-1] * h.abs().sum(-1).mean().item(), rel=1e-5)
        assert terms["l2"].item() == pytest.approx(0.2 * seen[-1] * h.pow(2).sum(-1).mean().item(), rel=1e-5)
        return terms, h

    sae.loss_and_codes = recording_loss
    train(sae, TensorSource(torch.rand(64, 8)), TrainConfig(steps=5, batch_size=8, l1_warmup_steps=2, progress=False))
    assert seen == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    assert float(sae.penalty_scale) == 1.0 and "penalty_scale" not in sae.state_dict()  # not a saved parameter


def test_topk_without_auxk_has_no_aux_term_even_with_dead_latents():
    sae = make_sae("topk", 8, 16, k=2, aux_coeff=0.0, dead_after_tokens=1)
    sae.tokens_since_fired.fill_(10)  # every latent "dead"
    assert set(sae.loss(torch.randn(4, 8))) == {"mse", "loss"}
    with_aux = make_sae("topk", 8, 16, k=2, dead_after_tokens=1)
    with_aux.tokens_since_fired.fill_(10)
    assert "aux" in with_aux.loss(torch.randn(4, 8))


def test_clipping_off_is_none():
    cfg = TrainConfig(steps=1, grad_clip=None)
    assert cfg.grad_clip is None
    sae = make_sae("relu_l1", 4, 8, l1_coeff=0.0)
    train(sae, TensorSource(1e3 * torch.rand(16, 4)), TrainConfig(steps=2, batch_size=8, grad_clip=None, progress=False))


def test_centred_spiked_source_has_zero_population_mean():
    src = SpikedSource(n=32, m=64, k=4, rho=0.9, seed=0, centre=True)
    plain = SpikedSource(n=32, m=64, k=4, rho=0.9, seed=0)
    x, codes = src.sample(20000)
    x0, codes0 = plain.sample(20000)
    assert torch.equal(codes, codes0)
    assert x.mean(0).norm() < 0.05 * x0.mean(0).norm()
    assert torch.allclose(x, x0 - src.mean, atol=1e-5)
