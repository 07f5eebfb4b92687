"""Spliced evaluation: identities that must hold exactly, and the clean loss against a direct computation."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aen_mini.data.activations import ActivationNormalizer
from aen_mini.data.text import TokenBatch, model_tokens
from aen_mini.lm.models import load_model
from conftest import tiny_neox
from aen_mini.eval.splice import spliced_metrics

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores

HOOK = "blocks.1.hook_resid_post"


class IdentitySAE(nn.Module):
    """Reconstructs its input exactly."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # gives the stand-in a dtype

    def encode(self, x):
        return x

    def decode(self, h):
        return h

    def forward(self, x):
        return self.decode(self.encode(x)), x


class ConstantSAE(IdentitySAE):
    """Reconstructs every input as the same vector (0: zero ablation; the mean: mean ablation)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return self.value.to(x).expand_as(x), x


@pytest.fixture(scope="module")
def neox():
    return tiny_neox(layers=3, width=32)


@pytest.fixture(scope="module")
def tokens(neox):
    return model_tokens(neox, "stdlib", ctx_len=16, max_contexts=6, max_chars=20_000)


@pytest.mark.parametrize("normalize", [False, True])
def test_identity_sae_recovers_everything(neox, tokens, normalize):
    normalizer = ActivationNormalizer(neox.d_model) if normalize else None
    m = spliced_metrics(neox, IdentitySAE(), tokens, HOOK, normalizer=normalizer, batch_size=4)
    assert m["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_recovered_mean"] == pytest.approx(1.0, abs=1e-5)
    assert abs(m["kl_sae"]) < 1e-6 and m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-6)
    assert m["kl_zero"] > 1e-4  # the ablation does change the model, so the ratio means something


def test_ablation_sae_recovers_nothing(neox, tokens):
    zero = spliced_metrics(neox, ConstantSAE(torch.zeros(neox.d_model)), tokens, HOOK, batch_size=4)
    assert zero["ce_recovered_zero"] == pytest.approx(0.0, abs=1e-6)
    mean = torch.randn(neox.d_model)
    m = spliced_metrics(neox, ConstantSAE(mean), tokens, HOOK, mean_activation=mean, batch_size=4)
    assert m["ce_recovered_mean"] == pytest.approx(0.0, abs=1e-6) and m["kl_sae"] == pytest.approx(m["kl_mean"])
    # with normalisation on, a zero reconstruction in normalised space is still the zero ablation
    normed = spliced_metrics(neox, ConstantSAE(torch.zeros(neox.d_model)), tokens, HOOK,
                             normalizer=ActivationNormalizer(neox.d_model), batch_size=4)
    assert normed["ce_recovered_zero"] == pytest.approx(0.0, abs=1e-6)


def test_clean_loss_is_next_token_cross_entropy(neox, tokens):
    m = spliced_metrics(neox, IdentitySAE(), tokens, HOOK, batch_size=4)
    with torch.no_grad():
        logits = neox.run_with_hooks(tokens.tokens, tokens.attention_mask)
    targets = tokens.tokens[:, 1:].masked_fill(~tokens.attention_mask[:, 1:], -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    assert m["ce_clean"] == pytest.approx(float(expected), rel=1e-5)
    assert m["n_positions"] == int(tokens.attention_mask[:, 1:].sum())


def test_encoder_metric_is_the_pooled_embedding_change():
    minilm = load_model("minilm-l6")
    toks = model_tokens(minilm, ["The cat sat on the mat.", "A parser reads a stream of tokens."], ctx_len=10)
    same = spliced_metrics(minilm, IdentitySAE(), toks, "blocks.2.hook_resid_post", normalizer=ActivationNormalizer(384))
    assert same["cos_dist_sae"] < 1e-6 and same["embedding_recovered_zero"] == pytest.approx(1.0, abs=1e-5)
    gone = spliced_metrics(minilm, ConstantSAE(torch.zeros(384)), toks, "blocks.2.hook_resid_post")
    assert gone["embedding_recovered_zero"] == pytest.approx(0.0, abs=1e-6) and gone["cos_dist_sae"] > 0.01
    assert gone["mse_sae"] == pytest.approx(2 * gone["cos_dist_sae"], rel=1e-4)  # unit vectors: |a-b|^2 = 2(1-cos)


def test_empty_mask_is_an_error(neox, tokens):
    empty = TokenBatch(tokens.tokens[:2], torch.zeros_like(tokens.mask[:2]), tokens.attention_mask[:2])
    with pytest.raises(ValueError, match="no positions"):
        spliced_metrics(neox, IdentitySAE(), empty, HOOK)


def test_without_baselines_only_the_sae_splice_is_computed():
    from conftest import tiny_neox

    from aen_mini.sae import make_sae

    model = tiny_neox(2, 32)
    tokens = torch.randint(0, 4000, (2, 9))
    sae = make_sae("relu_l1", 32, 64, seed=0)
    full = spliced_metrics(model, sae, tokens, "blocks.1.hook_resid_post")
    alone = spliced_metrics(model, sae, tokens, "blocks.1.hook_resid_post", baselines=False)
    assert set(alone) == {"ce_clean", "ce_sae", "kl_sae", "n_positions"}
    for key in alone:
        assert alone[key] == pytest.approx(full[key])
