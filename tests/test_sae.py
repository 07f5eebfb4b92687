"""Each variant's loss against a hand computation, the adaptive rule against NumPy, and the invariants."""
import math

import numpy as np
import pytest
import torch

from aen_mini.sae import VARIANTS, make_sae, sae_from_config


def tiny(variant, **hp):
    """A 2-in, 3-latent SAE with hand-picked weights."""
    sae = make_sae(variant, 2, 3, **hp)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, -1.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
    return sae


X = torch.tensor([[1.5, 2.0], [0.5, -1.0]])
# pre = W_enc (x - b_dec) + b_enc:  row 0: x-b=(1,2) -> (1, 1.5, 2);  row 1: x-b=(0,-1) -> (0, -1.5, -2)
H = torch.tensor([[1.0, 1.5, 2.0], [0.0, 0.0, 0.0]])
# x_hat = W_dec h + b_dec: row 0 = (1 + 1.2 + 0.5, 1.5 + 1.6) = (2.7, 3.1); row 1 = (0.5, 0)
MSE = ((1.5 - 2.7) ** 2 + (2.0 - 3.1) ** 2 + 0 + 1.0) / 2  # = (1.44 + 1.21 + 1) / 2


def test_encode_decode_by_hand():
    sae = tiny("relu_l1")
    x_hat, h = sae(X)
    assert torch.allclose(h, H)
    assert torch.allclose(x_hat, torch.tensor([[2.7, 3.1], [0.5, 0.0]]))


def test_relu_l1_loss_by_hand():
    terms = tiny("relu_l1", l1_coeff=0.1).loss(X)
    assert terms["mse"].item() == pytest.approx(MSE)
    assert terms["l1"].item() == pytest.approx(0.1 * 4.5 / 2)
    assert terms["loss"].item() == pytest.approx(MSE + 0.225)


def test_elastic_net_loss_by_hand():
    terms = tiny("elastic_net", l1_coeff=0.1, l2_coeff=0.2).loss(X)
    assert terms["l2"].item() == pytest.approx(0.2 * (1 + 2.25 + 4) / 2)
    assert terms["loss"].item() == pytest.approx(MSE + 0.225 + 0.725)


def test_adaptive_lasso_and_aen_loss_by_hand():
    # EMA of mean|h| set by hand; ref_pct 0.34 of 3 latents -> top ceil(1.02) = 2 latents
    for variant, l2 in (("adaptive_lasso", None), ("aen", 0.2)):
        hp = dict(l1_coeff=0.1, gamma=2.0, ref_pct=0.34)
        if l2 is not None:
            hp["l2_coeff"] = l2
        sae = tiny(variant, **hp)
        sae.reweighting.ema.copy_(torch.tensor([2.0, 1.0, 0.5]))
        ref = (2.0 + 1.0) / 2
        w = np.clip((ref / np.array([2.0, 1.0, 0.5])) ** 2, 0.01, 10)  # (0.5625, 2.25, 9)
        terms = sae.loss(X)
        assert terms["l1"].item() == pytest.approx(0.1 * float(w @ np.array([1.0, 1.5, 2.0])) / 2, rel=1e-6)
        if l2 is not None:
            assert terms["l2"].item() == pytest.approx(0.2 * 7.25 / 2)


