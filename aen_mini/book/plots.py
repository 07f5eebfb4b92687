"""The book's figures: each plot function draws one figure with matplotlib and returns the Figure.

Functions that take `ax` draw into that Axes (and return its Figure) so figures can be composed; otherwise
they create their own. Sizes, fonts and colours come from aen_mini.book.style; tables are in
aen_mini.book.tables. Nothing here computes results except the atom matching that ``plot_atoms`` draws.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from torch import Tensor

from aen_mini.book.geometry import ActivationRegions, CodePath
from aen_mini.book.style import (FIG_WIDTH, SWEEP_LABELS, axes_or_new, book_style, legend_below, line_style, method_color,
                                 panels)
from aen_mini.eval.recovery import dictionary_recovery

__all__ = [
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

CURVE_LABELS = {
    "mse": "reconstruction error (MSE)",
    "l0": "L0 (active latents per input)",
    "dead_pct": "dead latents (%)",
    "loss": "training loss",
    "l1": "L1 penalty",
    "l2": "L2 penalty",
}


@book_style
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
    fig, axes = panels(len(keys), 2.8, sharex=True)
    others: list[str] = []
    for ax, key in zip(axes, keys):
        for name, history in runs.items():
            ax.plot([r["step"] for r in history], [r[key] for r in history], label=name or None, **line_style(name, others))
        ax.set_xlabel("step")
        ax.set_title(CURVE_LABELS.get(key, key))
    if any(runs):
        legend_below(fig, axes)
    return fig


@book_style
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


@book_style
def plot_activation_regions(
    regions: ActivationRegions, D: Tensor, title: str | None = None, ax: Axes | None = None
) -> Figure:
    """The plane coloured by active set, with the atoms drawn as arrows (atom j is labelled j + 1)."""
    fig, ax = axes_or_new(ax, (4.4, 5.2))
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


@book_style
def plot_code_paths(paths: Mapping[str, CodePath]) -> Figure:
    """One panel per path: each code h_j along the segment (t from 0 to 1), with the largest jump noted."""
    if not paths:
        raise ValueError("paths must hold at least one CodePath")
    fig, axes = panels(len(paths), 3.2, sharey=True)
    for ax, (name, path) in zip(axes, paths.items()):
        for j in range(path.codes.shape[1]):
            ax.plot(path.t.numpy(), path.codes[:, j].numpy(), label=f"$h_{j + 1}$")
        ax.set_title(f"{name}\nlargest step {path.max_jump():.2f}, slope {path.max_slope():.3g}")
        ax.set_xlabel("position t along the segment")
    axes[0].set_ylabel("exact code")
    legend_below(fig, axes)
    return fig


@book_style
def plot_lipschitz(
    x_values: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    xlabel: str,
    title: str | None = None,
    logx: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Lipschitz constants (log scale) against a parameter, one line per curve; inf values are left out."""
    fig, ax = axes_or_new(ax, (6.0, 3.8))
    others: list[str] = []
    for name, values in curves.items():
        if len(values) != len(x_values):
            raise ValueError(f"curve {name!r} has {len(values)} values but there are {len(x_values)} x values")
        finite = [(x, y) for x, y in zip(x_values, values) if math.isfinite(y)]
        style = {"ls": "--", "color": "k"} if name == "bound" else line_style(name, others)
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


@book_style
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
    fig, axes = panels(len(metrics), 3.0, sharex=True)
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
                        **line_style(method, others))
        ax.set_xlabel("coherence ρ")
        ax.set_title(SWEEP_LABELS.get(metric, metric))
    legend_below(fig, axes)
    return fig


@book_style
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


@book_style
def plot_code_magnitudes(pairs: Mapping[str, tuple[Tensor, Tensor]], max_points: int = 3000) -> Figure:
    """One panel per method: learned code against the true magnitude for active (sample, atom) pairs, with the
    least-squares slope through the origin (1 = no shrinkage) and the identity line."""
    if not pairs:
        raise ValueError("pairs must hold at least one (true, learned) pair of tensors")
    fig, axes = panels(len(pairs), 3.4, sharex=True, sharey=True)
    others: list[str] = []
    for ax, (name, (true, learned)) in zip(axes, pairs.items()):
        true, learned = true.double().flatten(), learned.double().flatten()
        if true.shape != learned.shape or true.numel() == 0:
            raise ValueError(f"{name}: true and learned must be non-empty and of one length")
        slope = (true @ learned / (true @ true)).item()
        keep = torch.linspace(0, true.numel() - 1, min(max_points, true.numel())).long()
        ax.scatter(true[keep].numpy(), learned[keep].numpy(), s=3, alpha=0.3, color=line_style(name, others)["color"])
        top = true.max().item()
        ax.plot([0, top], [0, top], "k:", lw=1, label="no shrinkage")
        ax.plot([0, top], [0, slope * top], "k-", lw=1.2, label=f"slope {slope:.2f}")
        ax.set_title(name)
        ax.set_xlabel("true magnitude")
        ax.legend()
    axes[0].set_ylabel("learned code")
    return fig


@book_style
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


@book_style
def plot_histogram(hist: Mapping[str, object], title: str, ax: Axes | None = None) -> Figure:
    """A histogram given as counts and bin edges (``aen_mini.eval.features.density_histogram`` /
    ``activation_histogram``); a density histogram's never-firing latents are noted in the legend."""
    edges, counts = list(hist["edges"]), list(hist["counts"])
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"a histogram needs len(edges) == len(counts) + 1 >= 2, got {len(edges)} and {len(counts)}")
    fig, ax = axes_or_new(ax, (6.0, 3.4))
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


@book_style
def plot_matched_l0(rows: Sequence[Mapping[str, object]], metrics: Sequence[str], title: str) -> Figure:
    """One panel per metric against L0, one line per SAE variant (``label``), from rows such as those of
    ``benchmarks/llm.py``: SAEs compared at matched sparsity."""
    if not rows:
        raise ValueError("plot_matched_l0 needs at least one row")
    fig, axes = panels(len(metrics), 3.0, sharex=True)
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    others: list[str] = []
    for ax, metric in zip(axes, metrics):
        for label in labels:
            points = sorted((float(r["l0"]), float(r[metric])) for r in rows if r["label"] == label)
            ax.plot(*zip(*points), "o-", label=label, **line_style(label, others))
        _log_axis(ax.xaxis)
        ax.set_xlabel("L0 (held out)")
        ax.set_title(MATCHED_L0_LABELS.get(metric, metric.replace("_", " ")))
    legend_below(fig, axes)
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
