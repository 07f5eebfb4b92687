"""Each plot function returns a Figure with the expected panels and artists, on tiny inputs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math

import matplotlib.colors
import matplotlib.pyplot as plt
import matplotlib.text
import pytest
import torch
from matplotlib.figure import Figure

from aen_mini.book.geometry import activation_regions, code_path, unit_atoms
from aen_mini.book.plots import (plot_activation_regions, plot_atoms, plot_code_magnitudes, plot_code_paths, plot_histogram,
                                 plot_lipschitz, plot_matched_l0, plot_rho_sweep, plot_training_curves,
                                 plot_weight_trajectories, plot_weights_vs_usage)
from aen_mini.book.style import FIG_WIDTH, METHOD_COLORS, method_color
from aen_mini.book.tables import html_table, sweep_table


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
    from aen_mini.book.widgets import geometry_explorer

    D = unit_atoms([0, 120, 240])
    widget = geometry_explorer(D, usage=[1.0, 0.5, 0.1], resolution=11)
    sliders = widget.children[0].children
    assert [s.description for s in sliders] == ["λ1", "λ2", "γ"]
    with pytest.raises(ValueError, match="one entry per atom"):
        geometry_explorer(D, usage=[1.0, 0.5])


def _sweep_rows() -> list[dict]:
    return [{"method": m, "label": label, "rho": rho, **{f"{k}_{s}": v + rho for k in ("dead_pct", "ev", "support_f1")
                                                        for s, v in (("mean", 1.0), ("min", 0.5), ("max", 1.5))}}
            for m, label in (("relu_l1", "ReLU + L1"), ("aen", "AEN")) for rho in (0.0, 0.5, 0.9)]


def _l0_rows() -> list[dict]:
    return [{"label": label, "l0": l0, "ev": 0.9 - 0.01 * i, "dead_pct": 2.0 * i}
            for i, label in enumerate(("ReLU + L1", "TopK + AuxK", "AEN")) for l0 in (16, 32, 64)]


# Every plot function on tiny inputs, so the book-wide rules below are checked for each of them.
FIGURES = {
    "training_curves": lambda: plot_training_curves({"relu_l1": _history(), "aen": _history()},
                                                    keys=("loss", "mse", "l0", "dead_pct")),
    "atoms": lambda: plot_atoms(torch.eye(3), torch.eye(3)),
    "activation_regions": lambda: plot_activation_regions(activation_regions(unit_atoms([0, 90]), 0.5, resolution=11),
                                                          unit_atoms([0, 90])),
    "code_paths": lambda: plot_code_paths({n: code_path(unit_atoms([0, 90]), [-1, 1], [1, 1], 0.1, l2, n_points=5)
                                           for n, l2 in (("lasso", 0.0), ("en", 0.1))}),
    "lipschitz": lambda: plot_lipschitz([0.1, 1.0], {"bound": [5.0, 0.5], "measured": [1.0, 0.3]}, xlabel="l2"),
    "rho_sweep": lambda: plot_rho_sweep(_sweep_rows()),
    "weight_trajectories": lambda: plot_weight_trajectories([0, 10, 20], torch.rand(3, 16) * 3 + 0.5, warmup=(5, 15)),
    "code_magnitudes": lambda: plot_code_magnitudes({m: (torch.rand(50) + 1, torch.rand(50)) for m in
                                                     ("ReLU + L1", "TopK + AuxK", "AEN")}),
    "weights_vs_usage": lambda: plot_weights_vs_usage(torch.rand(16) + 0.1, torch.rand(16) * 5 + 0.2, torch.rand(16)),
    "histogram": lambda: plot_histogram({"edges": [0, 1, 2], "counts": [3, 4], "dead": 2}, "density"),
    "matched_l0": lambda: plot_matched_l0(_l0_rows(), ["ev", "dead_pct"], "tiny model, made-up rows"),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_reads_at_book_width(name: str) -> None:
    """At most FIG_WIDTH inches wide (so it is not shrunk below 10 px text in the 752 px column), no text below
    10 pt, at most two panels per row."""
    fig = FIGURES[name]()
    assert fig.get_figwidth() <= FIG_WIDTH + 1e-9, f"{name} is {fig.get_figwidth():.1f} in wide"
    fig.canvas.draw()
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip() and t.get_visible()]
    small = sorted({(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 10}, key=str)
    assert not small, f"{name} has text below 10 pt: {small[:5]}"
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    rows = {round(ax.get_position().y0, 2) for ax in panels}
    assert len(panels) <= 2 * len(rows), f"{name} puts more than two panels in a row"


def test_each_method_has_one_colour_by_any_of_its_names() -> None:
    assert method_color("aen") == method_color("AEN") == METHOD_COLORS["aen"]
    assert method_color("TopK + AuxK") == method_color("topk") == method_color("topk_auxk")
    assert method_color("ReLU + L1") == METHOD_COLORS["relu_l1"] != method_color("ReLU + L1 + resampling")
    assert method_color("Elastic net (l2 = l1)") == METHOD_COLORS["elastic_net_strong_l2"]
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS), "two methods share a colour"
    with pytest.raises(ValueError, match="no colour for method 'sparse pca'"):
        method_color("sparse pca")


def test_plots_use_the_palette_and_aen_stands_out() -> None:
    fig = plot_training_curves({"ReLU + L1": _history(), "AEN": _history(), "other run": _history()}, keys=("mse",))
    relu, aen, other = fig.axes[0].lines
    assert matplotlib.colors.same_color(relu.get_color(), METHOD_COLORS["relu_l1"])
    assert matplotlib.colors.same_color(aen.get_color(), METHOD_COLORS["aen"])
    assert aen.get_linewidth() > relu.get_linewidth()
    assert other.get_color() not in METHOD_COLORS.values()
    sweep = plot_rho_sweep(_sweep_rows(), metrics=("ev",))
    colours = [c.get_children()[0].get_color() for c in sweep.axes[0].containers]
    assert [matplotlib.colors.to_hex(c) for c in colours] == [METHOD_COLORS["relu_l1"].lower(), METHOD_COLORS["aen"].lower()]


def test_a_log_axis_shorter_than_a_decade_has_several_labelled_ticks() -> None:
    fig = plot_matched_l0(_l0_rows(), ["ev"], "t")
    ax = fig.axes[0]
    fig.canvas.draw()
    low, high = ax.get_xlim()
    labels = [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if low <= v <= high and t.get_text()]
    assert len(labels) >= 3, labels
    assert "20" in labels and "50" in labels


def test_html_table_rounds_escapes_and_aligns() -> None:
    table = html_table([{"method": "ReLU + L1 <b>", "l0": 12.34567, "dead": 3, "ev": float("nan")}],
                       {"method": "method", "l0": "L0", "dead": "dead latents", "ev": "EV"},
                       formats={"l0": "{:.1f}"}, caption="synthetic data, rho = 0")
    text = table.data
    assert "<caption>synthetic data, rho = 0</caption>" in text and ">dead latents</th>" in text
    assert "ReLU + L1 &lt;b&gt;" in text and ">12.3</td>" in text and ">3</td>" in text and ">n/a</td>" in text
    assert 'style="text-align: right; padding' in text  # numbers align right
    assert "|" not in text
    assert ">3.14</td>" in html_table([[3.14159]], ["x"]).data  # 3 significant digits by default
    with pytest.raises(ValueError, match="row 0 has no"):
        html_table([{"a": 1}], ["a", "b"])
    with pytest.raises(ValueError, match="2 values for 1 columns"):
        html_table([[1, 2]], ["a"])
    with pytest.raises(ValueError, match="formats for columns"):
        html_table([[1]], ["a"], formats={"b": "{}"})


def test_sweep_table_shows_mean_and_spread_per_method_and_rho() -> None:
    from aen_mini.experiments.sweep_report import summarise

    records = [{"method": "aen", "label": "AEN", "rho": 0.9, "seed": s, "l1_coeff": 0.08, "dead_pct": d}
               for s, d in enumerate([1.0, 3.0])]
    text = sweep_table(summarise(records, ["dead_pct"]), ["dead_pct"], caption="synthetic, rho = 0.9").data
    assert ">AEN</td>" in text and ">0.9</td>" in text and ">2</td>" in text and ">0.08</td>" in text
    assert ">2 ± 1.4</td>" in text and ">dead latents (%)</th>" in text
    with pytest.raises(ValueError, match="no \\['ev_mean'\\]"):
        sweep_table(summarise(records, ["dead_pct"]), ["ev"], caption="x")


def test_book_style_keeps_interactive_mode_that_a_backend_turned_on() -> None:
    """Jupyter's inline backend turns interactive mode on while the first figure is drawn (inside the style's
    rc_context); if the context's exit turned it off again, no later figure of the notebook would be shown."""
    from aen_mini.book.style import book_style

    @book_style
    def loads_a_backend() -> Figure:
        matplotlib.interactive(True)
        return plt.figure()

    was = matplotlib.is_interactive()
    try:
        matplotlib.interactive(False)
        loads_a_backend()
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(was)