def test_topk_keeps_k_largest_and_auxk_by_hand():
    sae = tiny("topk", k=1, aux_k=1, aux_coeff=0.5, dead_after_tokens=1)
    h = sae.encode(X)
    assert torch.allclose(h, torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    terms = sae.loss(X)
    assert "aux" in terms and terms["aux"].item() == 0.0  # nothing is dead yet
    sae.tokens_since_fired.copy_(torch.tensor([5, 0, 0]))  # latent 0 dead
    terms = sae.loss(X)
    # residual e = x - x_hat; x_hat row0 = 2*(0.6,0.8)+(0.5,0) = (1.7,1.6) -> e0 = (-0.2, 0.4); row1 e1 = (0, -1)
    # aux codes: latent 0 alone, pre = (1, 0) -> relu -> (1, 0): e_hat0 = (1, 0), e_hat1 = 0
    aux = ((-0.2 - 1.0) ** 2 + 0.4 ** 2 + 0 + 1.0) / 2
    assert terms["aux"].item() == pytest.approx(0.5 * aux)


def test_batch_topk_keeps_k_times_batch_over_the_batch():
    sae = tiny("batch_topk", k=2)
    h = sae.activation(torch.tensor([[3.0, 2.0, 1.0], [0.5, 4.0, 0.1]]))
    assert torch.equal(h > 0, torch.tensor([[True, True, False], [False, True, False]]) | torch.tensor([[False, False, True], [False, False, False]]))
    assert int((h > 0).sum()) == 4


def test_k_larger_than_latents_is_rejected():
    with pytest.raises(ValueError, match="k=5 must not exceed"):
        make_sae("topk", 4, 3, k=5)


@pytest.mark.parametrize("bad", [{"l1_coeff": -1.0}, {"l1_coeff": float("nan")}, {"l2_coeff": -0.1}])
def test_negative_or_nan_lambdas_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_sae("aen", 4, 8, **bad)


def test_unknown_variant_and_hyperparameter_are_named():
    with pytest.raises(ValueError, match="unknown SAE variant 'gated'.*aen"):
        make_sae("gated", 4, 8)
    with pytest.raises(ValueError, match=r"no hyperparameter\(s\) \['k'\]"):
        make_sae("aen", 4, 8, k=3)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_decoder_columns_unit_norm_after_step_and_config_round_trip(variant):
    sae = make_sae(variant, 6, 12, seed=3, **({"k": 4} if "topk" in variant else {}))
    opt = torch.optim.SGD(sae.parameters(), lr=0.5)
    sae.loss(torch.randn(16, 6) * 3)["loss"].backward()
    opt.step()
    sae.after_step()
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(12), atol=1e-6)
    clone = sae_from_config(sae.config())
    assert type(clone) is type(sae) and clone.config() == sae.config()


@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 3, 4)])
def test_wrong_activation_shape_is_named(shape):
    with pytest.raises(ValueError, match="d_in|2-D"):
        make_sae("relu_l1", 4, 8).loss(torch.randn(*shape))


def test_integer_activations_are_rejected():
    with pytest.raises(TypeError, match="floating dtype"):
        make_sae("relu_l1", 4, 8).loss(torch.ones(2, 4, dtype=torch.long))


def test_dead_counter_counts_tokens_since_last_firing():
    sae = make_sae("relu_l1", 2, 3, dead_after_tokens=4)
    for codes, expected in [([[1.0, 0, 0], [0, 0, 0]], [0, 2, 2]), ([[0, 0, 0], [0, 0, 2.0]], [2, 4, 0])]:
        sae.after_step(torch.tensor(codes))
        assert sae.tokens_since_fired.tolist() == expected
    assert sae.dead_mask().tolist() == [False, True, False]


def numpy_adaptive_weights(history, d, beta, ref_pct, gamma, start, length):
    """Independent reimplementation of the rule in DEVELOPERS.md, step by step."""
    a = np.ones(d)
    out = []
    for t, batch_codes in enumerate(history):
        top = np.sort(a)[::-1][: max(1, math.ceil(ref_pct * d))]
        w = np.clip((top.mean() / np.maximum(a, 1e-5)) ** gamma, 0.01, 10)
        r = 0.0 if t < start else (1.0 if length == 0 else min(1.0, (t - start) / length))
        out.append(1 + (w - 1) * r)
        a = beta * a + (1 - beta) * np.abs(batch_codes).mean(0)
    return np.array(out)


@pytest.mark.parametrize("start,length", [(0, 0), (3, 0), (2, 5)])
def test_adaptive_weights_and_warmup_match_numpy(start, length):
    d, beta, ref_pct, gamma = 20, 0.9, 0.1, 1.5
    sae = make_sae("aen", 4, d, ema_beta=beta, ref_pct=ref_pct, gamma=gamma, warmup_start=start, warmup_steps=length)
    rng = np.random.default_rng(0)
    history = [np.maximum(rng.normal(size=(8, d)) * rng.uniform(0, 3, size=d), 0) for _ in range(12)]
    expected = numpy_adaptive_weights(history, d, beta, ref_pct, gamma, start, length)
    for t, codes in enumerate(history):
        assert np.allclose(sae.l1_weights().numpy(), expected[t], rtol=1e-5), f"step {t}"
        sae.after_step(torch.tensor(codes, dtype=torch.float32))
    # the rule really reweights: the weights span both sides of 1 once warm-up is over
    assert expected[-1].min() < 1 < expected[-1].max()


def test_adaptive_weights_are_clipped():
    sae = make_sae("aen", 4, 100, gamma=3.0)
    sae.reweighting.ema.copy_(torch.cat([torch.full((50,), 100.0), torch.zeros(50)]))
    w = sae.l1_weights()
    assert w.max().item() == pytest.approx(10.0) and w.min().item() >= 0.01
