import json

import pytest
import torch

from aen_mini.data.synthetic import SpikedSource, spiked_dictionary


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.7])
def test_dictionary_has_unit_columns_and_mean_cosine_rho(rho):
    D = spiked_dictionary(n=4096, m=48, rho=rho, seed=1, dtype=torch.float64)
    assert D.shape == (4096, 48) and D.dtype == torch.float64
    torch.testing.assert_close(D.norm(dim=0), torch.ones(48, dtype=torch.float64))
    # Hand computation: u_i.u_j, u_i.v = O(1/sqrt(n)), so cos(d_i, d_j) = (1 - rho) u_i.u_j + rho + ... -> rho.
    cos = D.T @ D
    off_diagonal = cos[~torch.eye(48, dtype=torch.bool)]
    assert abs(off_diagonal.mean().item() - rho) < 0.01
    assert off_diagonal.std().item() < 0.03


def test_dictionary_is_deterministic_in_seed():
    assert torch.equal(spiked_dictionary(16, 8, 0.2, seed=3), spiked_dictionary(16, 8, 0.2, seed=3))
    assert not torch.equal(spiked_dictionary(16, 8, 0.2, seed=3), spiked_dictionary(16, 8, 0.2, seed=4))


def test_codes_are_exactly_k_sparse_with_magnitudes_in_range():
    src = SpikedSource(n=32, m=64, k=5, rho=0.2, magnitude=(1.0, 3.0))
    x, codes = src.sample(500, seed=0)
    assert x.shape == (500, 32) and codes.shape == (500, 64)
    assert x.dtype == codes.dtype == torch.float32 and src.d_in == 32
    assert ((codes != 0).sum(dim=1) == 5).all()
    active = codes[codes != 0]
    assert active.min() >= 1.0 and active.max() <= 3.0
    assert abs(active.mean().item() - 2.0) < 0.05  # U[1, 3] has mean 2
    torch.testing.assert_close(x, codes @ src.dictionary.T)


def test_supports_are_uniform_over_atoms():
    src = SpikedSource(n=8, m=32, k=4)
    _, codes = src.sample(4000, seed=1)
    counts = (codes != 0).sum(dim=0).float()
    # Each atom is active with probability k/m = 1/8: expected 500 per atom, std about 21.
    assert (counts - 500).abs().max() < 110


def test_noise_is_added_with_the_requested_std():
    src = SpikedSource(n=64, m=128, k=4, noise_std=0.5, seed=2)
    x, codes = src.sample(400, seed=0)
    residual = x - codes @ src.dictionary.T
    assert abs(residual.std().item() - 0.5) < 0.02


def test_sample_is_deterministic_in_seed():
    src = SpikedSource(n=16, m=32, k=3)
    x1, c1 = src.sample(10, seed=5)
    x2, c2 = src.sample(10, seed=5)
    x3, _ = src.sample(10, seed=6)
    assert torch.equal(x1, x2) and torch.equal(c1, c2) and not torch.equal(x1, x3)


def test_stream_is_seekable_through_state_dict():
    uninterrupted = SpikedSource(n=16, m=32, k=3, seed=7)
    batches = [uninterrupted.next_batch(8) for _ in range(4)]
    assert not torch.equal(batches[0], batches[1])

    first = SpikedSource(n=16, m=32, k=3, seed=7)
    for _ in range(2):
        first.next_batch(8)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["batches_drawn"] == 2

    resumed = SpikedSource(n=16, m=32, k=3, seed=7)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch(8), batches[2])
    assert torch.equal(resumed.next_batch(8), batches[3])


def test_load_state_dict_rejects_another_configuration():
    state = SpikedSource(n=16, m=32, k=3, seed=7).state_dict()
    with pytest.raises(ValueError, match="different source"):
        SpikedSource(n=16, m=32, k=3, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="batches_drawn"):
        SpikedSource(n=16, m=32, k=3, seed=7).load_state_dict({})


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rho": 1.0}, "rho"),
        ({"rho": -0.1}, "rho"),
        ({"k": 0}, "k"),
        ({"k": 33, "m": 32}, "k"),
        ({"n": 0}, "n"),
        ({"magnitude": (3.0, 1.0)}, "magnitude"),
        ({"magnitude": (0.0, 1.0)}, "magnitude"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpikedSource(**{"n": 8, "m": 32, "k": 2, **kwargs})


def test_bad_batch_size_raises():
    with pytest.raises(ValueError, match="batch_size"):
        SpikedSource(n=8, m=16, k=2).next_batch(0)
