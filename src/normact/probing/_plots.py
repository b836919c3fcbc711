"""PNG figures of a probe report (matplotlib, imported here only; Agg backend; files written atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from normact.probing.report import Report


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | os.PathLike[str]) -> Path:
    plt = _pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=120)
    plt.close(fig)
    os.replace(tmp.name, out)
    return out


def _short(names: list[str], limit: int = 28) -> list[str]:
    return [n if len(n) <= limit else "…" + n[-(limit - 1) :] for n in names]


def _xticks(ax: Any, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(_short(names), rotation=60, ha="right", fontsize="x-small")


def signal_propagation(report: Report, out: str | os.PathLike[str], kinds: tuple[str, ...]) -> Path:
    rows = report.signal_propagation(kinds)
    if not rows:
        raise ValueError(f"no modules of kind {kinds} with statistics: nothing to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 3), 4.2), constrained_layout=True)
    x = list(range(len(rows)))
    ax.plot(x, [r["avg_sq_mean"] for r in rows], marker="o", label="average channel squared mean")
    ax.plot(x, [r["avg_var"] for r in rows], marker="s", label="average channel variance")
    branch = [(i, r["branch_var"]) for i, r in enumerate(rows) if r["branch_var"] is not None]
    if branch:
        ax.plot(*zip(*branch, strict=True), marker="^", label="residual-branch variance")
    ax.set_yscale("log")
    ax.set_title("Signal propagation")
    ax.set_xlabel("block")
    _xticks(ax, [r["module"] for r in rows])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out)


def magnitudes(report: Report, out: str | os.PathLike[str]) -> Path:
    rows = [r for r in report.summary() if "max_abs" in r]
    if not rows:
        raise ValueError("no module has min/max statistics: nothing to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(rows) + 3), 4.2), constrained_layout=True)
    x = list(range(len(rows)))
    ax.plot(x, [max(r["max_abs"], 1e-30) for r in rows], marker="o", label="max |x|")
    if all("median_abs" in r for r in rows):
        ax.plot(x, [max(r["median_abs"], 1e-30) for r in rows], marker="s", label="median |x|")
    ax.set_yscale("log")
    ax.set_title("Magnitude per layer")
    _xticks(ax, [r["module"] for r in rows])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out)


def sparsity(report: Report, out: str | os.PathLike[str]) -> Path:
    rows = report.sparsity()
    if not rows:
        raise ValueError("no module has zero counts (stat 'zeros'): nothing to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(rows) + 3), 4.2), constrained_layout=True)
    x = list(range(len(rows)))
    ax.bar([i - 0.2 for i in x], [r["zero_fraction"] for r in rows], width=0.4, label="x == 0")
    ax.bar([i + 0.2 for i in x], [r["near_zero_fraction"] for r in rows], width=0.4, label="|x| <= near_zero")
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.set_title("Activation sparsity per layer")
    _xticks(ax, [r["module"] for r in rows])
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    return _save(fig, out)


def attention_entropy(report: Report, out: str | os.PathLike[str]) -> Path:
    rows = report.attention_entropy()
    if not rows:
        raise ValueError("no attention module exposed its weights: nothing to plot")
    plt = _pyplot()
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
    return _save(fig, out)
