"""Layers, inputs and reference calls prepared the same way for the generic checks and the numerical ones.

:mod:`normact.testing.checks` and :mod:`normact.testing.numerics` both build on these (checks re-exports the
public ones), so that neither imports the other's internals.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normact.testing.entry import Case, LayerEntry, Params

_SEED = 1234


def generator(seed: int = _SEED) -> torch.Generator:
    """A CPU random generator seeded with ``seed`` (every check draws its data from one)."""
    return torch.Generator().manual_seed(seed)


def default_perturb(module: nn.Module, gen: torch.Generator) -> None:
    """Move floating parameters and buffers away from their initial values (deterministically):
    parameters get N(0, 0.3^2) added, ``*var*`` buffers are multiplied by exp(N(0, 0.3^2)) (they stay
    positive), other floating buffers get N(0, 0.3^2) added."""
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))
        for name, b in module.named_buffers():
            if b is None or not b.is_floating_point():
                continue
            noise = 0.3 * torch.randn(b.shape, generator=gen, dtype=torch.float64).to(b)
            if "var" in name.rsplit(".", 1)[-1]:
                b.mul_(noise.exp())
            else:
                b.add_(noise)


def prepared(entry: LayerEntry, case: Case, dtype: torch.dtype = torch.float64, seed: int = _SEED) -> nn.Module:
    """The layer of ``case`` in ``dtype``, with parameters and buffers perturbed from their init."""
    torch.manual_seed(seed)
    module = entry.build(case, dtype=torch.float64)
    (entry.perturb or default_perturb)(module, generator(seed + 1))
    return module.to(dtype)


def snapshot(module: nn.Module) -> Params:
    """float64 copies of the parameters and buffers, by name (what a reference receives)."""
    out: Params = {}
    for name, p in module.named_parameters(recurse=True):
        out[name] = p.detach().clone().double()
    for name, b in module.named_buffers(recurse=True):
        out[name] = b.detach().clone().double() if b.is_floating_point() else b.clone()
    return out


def cond_inputs(
    case: Case, dtype: torch.dtype = torch.float64, shape: Any = None, seed: int = _SEED
) -> dict[str, Tensor]:
    """The case's conditioning inputs (see :attr:`Case.cond_fn`), floating ones in ``dtype``."""
    cond = case.make_cond(generator(seed + 7), shape)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}


def _double(cond: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone().double() if v.is_floating_point() else v.clone() for k, v in cond.items()}


def call_reference(
    entry: LayerEntry, case: Case, x: Tensor, params: Params, cond: dict[str, Tensor] | None = None
) -> tuple[Tensor | tuple[Tensor, ...], dict[str, Tensor]]:
    out = entry.reference(
        x.detach().clone().double(), {k: v for k, v in params.items()}, entry.hparams(case), **_double(cond or {})
    )
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        y, buffers = out
        return y, dict(buffers)
    return out, {}


def _outputs(y: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _pointwise_module(entry: LayerEntry) -> nn.Module:
    """The layer at its initial parameters (registry defaults and ``points_init``), float64."""
    torch.manual_seed(_SEED)
    return entry.build(Case(init=dict(entry.points_init)), dtype=torch.float64).eval()


def _pointwise_hparams(entry: LayerEntry) -> dict[str, Any]:
    """The hyperparameters of :func:`_pointwise_module`'s layer, as a reference receives them (evaluation)."""
    hparams = entry.hparams(Case(init=dict(entry.points_init)))
    hparams["training"] = False
    return hparams


def _apply_pointwise(entry: LayerEntry, module: nn.Module, x: Tensor) -> Tensor:
    """``module`` on a batch of scalars (a (k, 2) batch of halves for gated layers): as a 1-D input, or as
    (k, 1) for layers that want a channel axis."""
    if entry.info.properties.gated:
        return module(x)
    try:
        return module(x)
    except ValueError:
        return module(x[:, None])[:, 0]
