import math

import pytest
import torch

from aen_mini.sae import make_sae
from aen_mini.eval.solve import kkt_residual, lipschitz_bound, solve_for_sae, solve_sparse_codes


def _orthonormal(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


def _problem(n=20, m=50, batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n, m, generator=g, dtype=torch.float64)
    return torch.randn(batch, n, generator=g, dtype=torch.float64), D / D.norm(dim=0)


def _objective(x, D, h, l1, l2, w):
    return 0.5 * (x - h @ D.T).pow(2).sum(1) + l1 * (h.abs() * w).sum(1) + l2 * h.pow(2).sum(1)


def test_orthonormal_dictionary_matches_closed_form():
    D = _orthonormal(8)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = torch.linspace(0.5, 1.5, 8, dtype=torch.float64)
    l1, l2 = 0.3, 0.2
    codes = solve_sparse_codes(x, D, l1, l2, weights=w, tol=1e-10)
    # With DᵀD = I the problem separates per coordinate: h = max(Dᵀx - l1 w, 0) / (1 + 2 l2).
    expected = (x @ D - l1 * w).clamp_min(0) / (1 + 2 * l2)
    assert codes.converged
    torch.testing.assert_close(codes.h, expected, atol=1e-9, rtol=0)
    assert (expected == 0).any() and (expected > 0).any()  # both KKT branches are exercised


def test_signed_codes_match_soft_threshold():
    D = _orthonormal(8, seed=2)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    codes = solve_sparse_codes(x, D, 0.4, 0.1, nonneg=False, tol=1e-10)
    z = x @ D
    expected = z.sign() * (z.abs() - 0.4).clamp_min(0) / 1.2
    torch.testing.assert_close(codes.h, expected, atol=1e-9, rtol=0)
    assert (codes.h < 0).any()


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_overcomplete_solution_satisfies_kkt_and_beats_perturbations(nonneg, l2):
    x, D = _problem()
    l1 = 0.1
    codes = solve_sparse_codes(x, D, l1, l2, nonneg=nonneg, tol=1e-7)
    assert codes.converged and codes.h.shape == (6, 50)
    assert (codes.kkt_residual < 1e-7).all()
    assert (kkt_residual(x, D, codes.h, l1, l2, nonneg=nonneg) < 1e-7).all()
    if nonneg:
        assert (codes.h >= 0).all()
    best = _objective(x, D, codes.h, l1, l2, 1.0)
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        other = codes.h + 1e-3 * torch.randn(codes.h.shape, generator=g, dtype=torch.float64)
        other = other.clamp_min(0) if nonneg else other
        assert (best <= _objective(x, D, other, l1, l2, 1.0) + 1e-12).all()


def test_weighted_l1_equals_unweighted_problem_on_rescaled_atoms():
    # sum_j w_j h_j with atoms d_j equals sum_j g_j with atoms d_j / w_j and g_j = w_j h_j.
    x, D = _problem(seed=5)
    w = torch.linspace(0.3, 3.0, 50, dtype=torch.float64)
    weighted = solve_sparse_codes(x, D, 0.2, weights=w, tol=1e-9)
    rescaled = solve_sparse_codes(x, D / w, 0.2, tol=1e-9)
    torch.testing.assert_close(weighted.h * w, rescaled.h, atol=1e-6, rtol=0)


def test_residual_is_positive_away_from_the_optimum():
    x, D = _problem()
    zero = torch.zeros(6, 50, dtype=torch.float64)
    # At h = 0 the KKT residual is max_j max(Dᵀx - l1, 0), by hand.
    expected = (x @ D - 0.1).clamp_min(0).amax(dim=1)
    torch.testing.assert_close(kkt_residual(x, D, zero, 0.1), expected)


def test_float32_input_returns_float32_codes():
    x, D = _problem()
    codes = solve_sparse_codes(x.float(), D.float(), 0.1)
    assert codes.h.dtype == torch.float32 and codes.converged


def test_max_iter_reports_non_convergence():
    x, D = _problem()
    codes = solve_sparse_codes(x, D, 0.01, max_iter=2)
    assert not codes.converged and codes.n_iter == 2 and (codes.kkt_residual >= 1e-6).any()


def test_warm_start_from_the_solution_stops_immediately():
    x, D = _problem()
    solved = solve_sparse_codes(x, D, 0.1)
    again = solve_sparse_codes(x, D, 0.1, h0=solved.h)
    assert again.n_iter == 0 and torch.equal(again.h, solved.h)


def test_large_l1_gives_zero_codes():
    x, D = _problem()
    lam = (x @ D).abs().max().item() + 1
    assert solve_sparse_codes(x, D, lam, nonneg=False).h.abs().max() == 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"l1": -0.1}, "l1"),
        ({"l2": -1.0}, "l2"),
        ({"weights": -torch.ones(50, dtype=torch.float64)}, "weights"),
        ({"weights": torch.ones(49, dtype=torch.float64)}, "weights"),
        ({"tol": 0.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    x, D = _problem()
    with pytest.raises(ValueError, match=name):
        solve_sparse_codes(x, D, **{"l1": 0.1, **kwargs})


def test_bad_data_raises():
    x, D = _problem()
    with pytest.raises(ValueError, match="x"):
        solve_sparse_codes(x[:, :5], D, 0.1)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        solve_sparse_codes(bad, D, 0.1)
    with pytest.raises(ValueError, match="D"):
        solve_sparse_codes(x, D[0], 0.1)


def test_lipschitz_bound_by_hand_and_against_the_code_map():
    D = _orthonormal(6)
    assert lipschitz_bound(D, 0.25) == pytest.approx(1 / 1.5)  # ||D|| = 1, lambda_min = 1
    x, Dover = _problem()
    assert lipschitz_bound(Dover, 0.0) == math.inf  # overcomplete: lambda_min(DᵀD) = 0
    l2 = 0.5
    bound = lipschitz_bound(Dover, l2)
    assert bound == pytest.approx(torch.linalg.matrix_norm(Dover, ord=2).item() / (2 * l2))
    delta = 1e-2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    h = solve_sparse_codes(x, Dover, 0.1, l2, tol=1e-10).h
    h_moved = solve_sparse_codes(x + delta, Dover, 0.1, l2, tol=1e-10).h
    assert ((h_moved - h).norm(dim=1) / delta.norm(dim=1)).max() <= bound


def _sae_objective(sae, x, h):
    """The SAE loss per sample, written out by hand from the AEN definition."""
    w = sae.l1_weights()
    return (x - sae.decode(h)).pow(2).sum(1) + sae.l1_coeff * (w * h).sum(1) + sae.l2_coeff * h.pow(2).sum(1)


def test_solve_for_sae_minimises_the_sae_loss():
    torch.manual_seed(0)
    sae = make_sae("aen", 8, 16, l1_coeff=0.2, l2_coeff=0.1).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.reweighting.ema.copy_(torch.rand(16, dtype=torch.float64) + 0.1)
    assert sae.l1_weights().std() > 0
    x = torch.randn(4, 8, dtype=torch.float64)
    codes = solve_for_sae(sae, x, tol=1e-10)
    assert codes.converged
    # First-order optimality of the SAE loss itself (autograd, no solver scaling involved).
    h = codes.h.clone().requires_grad_(True)
    _sae_objective(sae, x, h).sum().backward()
    grad = h.grad
    active = codes.h > 0
    assert grad[active].abs().max() < 1e-8
    assert grad[~active].min() > -1e-8
    # The unscaled coefficients give a different, worse, point for the SAE loss.
    wrong = solve_sparse_codes(x - sae.b_dec.detach(), sae.W_dec.detach(), 0.2, 0.1, sae.l1_weights()).h
    with torch.no_grad():
        assert (_sae_objective(sae, x, codes.h) < _sae_objective(sae, x, wrong)).all()
