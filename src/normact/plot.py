"""Figures of activation functions: each function and its derivative on one figure (``normact plot-act``).

Needs the ``plot`` extra (matplotlib); it is imported only when a figure is drawn.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from normact.registry import get_info

__all__ = ["activation_curves", "plot_activations"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (matplotlib is imported on the first call)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, out: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write ``fig`` to ``out`` as a PNG atomically (a temporary file beside it, then a rename) and close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp.name, out)
    return out


def _module(name: str) -> nn.Module:
    info = get_info(name)
    if info.kind != "act":
        raise ValueError(f"{name!r} is a {info.kind} layer; plot-act draws activations (kind 'act')")
    try:
        module = info.factory(dtype=torch.float64)
    except TypeError:  # parameter-free activations take no dtype
        module = info.factory()
    return module.double().eval()


def activation_curves(name: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(g(x), g'(x))`` in float64 for a registered activation (eval mode, registry defaults). A gated
    activation is evaluated with its input halves ``(x, 1)``: the curve of its gate nonlinearity at unit
    value, e.g. ``silu(x)`` for SwiGLU."""
    module = _module(name)
    x = x.detach().to(torch.float64).clone().requires_grad_(True)
    if get_info(name).properties.gated:
        y = module(torch.stack([x, torch.ones_like(x)], dim=-1))[..., 0]
    else:
        try:
            y = module(x)
        except ValueError:  # layers that want (N, C)
            y = module(x[:, None])[:, 0]
    (grad,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), grad.detach()


def plot_activations(
    names: Sequence[str], out: str | os.PathLike[str], x_min: float = -5.0, x_max: float = 5.0, points: int = 2001
) -> Path:
    """Draw each activation (left) and its derivative (right) on one PNG at ``out`` (written atomically)."""
    if not names:
        raise ValueError("plot_activations needs at least one activation name")
    if not x_min < x_max:
        raise ValueError(f"x_min must be < x_max, got {x_min} and {x_max}")
    curves = {}
    x = torch.linspace(x_min, x_max, points, dtype=torch.float64)
    for name in names:
        curves[get_info(name).name] = activation_curves(name, x)
    fig, (ax_f, ax_d) = pyplot().subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for name, (y, grad) in curves.items():
        ax_f.plot(x.numpy(), y.numpy(), label=name, linewidth=1.6)
        ax_d.plot(x.numpy(), grad.numpy(), label=name, linewidth=1.6)
    for ax, title in ((ax_f, "g(x)"), (ax_d, "g'(x)")):
        ax.set_title(title)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.axvline(0, color="0.6", linewidth=0.6)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    ax_f.legend(loc="upper left", fontsize="small")
    return save_png(fig, out)
