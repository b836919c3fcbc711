"""PNG figures of a probe report's analyses (matplotlib through :mod:`normact.plot`: Agg backend, atomic writes).

Each function draws the rows that a :class:`~normact.probing.Report` method returned, so this module does not
import the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from normact.plot import pyplot, save_png


def _short(names: list[str], limit: int = 28) -> list[str]:
    return [n if len(n) <= limit else "…" + n[-(limit - 1) :] for n in names]


def _xticks(ax: Any, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(_short(names), rotation=60, ha="right", fontsize="x-small")


def _layer_axes(rows: list[dict[str, Any]], inches_per_layer: float) -> tuple[Any, Any]:
    """A figure and its axes, wide enough for one x position per row (layer)."""
    plt = pyplot()
    width = max(6.0, inches_per_layer * len(rows) + 3)
    return plt.subplots(figsize=(width, 4.2), constrained_layout=True)


def _save_layer_axes(
    fig: Any, ax: Any, rows: list[dict[str, Any]], title: str, out: str | os.PathLike[str], grid_axis: str = "both"
) -> Path:
    """Title, the rows' module names as x ticks, grid and legend on ``ax``, then ``fig`` saved to ``out``."""
    ax.set_title(title)
    _xticks(ax, [r["module"] for r in rows])
    ax.grid(alpha=0.3, axis=grid_axis)
    ax.legend(fontsize="small")
    return save_png(fig, out)


def signal_propagation(rows: list[dict[str, Any]], out: str | os.PathLike[str], kinds: tuple[str, ...]) -> Path:
    """``rows`` from :meth:`Report.signal_propagation` (of ``kinds``) as one line per quantity over the blocks."""
    if not rows:
        raise ValueError(f"no modules of kind {kinds} with statistics: nothing to plot")
    fig, ax = _layer_axes(rows, 0.35)
    x = list(range(len(rows)))
    ax.plot(x, [r["avg_sq_mean"] for r in rows], marker="o", label="average channel squared mean")
    ax.plot(x, [r["avg_var"] for r in rows], marker="s", label="average channel variance")
    branch = [(i, r["branch_var"]) for i, r in enumerate(rows) if r["branch_var"] is not None]
    if branch:
        ax.plot(*zip(*branch, strict=True), marker="^", label="residual-branch variance")
    ax.set_yscale("log")
    ax.set_xlabel("block")
    return _save_layer_axes(fig, ax, rows, "Signal propagation", out)


def magnitudes(summary: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """The max and median |x| of the ``summary`` rows (:meth:`Report.summary`) that have them, per layer."""
    rows = [r for r in summary if "max_abs" in r]
    if not rows:
        raise ValueError("no module has min/max statistics: nothing to plot")
    fig, ax = _layer_axes(rows, 0.3)
    x = list(range(len(rows)))
    ax.plot(x, [max(r["max_abs"], 1e-30) for r in rows], marker="o", label="max |x|")
    if all("median_abs" in r for r in rows):
        ax.plot(x, [max(r["median_abs"], 1e-30) for r in rows], marker="s", label="median |x|")
    ax.set_yscale("log")
    return _save_layer_axes(fig, ax, rows, "Magnitude per layer", out)


def sparsity(rows: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """``rows`` from :meth:`Report.sparsity`: the fractions of exact and near zeros per layer, as bars."""
    if not rows:
        raise ValueError("no module has zero counts (stat 'zeros'): nothing to plot")
    fig, ax = _layer_axes(rows, 0.3)
    x = list(range(len(rows)))
    ax.bar([i - 0.2 for i in x], [r["zero_fraction"] for r in rows], width=0.4, label="x == 0")
    ax.bar([i + 0.2 for i in x], [r["near_zero_fraction"] for r in rows], width=0.4, label="|x| <= near_zero")
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    return _save_layer_axes(fig, ax, rows, "Activation sparsity per layer", out, grid_axis="y")


def attention_entropy(rows: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """``rows`` from :meth:`Report.attention_entropy` as a heat map of modules by heads."""
    if not rows:
        raise ValueError("no attention module exposed its weights: nothing to plot")
    plt = pyplot()
    width = max(len(r["heads"]) for r in rows)
    grid = [[*r["heads"], *([float("nan")] * (width - len(r["heads"])))] for r in rows]
    fig, ax = plt.subplots(
        figsize=(max(4.0, 0.5 * width + 3), max(3.0, 0.35 * len(rows) + 1.5)), constrained_layout=True
    )
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax, label="entropy (nats)")
    ax.set_xlabel("head")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(_short([r["module"] for r in rows]), fontsize="x-small")
    ax.set_xticks(range(width))
    ax.set_title("Attention entropy per head")
    return save_png(fig, out)
