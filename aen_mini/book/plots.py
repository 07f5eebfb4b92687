"""The book's figures and tables: each plot function draws one figure with matplotlib and returns the Figure.

Functions that take `ax` draw into that Axes (and return its Figure) so figures can be composed; otherwise
they create their own. Nothing here computes results: numbers come from aen_mini.eval.metrics / geometry.

Every figure is drawn for the book's text column (752 px wide at a 1280 px window, where a figure of
FIG_WIDTH inches at 100 dpi is shown at most 1.3x smaller), with no font below 10 pt, so text reads at
>= 10 px; at most two panels per row. Each method has one colour (METHOD_COLORS, method_color), the same in
every figure; AEN is drawn thicker, in vermillion. `html_table` renders rows of results as an HTML table.
"""

from __future__ import annotations

import functools
import html
import math
import re
from typing import Any, Callable, Mapping, Sequence, TypeVar

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from torch import Tensor

from aen_mini.book.geometry import ActivationRegions, CodePath
from aen_mini.eval.recovery import dictionary_recovery

__all__ = [
    "METHOD_COLORS",
    "method_color",
    "html_table",
    "sweep_table",
    "plot_activation_regions",
    "plot_atoms",
    "plot_code_paths",
    "plot_lipschitz",
    "plot_training_curves",
    "plot_rho_sweep",
    "plot_weight_trajectories",
    "plot_code_magnitudes",
    "plot_weights_vs_usage",
    "plot_histogram",
    "plot_matched_l0",
    "plot_method_bars",
]

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


def _style(name: str, others: list[str]) -> dict[str, Any]:
    """Line style of run `name`: its method's colour (AEN thicker, on top), else the next non-method colour."""
    key = _method_key(name)
    if key is None:
        if name not in others:
            others.append(name)
        return {"color": _OTHER_COLORS[others.index(name) % len(_OTHER_COLORS)]}
    return {"color": METHOD_COLORS[key], "lw": 2.6 if key.startswith("aen") else 1.6,
            "zorder": 3 if key.startswith("aen") else 2}


def _book_style(draw: F) -> F:
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


def _panels(n: int, height: float, sharex: bool = False, sharey: bool = False) -> tuple[Figure, list[Axes]]:
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


def _legend_below(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the whole figure, under the panels (a legend beside them would narrow every panel)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), frameon=False)


_CELL_PADDING = "padding: 0.15em 0.35em"
# Headers wrap and the table is set a little smaller, so a results table of a dozen columns fits the 752 px column.
_TABLE_STYLE = "font-size: 0.75em"
_HEADER_STYLE = f"{_CELL_PADDING}; white-space: normal; vertical-align: bottom"


def html_table(rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], columns: Sequence[str] | Mapping[str, str],
               *, digits: int = 3, formats: Mapping[str, str] | None = None, caption: str | None = None) -> Any:
    """Rows as an HTML table (IPython.display.HTML), numbers rounded.

    `rows` are mappings (read at the keys of `columns`) or sequences (in the order of `columns`); `columns`
    is a list of keys, or {key: header}. Floats are written with `digits` significant digits unless
    `formats` gives a format for their column (e.g. {"dead_pct": "{:.1f}"}); NaN is written as "n/a".
    `caption` (say which model and data produced the numbers) is shown above the table.
    """
    from IPython.display import HTML  # ipywidgets (a dependency) brings IPython

    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    keys, formats = list(headers), dict(formats or {})
    unknown = sorted(set(formats) - set(keys))
    if unknown:
        raise ValueError(f"formats for columns {unknown} that the table does not have ({keys})")

    def cell(key: str, value: Any) -> str:
        if isinstance(value, float) and math.isnan(value):
            text, numeric = "n/a", True
        elif isinstance(value, (bool, str)) or value is None:
            text, numeric = "" if value is None else str(value), False
        elif isinstance(value, (int, float, np.integer, np.floating)):
            text = formats[key].format(value) if key in formats else \
                str(value) if isinstance(value, (int, np.integer)) else f"{value:.{digits}g}"
            numeric = True
        else:
            text, numeric = str(value), False
        align = "text-align: right; " if numeric else ""
        return f'<td style="{align}{_CELL_PADDING}">{html.escape(text)}</td>'

    body = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            missing = [k for k in keys if k not in row]
            if missing:
                raise ValueError(f"row {i} has no {missing}; it has {sorted(row)}")
            values = [row[k] for k in keys]
        else:
            values = list(row)
            if len(values) != len(keys):
                raise ValueError(f"row {i} has {len(values)} values for {len(keys)} columns")
        body.append("<tr>" + "".join(cell(k, v) for k, v in zip(keys, values)) + "</tr>")
    head = "".join(f'<th style="{_HEADER_STYLE}">{html.escape(str(headers[k]))}</th>' for k in keys)
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return HTML(f'<table class="dataframe aen-table" style="{_TABLE_STYLE}">{title}<thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>")


def sweep_table(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str], *, caption: str,
                digits: int = 3) -> Any:
    """An HTML table of ``aen_mini.experiments.sweep_report.summarise`` rows (the book's replacement for printing
    ``sweep.markdown_table``): method, rho, seeds, l1, then "mean ± std" over seeds for each metric."""
    missing = [f"{m}_mean" for m in metrics if summary and f"{m}_mean" not in summary[0]]
    if missing:
        raise ValueError(f"summary rows have no {missing}; summarise the records with these metrics")
    rows = [[r["label"], r["rho"], r.get("n_seeds", 1), "k" if r.get("l1_coeff") is None else f"{r['l1_coeff']:.3g}",
             *(f"{r[f'{m}_mean']:.{digits}g} ± {r[f'{m}_std']:.2g}" for m in metrics)] for r in summary]
    headers = ["method", "ρ", "seeds", "l1", *(SWEEP_LABELS.get(m, m) for m in metrics)]
    return html_table(rows, headers, caption=caption)


