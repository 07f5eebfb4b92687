"""Feature inspection and the activation cache, checked against a hand-built SAE whose latents are known."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from aen_mini.data.activations import harvest
from aen_mini.data.cache import CachedActivationSource, cache_activations
from aen_mini.data.source import ActivationSource
from aen_mini.data.text import model_tokens
from aen_mini.eval.features import activation_histogram, density_histogram, feature_stats, top_contexts_html
from conftest import tiny_neox

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores

HOOK = "blocks.0.hook_resid_post"


class CoordinateSAE(nn.Module):
    """Latent j = ReLU(x_j): firing and top activations are readable straight off the activations."""

    def __init__(self, d):
        super().__init__()
        self.W_dec = nn.Parameter(torch.eye(d))

    def encode(self, x):
        return torch.relu(x)

    def decode(self, h):
        return h

    def forward(self, x):
        return x, self.encode(x)


@pytest.fixture(scope="module")
def neox():
    return tiny_neox(layers=1, width=16)


@pytest.fixture(scope="module")
def tokens(neox):
    return model_tokens(neox, "stdlib", ctx_len=12, max_contexts=9, max_chars=10_000)


def test_stats_match_a_direct_computation(neox, tokens):
    stats = feature_stats(neox, CoordinateSAE(16), tokens, HOOK, top_k=3, batch_size=4)
    x = harvest(neox, tokens, HOOK, batch_size=4)
    assert stats.n_tokens == x.shape[0]
    assert torch.equal(stats.fire_counts, (x > 0).sum(0))
    assert torch.allclose(stats.top_values, x.relu().T.topk(3, dim=1).values)
    # the recorded (context, position) of latent 5's top activation holds that value
    c, p = int(stats.top_context[5, 0]), int(stats.top_position[5, 0])
    captured = []
    with torch.no_grad():
        neox.run_with_hooks(tokens.tokens[c:c + 1], hooks=[(HOOK, captured.append)])
    assert float(captured[0][0, p, 5]) == pytest.approx(float(stats.top_values[5, 0]), rel=1e-5)
    hist = density_histogram(stats, bins=10)
    assert sum(hist["counts"]) + hist["dead"] == 16
    page = top_contexts_html(neox, CoordinateSAE(16), stats, tokens, HOOK, latent=5)
    assert page.count("<tr>") == 3 and "outline" in page
    act = activation_histogram(neox, CoordinateSAE(16), tokens, HOOK, latent=5, bins=5)
    assert act["n_nonzero"] == int(stats.fire_counts[5]) == sum(act["counts"])


def test_cache_round_trip_and_resume(neox, tokens, tmp_path):
    manifest = cache_activations(neox, tokens, HOOK, tmp_path / "cache", shard_rows=25, batch_size=4, normalize=False)
    info = json.loads(manifest.read_text())
    x = harvest(neox, tokens, HOOK, batch_size=4)
    assert info["n_rows"] == x.shape[0] and [s["rows"] for s in info["shards"]][:-1] == [25] * (len(info["shards"]) - 1)
    src = CachedActivationSource(tmp_path / "cache", seed=2)
    assert isinstance(src, ActivationSource) and src.d_in == 16
    epoch = src.next_batch(x.shape[0])
    assert torch.equal(epoch[epoch[:, 0].argsort()], x[x[:, 0].argsort()])  # every row once per epoch
    src.next_batch(7)
    state = src.state_dict()
    expected = src.next_batch(40)
    again = CachedActivationSource(tmp_path / "cache", seed=2)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch(40), expected)
    with pytest.raises(ValueError, match="already holds"):
        cache_activations(neox, tokens, HOOK, tmp_path / "cache")


def test_dead_pct_by_window_counts_latents_not_yet_fired():
    from aen_mini.eval.features import dead_pct_by_window

    first = torch.tensor([0, 5, 99, 100])  # the last latent never fired in 100 tokens
    assert dead_pct_by_window(first, [1, 6, 100], n_rows=100) == [75.0, 50.0, 25.0]
    with pytest.raises(ValueError, match="window"):
        dead_pct_by_window(first, [0], n_rows=100)
    with pytest.raises(ValueError, match="longer than the 100 rows"):
        dead_pct_by_window(first, [1000], n_rows=100)


def test_first_fire_index_matches_a_direct_scan():
    from aen_mini.eval.features import first_fire_index
    from aen_mini.sae import make_sae

    sae = make_sae("relu_l1", 8, 16, seed=0)
    x = torch.randn(50, 8)
    fires = sae.encode(x) > 0
    expected = torch.tensor([int(fires[:, j].nonzero()[0]) if fires[:, j].any() else 50 for j in range(16)])
    assert torch.equal(first_fire_index(sae, x, chunk=7), expected)  # chunks that do not divide the rows


def test_dataset_normalizer_uses_one_scale_and_round_trips():
    from aen_mini.data.activations import DatasetNormalizer

    x = torch.tensor([[3.0, 4.0], [0.0, 10.0]])  # norms 5 and 10
    norm = DatasetNormalizer.fit(x)
    assert norm.scale == pytest.approx(7.5 / 2 ** 0.5)
    x_n, scale = norm.normalize(x)
    assert torch.allclose(x_n.norm(dim=1).mean(), torch.tensor(2 ** 0.5))  # mean norm sqrt(d), not each row's
    assert torch.allclose(x_n[1].norm() / x_n[0].norm(), torch.tensor(2.0))  # the ratio of norms survives
    assert torch.allclose(norm.denormalize(x_n, scale), x)
    with pytest.raises(ValueError, match="scale must be > 0"):
        DatasetNormalizer(2, 0.0)
