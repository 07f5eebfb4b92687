"""Interactive explorers for the notebooks (ipywidgets, imported lazily so the package does not need it)."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from aen_mini.book.geometry import activation_regions, adaptive_weights
from aen_mini.book.plots import plot_activation_regions

__all__ = ["geometry_explorer"]


def geometry_explorer(
    D: Tensor,
    usage: Sequence[float] | Tensor | None = None,
    extent: float = 2.0,
    resolution: int = 81,
    l1: float = 0.3,
    l2: float = 0.0,
    gamma: float = 0.0,
) -> Any:
    """Sliders for l1, l2 and gamma over the activation regions of a 2-D dictionary D (2, m).

    The L1 weights are the AEN rule w = clip((ref / a)^gamma, 0.01, 10) for an assumed mean activation
    `usage` a (m,) of each atom (default: 1, 1/2, 1/4, ...); gamma = 0 gives the plain elastic net.
    Returns an ipywidgets.VBox; display it in Jupyter (the figures need a live kernel to update).
    """
    import ipywidgets as widgets  # optional dependency: only the interactive notebooks need it
    from IPython.display import display

    m = D.shape[1]
    usage_t = torch.as_tensor(usage if usage is not None else [0.5**j for j in range(m)], dtype=torch.float64)
    if usage_t.shape != (m,):
        raise ValueError(f"usage must have one entry per atom ({m}), got shape {tuple(usage_t.shape)}")
    sliders = {
        "l1": widgets.FloatSlider(value=l1, min=0.0, max=1.5, step=0.05, description="λ1"),
        "l2": widgets.FloatSlider(value=l2, min=0.0, max=1.0, step=0.02, description="λ2"),
        "gamma": widgets.FloatSlider(value=gamma, min=0.0, max=2.0, step=0.1, description="γ"),
    }
    output = widgets.Output()

    def redraw(l1: float, l2: float, gamma: float) -> None:
        weights = adaptive_weights(usage_t, gamma)
        regions = activation_regions(D, l1, l2, weights, extent=extent, resolution=resolution)
        title = f"λ1={l1:.2f}, λ2={l2:.2f}, γ={gamma:.1f}\nw = " + ", ".join(f"{w:.2f}" for w in weights.tolist())
        fig = plot_activation_regions(regions, D, title=title)
        with output:
            output.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    widgets.interactive_output(redraw, sliders)
    return widgets.VBox([widgets.HBox(list(sliders.values())), output])
