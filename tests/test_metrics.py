import math

import pytest
import torch

from aen_mini.eval import metrics, recovery
from aen_mini.data.synthetic import SpikedSource
from aen_mini.sae import make_sae
from aen_mini.eval.solve import solve_sparse_codes

T = torch.tensor


def test_dead_fraction_from_codes_and_from_counts():
    assert metrics.dead_fraction(T([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]])) == pytest.approx(2 / 3)
    assert metrics.dead_fraction(T([0, 3, 1, 0])) == 0.5
    with pytest.raises(ValueError, match="h_or_counts"):
        metrics.dead_fraction(torch.zeros(2, 2, 2))


def test_l0_mse_by_hand():
    assert metrics.l0(T([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])) == 1.5
    # rows: ||(1, 2)||^2 = 5 and ||(0, 1)||^2 = 1
    assert metrics.mse(T([[1.0, 2.0], [0.0, 1.0]]), torch.zeros(2, 2)) == 3.0
    with pytest.raises(ValueError, match="same shape"):
        metrics.mse(torch.zeros(2, 2), torch.zeros(2, 3))


def test_explained_variance_of_perfect_mean_and_hand_example():
    x = T([[1.0, 0.0], [3.0, 2.0]])
    assert metrics.explained_variance(x, x) == 1.0
    assert metrics.explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0)
    # total variance: 4 * 1 = 4; error: rows off by (1, 0) -> 1 + 1 = 2  =>  EV = 1 - 2/4.
    assert metrics.explained_variance(x, x + T([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no variance"):
        metrics.explained_variance(torch.ones(3, 2), torch.ones(3, 2))


def test_shrinkage_ratio_by_hand_skips_zero_rows():
    x = T([[1.0, -2.0], [0.0, 0.0], [1.0, 1.0]])
    x_hat = T([[0.5, -1.0], [5.0, 5.0], [2.0, 0.0]])
    assert metrics.shrinkage_ratio(x, x_hat) == pytest.approx((0.5 + 1.0) / 2)


def test_usage_entropy_by_hand():
    h = T([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    assert metrics.usage_entropy(h) == pytest.approx(math.log(2))
    assert metrics.usage_entropy(h, normalise=True) == pytest.approx(0.5)
    assert metrics.usage_entropy(torch.eye(4), normalise=True) == pytest.approx(1.0)
    assert metrics.usage_entropy(torch.zeros(3, 4)) == 0.0


def test_mutual_coherence_by_hand():
    assert metrics.mutual_coherence(torch.eye(3)) == 0.0
    D = T([[1.0, 2.0, 0.0], [0.0, 2.0, -3.0]])  # columns e1, (e1 + e2) scaled, -e2 scaled
    assert metrics.mutual_coherence(D) == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ValueError, match="zero column"):
        metrics.mutual_coherence(T([[1.0, 0.0], [0.0, 0.0]]))


def test_active_gram_condition_by_hand():
    c = 1 / math.sqrt(2)
    D = T([[1.0, c, 0.0], [0.0, c, 1.0]])
    h = T([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # Row 0: orthogonal atoms, cond 1. Row 1: Gram [[1, c], [c, 1]], eigenvalues 1 +- c. Row 2 is skipped.
    expected = (1 + (1 + c) / (1 - c)) / 2
    assert metrics.active_gram_condition(D, h) == pytest.approx(expected)
    assert metrics.active_gram_condition(D, torch.ones(1, 3)) == math.inf  # |S| = 3 > n = 2
    assert math.isnan(metrics.active_gram_condition(D, torch.zeros(2, 3)))


def test_dictionary_recovery_of_a_permuted_copy():
    g = torch.Generator().manual_seed(0)
    D_true = torch.randn(10, 6, generator=g)
    perm = torch.randperm(6, generator=g)
    result = recovery.dictionary_recovery(D_true, 3.0 * D_true[:, perm])
    assert result["mean_cos"] == pytest.approx(1.0) and result["frac_above"] == 1.0
    assert torch.equal(perm[result["matching"]], torch.arange(6))


def test_dictionary_recovery_counts_sign_flips_and_missing_atoms():
    D_true = torch.eye(3)
    # Signed cosine, not |cos|: -e1 is no match for e1, so e1 takes the orthogonal e3 (cos 0 beats -1).
    flipped = recovery.dictionary_recovery(D_true[:, :2], -D_true * T([1.0, -1.0, -1.0]))
    assert flipped["matching"].tolist() == [2, 1]
    assert flipped["mean_cos"] == pytest.approx(0.5) and flipped["frac_above"] == 0.5
    fewer = recovery.dictionary_recovery(D_true, T([[0.0], [1.0], [0.0]]))
    assert fewer["matching"].tolist() == [-1, 0, -1] and fewer["mean_cos"] == pytest.approx(1 / 3)


def test_support_scores_and_code_mse_by_hand():
    codes_true = T([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    # true atom j is learned latent matching[j]; latent 3 is matched to no true atom.
    matching = T([2, 0, 1])
    h = T([[0.0, 2.0, 1.0, 0.5], [1.0, 0.0, 0.0, 0.0]])
    # In the true basis h is [[1, 0, 2], [0, 1, 0]]: 3 hits; predicted 3 + 1 (latent 3); actual 3.
    scores = metrics.support_scores(codes_true, h, matching)
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == 1.0
    assert scores["f1"] == pytest.approx(2 * 0.75 / 1.75)
    # Errors: row 0 -> 0.5^2 on the unmatched latent; row 1 -> (3 - 1)^2.
    assert metrics.code_mse(codes_true, h, matching) == pytest.approx((0.25 + 4.0) / 2)
    with pytest.raises(ValueError, match="matching"):
        metrics.support_scores(codes_true, h, T([0, 1]))


def test_lipschitz_estimate_of_linear_map_and_relu():
    A = T([[2.0, 1.0], [0.0, 0.5]], dtype=torch.float64)
    norm = torch.linalg.matrix_norm(A, ord=2).item()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    linear = metrics.lipschitz_estimate(lambda v: v @ A.T, x, n_perturb=16)
    assert 0.5 * norm <= linear["max"] <= norm + 1e-9
    assert linear["median"] <= linear["max"]
    relu = metrics.lipschitz_estimate(torch.relu, torch.randn(8, 5, dtype=torch.float64), n_perturb=16)
    assert relu["max"] <= 1 + 1e-9


def _oracle_aen(D, l1_coeff, l2_coeff, exact_encoder):
    """AEN-SAE whose decoder is the orthonormal D and, if exact_encoder, whose encoder is the exact code map.

    For DᵀD = I the solver's problem with (l1/2, l2/2) has h = max(Dᵀx - l1/2, 0) / (1 + l2) (weights 1).
    """
    sae = make_sae("aen", D.shape[0], D.shape[1], l1_coeff=l1_coeff, l2_coeff=l2_coeff)
    scale = 1 + l2_coeff if exact_encoder else 1.0
    shift = l1_coeff / 2 if exact_encoder else 0.0
    with torch.no_grad():
        sae.W_dec.copy_(D)
        sae.W_enc.copy_(D.T / scale)
        sae.b_enc.fill_(-shift / scale)
    return sae


def _orthonormal(n):
    return torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(1)))[0]


def test_amortisation_gap_is_zero_for_the_exact_encoder_and_positive_otherwise():
    D = _orthonormal(8)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    exact = metrics.amortisation_gap(_oracle_aen(D, 0.4, 0.3, True), x)
    assert exact["solver_converged"] == 1.0
    assert abs(exact["gap"]) < 1e-5 and exact["code_distance"] < 1e-5
    naive = metrics.amortisation_gap(_oracle_aen(D, 0.4, 0.3, False), x)
    assert naive["gap"] > 0.01 and naive["relative_gap"] > 0 and naive["code_distance"] > 0.1


def test_evaluate_on_ground_truth_sae_is_perfect():
    D = torch.eye(8)[torch.randperm(8, generator=torch.Generator().manual_seed(4))]  # exact in float32
    g = torch.Generator().manual_seed(3)
    codes = torch.rand(32, 8, generator=g) * (torch.rand(32, 8, generator=g) < 0.3)
    report = metrics.evaluate(_oracle_aen(D, 0.0, 0.0, False), codes @ D.T, codes_true=codes, D_true=D)
    assert report["ev"] == pytest.approx(1.0, abs=1e-5) and report["mse"] < 1e-10
    assert report["recovery_mean_cos"] == pytest.approx(1.0) and report["recovery_frac_above"] == 1.0
    assert report["support_f1"] == pytest.approx(1.0) and report["code_mse"] < 1e-10
    assert report["l0"] == pytest.approx((codes != 0).sum(1).float().mean().item())
    assert report["dead_pct"] == pytest.approx(100 * metrics.dead_fraction(codes))
    assert report["shrinkage"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="D_true"):
        metrics.evaluate(_oracle_aen(D, 0.0, 0.0, False), codes @ D.T, codes_true=codes)


def test_exact_codes_on_spiked_data_recover_supports_and_coherence_grows_with_rho():
    incoherent, coherent = (SpikedSource(n=64, m=128, k=4, rho=rho) for rho in (0.0, 0.5))
    x, codes = incoherent.sample(64, seed=0)
    h = solve_sparse_codes(x, incoherent.dictionary, 0.05, tol=1e-5).h
    identity = torch.arange(128)
    assert metrics.support_scores(codes, h, identity)["f1"] == 1.0
    # Lasso bias is l1 per active coordinate (DᵀD ≈ I): about k * 0.05^2 = 0.01, far below ||c||^2 ≈ 4 * 4.3.
    assert metrics.code_mse(codes, h, identity) < 0.03
    assert metrics.mutual_coherence(coherent.dictionary) > metrics.mutual_coherence(incoherent.dictionary)
    assert metrics.active_gram_condition(coherent.dictionary, codes) > 2 * metrics.active_gram_condition(
        incoherent.dictionary, codes
    )