CURVE_LABELS = {
    "mse": "reconstruction error (MSE)",
    "l0": "L0 (active latents per input)",
    "dead_pct": "dead latents (%)",
    "loss": "training loss",
    "l1": "L1 penalty",
    "l2": "L2 penalty",
}


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return fig, ax


@_book_style
def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]] | Sequence[Mapping[str, float]],
    keys: Sequence[str] = ("mse", "l0", "dead_pct"),
) -> Figure:
    """One panel per key of the trainer's history records (`TrainResult.history`), one line per run.

    `histories` is one history or {run name: history}.
    """
    runs = dict(histories) if isinstance(histories, Mapping) else {"": histories}
    if not runs or any(len(h) == 0 for h in runs.values()):
        raise ValueError("every history must hold at least one record")
    for name, history in runs.items():
        missing = [k for k in (*keys, "step") if k not in history[0]]
        if missing:
            raise ValueError(f"history {name!r} has no key(s) {missing}; it has {sorted(history[0])}")
    fig, axes = _panels(len(keys), 2.8, sharex=True)
    others: list[str] = []
    for ax, key in zip(axes, keys):
        for name, history in runs.items():
            ax.plot([r["step"] for r in history], [r[key] for r in history], label=name or None, **_style(name, others))
        ax.set_xlabel("step")
        ax.set_title(CURVE_LABELS.get(key, key))
    if any(runs):
        _legend_below(fig, axes)
    return fig


