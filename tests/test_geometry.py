"""Activation regions and code paths against closed forms, and the continuity claims of chapter 2."""
from __future__ import annotations

import math

import pytest
import torch

from aen_mini.book.geometry import (activation_regions, active_set_lipschitz, adaptive_weights, code_path,
                               lipschitz_sweep, unit_atoms)
from aen_mini.eval.solve import lipschitz_bound


def test_regions_on_an_orthonormal_dictionary_are_the_closed_form_active_sets() -> None:
    # A rotated orthonormal basis: h_j* = max(d_j^T x - l1, 0) / (1 + 2 l2), active iff d_j^T x > l1.
    D = unit_atoms([30, 120])
    l1, l2 = 0.4, 0.25
    regions = activation_regions(D, l1, l2, extent=2.0, resolution=41)
    grid_y, grid_x = torch.meshgrid(regions.ys, regions.xs, indexing="ij")
    correlations = torch.stack([grid_x, grid_y], dim=-1) @ D
    expected_codes = (correlations - l1).clamp_min(0) / (1 + 2 * l2)
    assert torch.allclose(regions.codes, expected_codes, atol=1e-8)
    # Points within the solver's tolerance of a boundary may go either way; everywhere else labels are exact.
    clear = ((correlations - l1).abs() > 1e-6).all(dim=-1)
    expected_labels = (correlations > l1).long() @ torch.tensor([1, 2])
    assert torch.equal(regions.labels[clear], expected_labels[clear])
    assert regions.active_sets().tolist() == [[False, False], [True, False], [False, True], [True, True]]


def test_elastic_net_path_is_continuous_and_under_the_bound() -> None:
    D = unit_atoms([89.5, 90.5, 0.0])  # two nearly parallel atoms
    bound = lipschitz_bound(D, 0.1)
    jumps = []
    for n_points in (51, 201, 801):
        path = code_path(D, [-0.5, 1.0], [0.5, 1.0], l1=0.1, l2=0.1, n_points=n_points)
        step = 1.0 / (n_points - 1)
        assert path.max_jump() <= bound * step + 1e-9
        jumps.append(path.max_jump())
    # Lipschitz: the largest step shrinks in proportion to the spacing (4x finer -> 4x smaller).
    assert jumps[1] == pytest.approx(jumps[0] / 4, rel=0.05)
    assert jumps[2] == pytest.approx(jumps[1] / 4, rel=0.05)


def test_lasso_slope_is_one_over_smin_and_blows_up_as_atoms_align() -> None:
    # The lasso map with atoms in general position is continuous (its jumps also vanish under refinement)
    # but its slope across the two-atom region is 1 / s_min(D_S), which grows like sqrt(2) / angle.
    slopes = []
    for angle in (4.0, 1.0):
        D = unit_atoms([90 - angle / 2, 90 + angle / 2, 0.0])
        # A short segment through the narrow two-atom region, finely sampled.
        path = code_path(D, [-0.1, 1.0], [0.1, 1.0], l1=0.1, l2=0.0, n_points=801)
        s_min = torch.linalg.svdvals(D[:, :2]).min().item()
        assert path.max_slope() == pytest.approx(1 / s_min, rel=1e-3)
        slopes.append(path.max_slope())
        en = code_path(D, [-0.1, 1.0], [0.1, 1.0], l1=0.1, l2=0.1, n_points=801)
        assert en.max_slope() <= 1 / (2 * math.sqrt(0.2)) + 1e-9  # max_s s / (s^2 + 2 l2), any dictionary
    assert slopes[1] == pytest.approx(4 * slopes[0], rel=0.01)
    # At a fixed grid the lasso's largest step stays a finite fraction of the code; the EN's is tiny.
    D = unit_atoms([89.9, 90.1, 0.0])
    coarse = code_path(D, [-1.5, 1.0], [1.5, 1.0], l1=0.1, l2=0.0, n_points=101)
    assert coarse.max_jump() > 0.5
    assert code_path(D, [-1.5, 1.0], [1.5, 1.0], l1=0.1, l2=0.1, n_points=101).max_jump() < 0.05


def test_active_set_lipschitz_by_hand() -> None:
    D = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)  # singular values 2 and 0.5
    both = torch.tensor([[True, True]])
    assert active_set_lipschitz(D, 0.0, both) == pytest.approx(2.0)  # 1 / 0.5
    assert active_set_lipschitz(D, 0.5, both) == pytest.approx(max(2 / 5, 0.5 / 1.25))
    assert active_set_lipschitz(D, 0.0, torch.tensor([[True, False]])) == pytest.approx(0.5)
    parallel = unit_atoms([10.0, 10.0])
    assert active_set_lipschitz(parallel, 0.0, both) == math.inf


def test_lipschitz_sweep_measured_is_between_exact_and_bound() -> None:
    D = unit_atoms([80, 100, 0, 200])
    x = code_path(D, [-1.5, 1.5], [1.5, 1.5], 0.1, n_points=12).points
    sweep = lipschitz_sweep(D, x, 0.1, [0.0, 0.05, 0.5], n_perturb=8)
    assert sweep["bound"][0] == math.inf
    for measured, exact, bound in zip(sweep["measured"], sweep["active_set"], sweep["bound"]):
        assert measured <= exact * (1 + 1e-4) and exact <= bound
    assert sweep["measured"][0] > sweep["measured"][2]


def test_adaptive_weights_follow_the_sae_rule() -> None:
    w = adaptive_weights(torch.tensor([1.0, 0.5, 0.01, 0.0]), gamma=1.0, ref_pct=0.25)
    assert w.tolist() == pytest.approx([1.0, 2.0, 10.0, 10.0])  # ref = 1; clipped at 10
    assert adaptive_weights(torch.tensor([1.0, 0.5]), gamma=0.0).tolist() == [1.0, 1.0]


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="D must be a \\(2, m\\)"):
        activation_regions(torch.ones(3, 2), 0.1)
    with pytest.raises(ValueError, match="n_points"):
        code_path(unit_atoms([0, 90]), [0, 0], [1, 1], 0.1, n_points=1)
    with pytest.raises(ValueError, match="start and end"):
        code_path(unit_atoms([0, 90]), [0, 0, 0], [1, 1], 0.1)


def test_rank_deficiency_does_not_depend_on_the_cpus_round_off(monkeypatch) -> None:
    """Some CPUs' LAPACK return 8e-20 instead of 0 for the zero singular value of two parallel atoms (issue 15):
    the answer must be inf on every machine, so emulate that round-off here."""
    from aen_mini.eval.metrics import active_gram_condition

    exact = torch.linalg.svdvals

    def noisy_svdvals(A: torch.Tensor) -> torch.Tensor:
        s = exact(A)
        return torch.where(s < 1e-12 * s.max(), torch.full_like(s, 8e-20), s)

    monkeypatch.setattr(torch.linalg, "svdvals", noisy_svdvals)
    parallel = unit_atoms([10.0, 10.0])
    both = torch.tensor([[True, True]])
    assert active_set_lipschitz(parallel, 0.0, both) == math.inf
    assert active_gram_condition(parallel, torch.ones(1, 2, dtype=torch.float64)) == math.inf
    square = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)  # rank 1, square: lambda_min(DᵀD) = 0
    assert lipschitz_bound(square, 0.0) == math.inf
    assert active_set_lipschitz(parallel, 0.5, both) < math.inf  # the ridge keeps it finite
