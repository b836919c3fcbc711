r"""One block shared across the depth, each layer with its own normalization layers (WideNet's individual
LayerNorms). A composition of a given block, not a registered layer."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

from normact._checks import check_int
from normact.registry import get_info

__all__ = ["SharedBlockStack", "norm_submodules"]

_TORCH_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


def _is_norm(module: nn.Module) -> bool:
    """A registered normalization layer (kind ``norm``) or one of torch's."""
    if isinstance(module, _TORCH_NORMS):
        return True
    try:
        return get_info(type(module)).kind == "norm"
    except KeyError:
        return False


def norm_submodules(module: nn.Module) -> tuple[str, ...]:
    """The dotted paths of the outermost normalization layers inside ``module`` (registered norms and torch's),
    in registration order; the norms of :class:`TransformerBlock` are ``("attn_norm", "mlp_norm")`` for Pre-LN."""
    found: list[str] = []
    for name, sub in module.named_modules():
        if not name or any(name.startswith(f"{f}.") for f in found):
            continue
        if _is_norm(sub):
            found.append(name)
    return tuple(found)


def _key(path: str) -> str:
    return path.replace(".", "__")  # ModuleDict keys cannot hold dots


class SharedBlockStack(nn.Module):
    r"""WideNet's parameter sharing with individual LayerNorms (Xue, Shi, Wei, Lou, Liu, You, 2021, "Go Wider
    Instead of Deeper", arXiv:2107.11817, AAAI 2022): one block :math:`F` applied ``depth`` times, its weights
    shared by every layer but its normalization layers, which each layer :math:`\ell` has its own copy of,

    .. math::
        h_\ell = F(h_{\ell-1};\ \theta_{\text{shared}},\ \gamma_\ell, \beta_\ell),\quad \ell = 1, \dots, L,

    so that the stack has the shared block's parameters plus :math:`(L - 1)` copies of its norms' (for a Pre-LN
    block with two LayerNorms of width d: :math:`|\theta| + 2 \cdot 2d \cdot L` in all). The copies start equal to
    the block's norms, where the stack is ALBERT's recurrence :math:`F^{L}` (Lan et al., 2019); the paper finds the
    individual norms better than shared ones (its ablation). WideNet also replaces the FFN by a top-2
    mixture-of-experts shared across the layers; that is out of scope here: the block keeps its dense FFN.

    Layer 1 uses the block's own norms (``block.attn_norm``...), layer :math:`\ell \ge 2` the copies in
    ``layer_norms[ℓ - 2]``, substituted by :func:`torch.func.functional_call`, so that the state dict holds each
    tensor once and the stack compiles with ``torch.compile(fullgraph=True)``. Buffers of the norms (running
    statistics) are per layer too.

    Args:
        block: the shared block (any module mapping ``x`` to a tensor of its shape, e.g. a
            :class:`~normact.layers.block.TransformerBlock`); further ``forward`` arguments (a mask) are passed on.
        depth: L, the number of layers.
        per_layer: the dotted paths of the submodules each layer has its own copy of; default: every
            normalization layer in ``block`` (:func:`norm_submodules`).

    Shape:
        the block's input and output.
    """

    def __init__(self, block: nn.Module, depth: int, *, per_layer: Sequence[str] | None = None) -> None:
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"block must be an nn.Module, got {type(block).__name__}")
        self.depth = check_int("depth", depth)
        self.block = block
        paths = norm_submodules(block) if per_layer is None else tuple(per_layer)
        if not paths:
            raise ValueError(f"{type(block).__name__} has no normalization layer to give each layer its own copy of")
        for path in paths:
            if not isinstance(path, str):
                raise TypeError(f"per_layer must hold submodule paths (str), got {path!r}")
            try:
                block.get_submodule(path)
            except AttributeError:
                raise ValueError(f"per_layer: {type(block).__name__} has no submodule {path!r}") from None
        self.per_layer = paths
        self.layer_norms = nn.ModuleList(
            nn.ModuleDict({_key(p): copy.deepcopy(block.get_submodule(p)) for p in paths}) for _ in range(depth - 1)
        )

    def reset_parameters(self) -> None:
        """The block's ``reset_parameters()``, then every layer's norms set equal to the block's (their initial
        state: the stack is then the recurrence of one block)."""
        if hasattr(self.block, "reset_parameters"):
            self.block.reset_parameters()
        for layer in self.layer_norms:
            for path in self.per_layer:
                layer[_key(path)].load_state_dict(self.block.get_submodule(path).state_dict())

    def layer_modules(self, layer: int) -> dict[str, nn.Module]:
        """The per-layer submodules of layer ``layer`` (0-based), by path in the block."""
        layer = check_int("layer", layer, minimum=0)
        if layer >= self.depth:
            raise ValueError(f"layer must be < depth ({self.depth}), got {layer}")
        if layer == 0:
            return {p: self.block.get_submodule(p) for p in self.per_layer}
        return {p: self.layer_norms[layer - 1][_key(p)] for p in self.per_layer}

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        y = self.block(x, *args, **kwargs)
        for layer in self.layer_norms:
            tensors: dict[str, Tensor] = {}
            for path in self.per_layer:
                sub = layer[_key(path)]
                tensors.update({f"{path}.{n}": t for n, t in sub.named_parameters()})
                tensors.update({f"{path}.{n}": t for n, t in sub.named_buffers()})
            y = functional_call(self.block, tensors, (y, *args), kwargs, tie_weights=False, strict=False)
        return y

    def extra_repr(self) -> str:
        return f"depth={self.depth}, per_layer={self.per_layer}"
