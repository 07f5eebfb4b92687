"""How the book's figures look: one colour per method (Okabe-Ito, the same in every figure), the text column's
width, font sizes, and the panel and legend layout every plot in aen_mini.book.plots shares.

Every figure is drawn for the book's text column (752 px wide at a 1280 px window, where a figure of
FIG_WIDTH inches at 100 dpi is shown at most 1.3x smaller), with no font below 10 pt, so text reads at
>= 10 px; at most two panels per row. AEN is drawn thicker, in vermillion.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Sequence, TypeVar

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["BOOK_RC", "FIG_WIDTH", "METHOD_COLORS", "SWEEP_LABELS", "axes_or_new", "book_style", "legend_below",
           "line_style", "method_color", "panels"]

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies); AEN alone is vermillion.
METHOD_COLORS: dict[str, str] = {
    "relu_l1": "#0072B2",                # blue
    "relu_l1_resample": "#56B4E9",       # sky blue: the same penalty, plus resampling
    "topk": "#009E73",                   # bluish green
    "elastic_net": "#E69F00",            # orange
    "adaptive_lasso": "#CC79A7",         # reddish purple
    "aen": "#D55E00",                    # vermillion, drawn thicker
    "elastic_net_strong_l2": "#8C6D31",  # brown
    "aen_strong_l2": "#7A1F00",          # dark vermillion
}
# Other spellings of the same methods: sweep labels ("ReLU + L1") and variant names ("topk").
_METHOD_ALIASES = {"relu_l1_resampling": "relu_l1_resample", "topk_auxk": "topk", "elastic_net_l2_l1":
                   "elastic_net_strong_l2", "aen_l2_l1": "aen_strong_l2"}
# Runs that are not methods (e.g. "lasso (λ2 = 0)") get these greys and browns, never a method's colour.
_OTHER_COLORS = ("#000000", "#999999", "#8C564B", "#17BECF", "#BCBD22", "#7F7F7F")

FIG_WIDTH = 9.0  # inches; 900 px at 100 dpi, shown in the 752 px text column, so 10 pt stays >= 10 px
BOOK_RC = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 10,
           "ytick.labelsize": 10, "legend.fontsize": 10, "legend.title_fontsize": 10, "figure.titlesize": 12,
           "figure.dpi": 100}

F = TypeVar("F", bound=Callable[..., Any])


def _method_key(name: str) -> str | None:
    """The palette key of a method name, label or ablation ("relu_l1+warmup", "aen[beta=0.999]" -> its family)."""
    key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    key = _METHOD_ALIASES.get(key, key)
    if key in METHOD_COLORS:
        return key
    return next((f for f in sorted(METHOD_COLORS, key=len, reverse=True) if key.startswith(f + "_")), None)


def method_color(name: str) -> str:
    """The colour of a method, by name ("aen"), variant ("topk") or label ("TopK + AuxK")."""
    key = _method_key(name)
    if key is None:
        raise ValueError(f"no colour for method {name!r}; known: {sorted(METHOD_COLORS)} (add it to METHOD_COLORS)")
    return METHOD_COLORS[key]


def line_style(name: str, others: list[str]) -> dict[str, Any]:
    """Line style of run `name`: its method's colour (AEN thicker, on top), else the next non-method colour."""
    key = _method_key(name)
    if key is None:
        if name not in others:
            others.append(name)
        return {"color": _OTHER_COLORS[others.index(name) % len(_OTHER_COLORS)]}
    return {"color": METHOD_COLORS[key], "lw": 2.6 if key.startswith("aen") else 1.6,
            "zorder": 3 if key.startswith("aen") else 2}


def book_style(draw: F) -> F:
    """Draw under BOOK_RC (fonts are fixed when text is created, so this sets every label's size)."""

    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> Any:
        with plt.rc_context(BOOK_RC):
            fig = draw(*args, **kwargs)
            interactive = matplotlib.is_interactive()
        # Jupyter's inline backend turns interactive mode on when the first figure loads it; rc_context's exit
        # would turn it off again, and no later figure would be shown.
        matplotlib.interactive(interactive)
        return fig

    return styled  # type: ignore[return-value]


def panels(n: int, height: float, sharex: bool = False, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """n panels, two per row, FIG_WIDTH wide; the unused last cell of an odd grid is removed."""
    if n < 1:
        raise ValueError("a figure needs at least one panel")
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    width = FIG_WIDTH * (0.55 if n == 1 else 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), sharex=sharex, sharey=sharey,
                             constrained_layout=True, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def legend_below(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the whole figure, under the panels (a legend beside them would narrow every panel)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), frameon=False)


def axes_or_new(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Draw into ``ax`` if given (figures can be composed), else into a new figure of ``figsize``."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return fig, ax


# How each metric of the synthetic sweep is named on an axis or in a table header.
SWEEP_LABELS = {
    "dead_pct": "dead latents (%)",
    "ev": "explained variance",
    "l0": "L0 (active latents per input)",
    "support_f1": "support F1",
    "shrinkage": "shrinkage ratio",
    "dict_recovery": "atoms recovered (cos ≥ 0.9)",
    "recovery_mean_cos": "mean matched cosine",
}
