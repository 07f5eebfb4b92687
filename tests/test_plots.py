"""Each plot function returns a Figure with the expected panels and artists, on tiny inputs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from aen_mini.geometry import activation_regions, code_path, unit_atoms
from aen_mini.plots import (plot_activation_regions, plot_atoms, plot_code_paths, plot_lipschitz,
                            plot_training_curves)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _history(n: int = 4) -> list[dict[str, float]]:
    return [{"step": 10 * (i + 1), "mse": 1.0 / (i + 1), "l0": 5.0 - i, "dead_pct": 2.0 * i, "loss": 2.0} for i in range(n)]


def test_training_curves_one_panel_per_key_one_line_per_run() -> None:
    fig = plot_training_curves({"a": _history(), "b": _history(3)}, keys=("mse", "l0"))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 2
    assert fig.axes[0].lines[1].get_ydata().tolist() == [1.0, 0.5, 1 / 3]
    assert len(plot_training_curves(_history()).axes) == 3  # a single history, default keys
    with pytest.raises(ValueError, match="no key"):
        plot_training_curves(_history(), keys=("nope",))


def test_atoms_panels_and_recovery_in_the_title() -> None:
    D_true = torch.eye(3)
    D_learned = torch.cat([torch.eye(3)[:, [2, 0]], torch.tensor([[0.0], [0.6], [0.8]])], dim=1)
    fig = plot_atoms(D_true, D_learned, threshold=0.9)
    assert isinstance(fig, Figure)
    heatmap, hist = fig.axes[0], fig.axes[1]
    image = heatmap.images[0].get_array()
    assert image.shape == (3, 3)
    assert sorted(image.diagonal().tolist(), reverse=True) == pytest.approx([1.0, 1.0, 0.6])
    assert "67% recovered" in hist.get_title()


def test_activation_regions_one_legend_entry_per_active_set() -> None:
    D = unit_atoms([0, 90])
    regions = activation_regions(D, 0.5, extent=1.0, resolution=21)
    fig = plot_activation_regions(regions, D, title="t")
    ax = fig.axes[0]
    assert len(ax.images) == 1 and ax.get_title() == "t"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["none", "{1}", "{2}", "{1,2}"]
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == ["1", "2"]  # atom labels (arrows have none)


def test_activation_regions_draws_into_a_given_axes() -> None:
    fig, axes = plt.subplots(1, 2)
    D = unit_atoms([0, 120, 240])
    assert plot_activation_regions(activation_regions(D, 0.2, resolution=11), D, ax=axes[1]) is fig
    assert len(axes[1].images) == 1 and len(axes[0].images) == 0


def test_code_paths_one_panel_per_path_one_line_per_code() -> None:
    D = unit_atoms([0, 90, 200])
    paths = {name: code_path(D, [-1, 1], [1, 1], 0.1, l2, n_points=11) for name, l2 in [("lasso", 0.0), ("en", 0.1)]}
    fig = plot_code_paths(paths)
    assert len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [3, 3]
    assert fig.axes[0].get_title().startswith("lasso")


def test_lipschitz_leaves_out_infinite_values() -> None:
    fig = plot_lipschitz([0.0, 0.1, 1.0], {"bound": [math.inf, 5.0, 0.5], "measured": [2.0, 1.0, 0.3]}, xlabel="l2",
                         logx=False)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert ax.lines[0].get_xdata().tolist() == [0.1, 1.0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "l2"
    with pytest.raises(ValueError, match="curve 'bound' has 1 values"):
        plot_lipschitz([1.0, 2.0], {"bound": [1.0]}, xlabel="l2")


def test_geometry_explorer_has_three_sliders_and_checks_usage() -> None:
    from aen_mini.widgets import geometry_explorer

    D = unit_atoms([0, 120, 240])
    widget = geometry_explorer(D, usage=[1.0, 0.5, 0.1], resolution=11)
    sliders = widget.children[0].children
    assert [s.description for s in sliders] == ["λ1", "λ2", "γ"]
    with pytest.raises(ValueError, match="one entry per atom"):
        geometry_explorer(D, usage=[1.0, 0.5])