@_book_style
def plot_atoms(D_true: Tensor, D_learned: Tensor, threshold: float = 0.9) -> Figure:
    """Learned vs true atoms after the one-to-one matching of recovery.dictionary_recovery.

    Left: cosines between the true atoms and their matched learned atoms (a clean diagonal is perfect
    recovery). Right: histogram of each true atom's matched cosine, with the recovery threshold.
    """
    recovery = dictionary_recovery(D_true, D_learned, threshold)
    order = recovery["matched_cos"].argsort(descending=True)
    matching = recovery["matching"][order]
    true_atoms = torch.nn.functional.normalize(D_true.detach().double(), dim=0)[:, order]
    learned = torch.nn.functional.normalize(D_learned.detach().double(), dim=0)
    matched = torch.zeros_like(true_atoms)
    matched[:, matching >= 0] = learned[:, matching[matching >= 0]]
    cos = (true_atoms.T @ matched).cpu()

    fig, (left, right) = plt.subplots(1, 2, figsize=(FIG_WIDTH, 3.8), constrained_layout=True)
    image = left.imshow(cos.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    left.set_xlabel("matched learned atom")
    left.set_ylabel("true atom (best recovered first)")
    left.set_title("cosine(true, learned)")
    fig.colorbar(image, ax=left, shrink=0.8)
    right.hist(recovery["matched_cos"].numpy(), bins=20, range=(-1, 1))
    right.axvline(threshold, color="k", ls=":", label=f"threshold {threshold}")
    right.set_xlabel("cosine with its matched learned atom")
    right.set_ylabel("true atoms")
    right.set_title(f"{recovery['frac_above']:.0%} recovered (mean cos {recovery['mean_cos']:.2f})")
    right.legend(loc="upper left")
    return fig


def _active_set_name(mask: int, m: int) -> str:
    members = [str(j + 1) for j in range(m) if mask >> j & 1]
    return "{" + ",".join(members) + "}" if members else "none"


@_book_style
def plot_activation_regions(
    regions: ActivationRegions, D: Tensor, title: str | None = None, ax: Axes | None = None
) -> Figure:
    """The plane coloured by active set, with the atoms drawn as arrows (atom j is labelled j + 1)."""
    fig, ax = _axes(ax, (4.4, 5.2))
    m = regions.codes.shape[-1]
    labels = regions.labels
    present = labels.unique().tolist()
    palette = plt.get_cmap("tab20").colors
    colours = ListedColormap([(1.0, 1.0, 1.0) if mask == 0 else palette[mask % len(palette)] for mask in present])
    index = torch.searchsorted(torch.tensor(present), labels)  # each mask -> its colour's position
    extent = (regions.xs[0].item(), regions.xs[-1].item(), regions.ys[0].item(), regions.ys[-1].item())
    ax.imshow(index.numpy(), origin="lower", extent=extent, cmap=colours, vmin=-0.5, vmax=len(present) - 0.5,
              interpolation="nearest")
    radius = 0.9 * min(abs(v) for v in extent)
    for j, atom in enumerate(D.detach().double().T.tolist()):
        ax.annotate("", xy=(radius * atom[0], radius * atom[1]), xytext=(0, 0),
                    arrowprops={"arrowstyle": "->", "lw": 1.5, "color": "k"})
        ax.text(1.08 * radius * atom[0], 1.08 * radius * atom[1], str(j + 1), ha="center", va="center")
    ax.legend(handles=[Patch(facecolor=colours(i), edgecolor="0.5", label=_active_set_name(mask, m))
                       for i, mask in enumerate(present)],
              title="active atoms", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return fig


@_book_style
def plot_code_paths(paths: Mapping[str, CodePath]) -> Figure:
    """One panel per path: each code h_j along the segment (t from 0 to 1), with the largest jump noted."""
    if not paths:
        raise ValueError("paths must hold at least one CodePath")
    fig, axes = _panels(len(paths), 3.2, sharey=True)
    for ax, (name, path) in zip(axes, paths.items()):
        for j in range(path.codes.shape[1]):
            ax.plot(path.t.numpy(), path.codes[:, j].numpy(), label=f"$h_{j + 1}$")
        ax.set_title(f"{name}\nlargest step {path.max_jump():.2f}, slope {path.max_slope():.3g}")
        ax.set_xlabel("position t along the segment")
    axes[0].set_ylabel("exact code")
    _legend_below(fig, axes)
    return fig


@_book_style
def plot_lipschitz(
    x_values: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    xlabel: str,
    title: str | None = None,
    logx: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Lipschitz constants (log scale) against a parameter, one line per curve; inf values are left out."""
    fig, ax = _axes(ax, (6.0, 3.8))
    others: list[str] = []
    for name, values in curves.items():
        if len(values) != len(x_values):
            raise ValueError(f"curve {name!r} has {len(values)} values but there are {len(x_values)} x values")
        finite = [(x, y) for x, y in zip(x_values, values) if math.isfinite(y)]
        style = {"ls": "--", "color": "k"} if name == "bound" else _style(name, others)
        ax.plot(*zip(*finite) if finite else ([], []), marker="o", ms=3, label=name, **style)
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Lipschitz constant of $x \\mapsto h^*(x)$")
    if title:
        ax.set_title(title)
    ax.legend()
    return fig


# --- chapters 3-4: the synthetic starvation sweep and adaptive reweighting -------------------------------
SWEEP_LABELS = {
    "dead_pct": "dead latents (%)",
    "ev": "explained variance",
    "l0": "L0 (active latents per input)",
    "support_f1": "support F1",
    "shrinkage": "shrinkage ratio",
    "dict_recovery": "atoms recovered (cos ≥ 0.9)",
    "recovery_mean_cos": "mean matched cosine",
}


def _log_axis(axis) -> None:
    """Log scale with plain-number labels (2 reads better than 2 x 10^0), with more ticks per decade the
    shorter the range, so that a range shorter than a decade still gets several labels; call it after plotting."""
    axis.axes.set_yscale("log") if axis is axis.axes.yaxis else axis.axes.set_xscale("log")
    low, high = sorted(axis.get_view_interval())
    decades = math.log10(high / low) if low > 0 else math.inf
    subs = (1.0, 2.0, 3.0, 5.0) if decades <= 1.5 else (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


@_book_style
def plot_rho_sweep(summary: Sequence[Mapping[str, float]], metrics: Sequence[str] = ("dead_pct", "ev", "support_f1"),
                   methods: Sequence[str] | None = None) -> Figure:
    """One panel per metric against rho, one line per method: the mean over seeds, with bars from the lowest to
    the highest seed (a standard deviation would hide a split between seeds that collapsed and seeds that did not).

    `summary` holds rows of aen_mini.experiments.sweep_report.summarise: "method", "label", "rho", "<metric>_mean", "_min", "_max".
    """
    rows = list(summary)
    if not rows:
        raise ValueError("summary must hold at least one row")
    missing = [f"{m}_mean" for m in metrics if f"{m}_mean" not in rows[0]]
    if missing:
        raise ValueError(f"summary rows have no {missing}; summarise the records with these metrics")
    methods = list(methods) if methods is not None else list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = _panels(len(metrics), 3.0, sharex=True)
    others: list[str] = []
    for ax, metric in zip(axes, metrics):
        for method in methods:
            line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["rho"])
            if not line:
                continue
            rho = [r["rho"] for r in line]
            mean = [r[f"{metric}_mean"] for r in line]
            spread = [[m - r[f"{metric}_min"] for m, r in zip(mean, line)],
                      [r[f"{metric}_max"] - m for m, r in zip(mean, line)]]
            ax.errorbar(rho, mean, yerr=spread, marker="o", ms=3, capsize=2, label=line[0]["label"],
                        **_style(method, others))
        ax.set_xlabel("coherence ρ")
        ax.set_title(SWEEP_LABELS.get(metric, metric))
    _legend_below(fig, axes)
    return fig


@_book_style
def plot_weight_trajectories(steps: Sequence[int], weights: Tensor, warmup: tuple[int, int] | None = None,
                             quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> Figure:
    """Quantiles over latents of the effective L1 weights w~ (T, d_sae) at each recorded step, with the
    warm-up window (start step, end step) shaded."""
    if weights.ndim != 2 or weights.shape[0] != len(steps):
        raise ValueError(f"weights must be (len(steps), d_sae) = ({len(steps)}, d_sae), got {tuple(weights.shape)}")
    fig, ax = plt.subplots(figsize=(7.0, 4.2), constrained_layout=True)
    levels = torch.quantile(weights.double(), torch.tensor(list(quantiles), dtype=torch.float64), dim=1)
    for q, values in zip(quantiles, levels):
        ax.plot(list(steps), values.tolist(), label=f"{q:.0%} of latents below")
    if warmup is not None:
        ax.axvspan(*warmup, color="0.9", label="warm-up ramp")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    _log_axis(ax.yaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("effective L1 weight $\\tilde w_j$")
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    return fig


@_book_style
def plot_code_magnitudes(pairs: Mapping[str, tuple[Tensor, Tensor]], max_points: int = 3000) -> Figure:
    """One panel per method: learned code against the true magnitude for active (sample, atom) pairs, with the
    least-squares slope through the origin (1 = no shrinkage) and the identity line."""
    if not pairs:
        raise ValueError("pairs must hold at least one (true, learned) pair of tensors")
    fig, axes = _panels(len(pairs), 3.4, sharex=True, sharey=True)
    others: list[str] = []
    for ax, (name, (true, learned)) in zip(axes, pairs.items()):
        true, learned = true.double().flatten(), learned.double().flatten()
        if true.shape != learned.shape or true.numel() == 0:
            raise ValueError(f"{name}: true and learned must be non-empty and of one length")
        slope = (true @ learned / (true @ true)).item()
        keep = torch.linspace(0, true.numel() - 1, min(max_points, true.numel())).long()
        ax.scatter(true[keep].numpy(), learned[keep].numpy(), s=3, alpha=0.3, color=_style(name, others)["color"])
        top = true.max().item()
        ax.plot([0, top], [0, top], "k:", lw=1, label="no shrinkage")
        ax.plot([0, top], [0, slope * top], "k-", lw=1.2, label=f"slope {slope:.2f}")
        ax.set_title(name)
        ax.set_xlabel("true magnitude")
        ax.legend()
    axes[0].set_ylabel("learned code")
    return fig


@_book_style
def plot_weights_vs_usage(usage: Tensor, weights: Tensor, matched_cos: Tensor, title: str | None = None) -> Figure:
    """Each latent's final effective L1 weight against its running mean activation (log-log), coloured by the
    cosine of its atom with the true atom it is matched to: spurious latents sit at the high-weight end."""
    if not usage.shape == weights.shape == matched_cos.shape or usage.ndim != 1:
        raise ValueError("usage, weights and matched_cos must be 1-D tensors of one length (d_sae)")
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    points = ax.scatter(usage.clamp_min(1e-6).double().numpy(), weights.double().numpy(), c=matched_cos.double().numpy(),
                        cmap="viridis", s=8, vmin=0, vmax=1)
    fig.colorbar(points, ax=ax, label="cosine with matched true atom")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
    _log_axis(ax.yaxis)
    ax.set_xlabel("EMA of mean $|h_j|$ (usage $a_j$)")
    ax.set_ylabel("effective L1 weight $\\tilde w_j$")
    if title:
        ax.set_title(title)
    return fig


@_book_style
def plot_histogram(hist: Mapping[str, object], title: str, ax: Axes | None = None) -> Figure:
    """A histogram given as counts and bin edges (``aen_mini.eval.features.density_histogram`` /
    ``activation_histogram``); a density histogram's never-firing latents are noted in the legend."""
    edges, counts = list(hist["edges"]), list(hist["counts"])
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"a histogram needs len(edges) == len(counts) + 1 >= 2, got {len(edges)} and {len(counts)}")
    fig, ax = _axes(ax, (6.0, 3.4))
    label = f"{hist['dead']} latents never fired" if "dead" in hist else None
    ax.stairs(counts, edges, fill=True, alpha=0.7, label=label)
    ax.set_xlabel(str(hist.get("xlabel", "")))
    ax.set_ylabel(str(hist.get("ylabel", "count")))
    ax.set_title(title)
    if label:
        ax.legend()
    return fig


MATCHED_L0_LABELS = {"dead_pct": "dead latents (%)", "ev": "explained variance",
                     "ce_recovered_zero": "CE recovered (zero ablation)", "kl_sae": "KL to clean (nats)",
                     "embedding_recovered_zero": "embedding recovered (zero abl.)"}


@_book_style
def plot_matched_l0(rows: Sequence[Mapping[str, object]], metrics: Sequence[str], title: str) -> Figure:
    """One panel per metric against L0, one line per SAE variant (``label``), from rows such as those of
    ``benchmarks/llm.py``: SAEs compared at matched sparsity."""
    if not rows:
        raise ValueError("plot_matched_l0 needs at least one row")
    fig, axes = _panels(len(metrics), 3.0, sharex=True)
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    others: list[str] = []
    for ax, metric in zip(axes, metrics):
        for label in labels:
            points = sorted((float(r["l0"]), float(r[metric])) for r in rows if r["label"] == label)
            ax.plot(*zip(*points), "o-", label=label, **_style(label, others))
        _log_axis(ax.xaxis)
        ax.set_xlabel("L0 (held out)")
        ax.set_title(MATCHED_L0_LABELS.get(metric, metric.replace("_", " ")))
    _legend_below(fig, axes)
    fig.suptitle(title)
    return fig


def plot_method_bars(rows: Sequence[Mapping[str, object]], panels: Sequence[str], metric_label: str,
                     title: str | None = None) -> Figure:
    """One panel per value of ``rows[i]["panel"]`` (e.g. "rho = 0, our init"), one horizontal bar per method: the
    mean over seeds (``"mean"``) with a line from the lowest to the highest seed (``"min"``, ``"max"``). A bar whose
    ``"flag"`` is true (calibration missed its target L0 on some seed) is hatched and marked "!" in its label."""
    if not rows:
        raise ValueError("rows must hold at least one bar")
    ncols = min(2, len(panels))  # two panels per row: readable at 1280 px
    nrows = math.ceil(len(panels) / ncols)
    tallest = max(sum(r["panel"] == p for r in rows) for p in panels)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, (0.32 * tallest + 1.0) * nrows),
                             constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        bars = [r for r in rows if r["panel"] == panel]
        y = list(range(len(bars)))[::-1]
        for yi, r in zip(y, bars):
            ax.barh(yi, r["mean"], color=method_color(str(r["method"])), alpha=0.85,
                    hatch="//" if r.get("flag") else None, edgecolor="k" if r.get("flag") else None)
            ax.plot([r["min"], r["max"]], [yi, yi], color="k", lw=1.2)
        ax.set_yticks(y, [f"{r['label']}{' !' if r.get('flag') else ''}" for r in bars], fontsize=10)
        ax.set_title(panel, fontsize=11)
        ax.set_xlabel(metric_label)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
