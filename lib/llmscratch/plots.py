"""Plots with one look across the course: loss curves and heatmaps (matplotlib)."""

import matplotlib.pyplot as plt
import numpy as np

STYLE = {"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 10}


def loss_curve(curves: dict, xlabel: str = "step", ylabel: str = "loss (nats / token)",
               title: str | None = None, hlines: dict | None = None, ax=None):
    """Plot named curves, each a list of losses or a (steps, losses) pair; `hlines` marks baselines."""
    with plt.rc_context(STYLE):
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        for name, curve in curves.items():
            steps, values = curve if isinstance(curve, tuple) else (range(len(curve)), curve)
            ax.plot(list(steps), list(values), label=name, linewidth=1.5)
        for i, (name, y) in enumerate((hlines or {}).items()):
            ax.axhline(y, linestyle="--", linewidth=1, color=f"C{len(curves) + i}", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend()
    return ax


def heatmap(matrix, row_labels=None, col_labels=None, title: str | None = None, cmap: str = "Blues",
            xlabel: str | None = None, ylabel: str | None = None, annotate: bool = False,
            colorbar: bool = True, vmin=None, vmax=None, fmt: str = ".3g", ax=None):
    """A matrix as an image, optionally labelled and annotated (numbers in `fmt`); vmin/vmax share a colour scale."""
    matrix = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        if ax is None:
            size = min(12, max(4, 0.3 * max(matrix.shape)))
            _, ax = plt.subplots(figsize=(size * 1.15, size))
        image = ax.imshow(matrix, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
        for labels, set_ticks, set_labels in ((col_labels, ax.set_xticks, ax.set_xticklabels),
                                              (row_labels, ax.set_yticks, ax.set_yticklabels)):
            if labels is not None:
                set_ticks(range(len(labels)))
                set_labels(labels)
        if annotate:
            threshold = matrix.max() / 2
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")
        if colorbar:
            ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if xlabel:
            ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
    return ax
