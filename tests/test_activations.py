"""Harvesting, normalisation and the LM activation source, on tiny offline models."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from aen_mini.data.activations import ActivationNormalizer, LMActivationSource, harvest
from aen_mini.data.source import ActivationSource
from aen_mini.data.text import model_tokens
from aen_mini.lm.models import load_model
from conftest import tiny_neox

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def neox():
    return tiny_neox(layers=2, width=32)


@pytest.fixture(scope="module")
def tokens(neox):
    return model_tokens(neox, "stdlib", ctx_len=16, max_contexts=13, max_chars=20_000)


@pytest.fixture(scope="module")
def llama():
    return load_model("llama-3.1-8b-shaped", dtype=torch.float32, config_overrides={
        "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096})


def test_harvest_drops_masked_positions_and_is_deterministic(neox, tokens):
    x = harvest(neox, tokens, HOOK, batch_size=5)
    assert x.shape == (int(tokens.mask.sum()), 32) and x.dtype == torch.float32
    assert torch.equal(x, harvest(neox, tokens, HOOK, batch_size=5))
    assert torch.allclose(x, harvest(neox, tokens, HOOK, batch_size=13), atol=1e-5)
    # the first row is position 1 of context 0 (position 0 is BOS): same as the full activation there
    captured = []
    with torch.no_grad():
        neox.run_with_hooks(tokens.tokens[:1], hooks=[(HOOK, captured.append)])
    assert torch.equal(x[0], captured[0][0, 1])


def test_harvest_stops_after_the_hooked_block(neox, tokens):
    calls = []
    handle = neox.bridge.blocks[1].register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        harvest(neox, tokens[:2], HOOK)
        assert calls == []
        harvest(neox, tokens[:2], "blocks.1.hook_resid_post")
        assert calls == [1]
    finally:
        handle.remove()


def test_harvest_llama_and_minilm_shapes(llama):
    llama_tokens = model_tokens(llama, ["def f(x):\n    return x + 1\n"] * 3, ctx_len=8)
    assert harvest(llama, llama_tokens, "blocks.1.hook_resid_mid").shape == (int(llama_tokens.mask.sum()), 32)
    minilm = load_model("minilm-l6")
    enc_tokens = model_tokens(minilm, ["A cat sat on the mat.", "Parsers read tokens."], ctx_len=12)
    assert harvest(minilm, enc_tokens, "blocks.3.hook_resid_post").shape == (int(enc_tokens.mask.sum()), 384)


def test_normalizer_round_trip():
    x = torch.randn(50, 16) * torch.logspace(-3, 3, 50).unsqueeze(1)
    norm = ActivationNormalizer(16)
    x_n, scale = norm.normalize(x)
    assert torch.allclose(x_n.norm(dim=1), torch.full((50,), 4.0), rtol=1e-5)
    assert torch.allclose(norm.denormalize(x_n, scale), x, rtol=1e-5, atol=0)
    zero_n, zero_scale = norm.normalize(torch.zeros(1, 16))
    assert torch.equal(norm.denormalize(zero_n, zero_scale), torch.zeros(1, 16))
    with pytest.raises(ValueError, match="d=16"):
        norm.normalize(torch.zeros(2, 8))


def test_source_serves_every_activation_once_per_pass(neox, tokens):
    src = LMActivationSource(neox, tokens, HOOK, buffer_rows=60, contexts_per_chunk=3, normalize=False)
    assert isinstance(src, ActivationSource) and src.d_in == 32
    total = int(tokens.mask.sum())
    served = torch.cat([src.next_batch(17) for _ in range(total // 17)] + [src.next_batch(total % 17)])
    assert src.state_dict()["pass"] == 0
    reference = harvest(neox, tokens, HOOK, batch_size=3)  # same 3-context forward passes as the chunks
    distances = torch.cdist(served, reference, compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros
    assert torch.equal(distances.argmin(1).sort().values, torch.arange(total))  # a permutation of the harvest
    assert float(distances.min(1).values.max()) == 0.0
    src.next_batch(1)
    assert src.state_dict()["pass"] == 1


def test_source_resume_gives_the_same_batches(neox, tokens):
    def fresh():
        return LMActivationSource(neox, tokens, HOOK, buffer_rows=50, contexts_per_chunk=2, seed=4)

    src = fresh()
    for _ in range(7):
        src.next_batch(23)
    state = json.loads(json.dumps(src.state_dict()))
    expected = [src.next_batch(23) for _ in range(12)]  # crosses into the next pass
    resumed = fresh()
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [resumed.next_batch(23) for _ in range(12)]))
    assert resumed.state_dict() == src.state_dict()
    # normalised: every served row has norm sqrt(d)
    assert torch.allclose(expected[0].norm(dim=1), torch.full((23,), 32 ** 0.5), rtol=1e-5)
