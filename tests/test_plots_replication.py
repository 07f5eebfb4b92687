"""The method palette and the per-method bar figure of chapters 3 and 4."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from aen_mini.book.style import METHOD_COLORS, method_color  # noqa: E402
from aen_mini.book.plots import plot_method_bars  # noqa: E402


def test_variants_share_their_family_colour_and_aen_stands_out():
    assert method_color("relu_l1+warmup") == method_color("relu_l1") == METHOD_COLORS["relu_l1"]
    assert method_color("aen_no_delay") == METHOD_COLORS["aen"] != method_color("elastic_net")
    assert method_color("topk+auxk") == METHOD_COLORS["topk"]
    with pytest.raises(ValueError, match="no colour for method 'unknown'"):
        method_color("unknown")


def test_bars_two_panels_per_row_and_flags_marked():
    rows = [{"panel": p, "method": m, "label": m, "mean": 2.0, "min": 1.0, "max": 3.0, "flag": m == "aen"}
            for p in ("a", "b", "c") for m in ("relu_l1", "aen")]
    fig = plot_method_bars(rows, ["a", "b", "c"], "dead latents (%)")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 4 and len(visible) == 3
    assert [t.get_text() for t in visible[0].get_yticklabels()] == ["relu_l1", "aen !"]
    with pytest.raises(ValueError, match="at least one"):
        plot_method_bars([], ["a"], "x")
