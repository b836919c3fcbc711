"""Undo for in-place edits of module parameters, shared by the surgery functions that check an edit and revert it
when it does not hold (fold.py's folds, adapt.py's renormalization)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class ParamSnapshot:
    """The parameters of ``modules`` (the objects and copies of their values, ``None`` entries included) and the
    attributes named in ``attrs`` that they have (``in_features``, ``affine``...). :meth:`restore` puts the original
    parameter objects back with their values (undoing in-place changes, replacements and parameters created since)
    and the attributes."""

    def __init__(self, modules: Iterable[nn.Module], attrs: Iterable[str] = ()) -> None:
        attrs = tuple(attrs)
        self.params: dict[nn.Module, dict[str, tuple[nn.Parameter | None, Tensor | None]]] = {
            m: {k: (p, None if p is None else p.detach().clone()) for k, p in m._parameters.items()} for m in modules
        }
        self.attrs = {m: {a: getattr(m, a) for a in attrs if hasattr(m, a)} for m in self.params}

    def restore(self) -> None:
        with torch.no_grad():
            for m, params in self.params.items():
                for k in [k for k in m._parameters if k not in params]:
                    del m._parameters[k]
                for k, (p, value) in params.items():
                    if p is not None:
                        p.copy_(value)
                    m._parameters[k] = p
                for a, value in self.attrs[m].items():
                    setattr(m, a, value)
