r"""Heterogeneous residual blocks assembled from a spec (Brainformer's block search space): an ordered list of
sub-layers, each an attention or a feed-forward network with its own norm placement and activation. A builder, not
a registered layer: a spec is a point of a search space, not one paper's layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int, check_tensor, shape_str
from normact.layers.block.attention import FeedForward, MultiHeadAttention, attention_info, factory_kwargs
from normact.layers.block.transformer import _is_gated, make_norm
from normact.registry import LayerType, get_info, resolve

__all__ = ["BlockSpec", "SpecBlock", "SublayerSpec", "build_block"]

SUBLAYER_KINDS = ("attention", "ffn")
SPEC_PLACEMENTS = ("pre", "post", "peri")


@dataclass(frozen=True)
class SublayerSpec:
    """One residual sub-layer: ``kind`` (``"attention"`` or ``"ffn"``), where its norm sits (``placement``:
    ``"pre"`` :math:`x + F(N(x))`, ``"post"`` :math:`N(x + F(x))`, ``"peri"`` :math:`x + N_o(F(N(x)))`), and for a
    feed-forward network its activation ``act`` and hidden width ``mlp_ratio * dim``; for attention its normalizer
    ``attention`` (a registry name)."""

    kind: str
    placement: str = "pre"
    act: LayerType = "gelu"
    mlp_ratio: float = 4.0
    attention: str = "softmax_attention"

    def __post_init__(self) -> None:
        if self.kind not in SUBLAYER_KINDS:
            raise ValueError(
                f"sub-layer kind must be one of {SUBLAYER_KINDS}, got {self.kind!r} (mixture-of-experts sub-layers "
                "are not built here)"
            )
        if self.placement not in SPEC_PLACEMENTS:
            raise ValueError(f"sub-layer placement must be one of {SPEC_PLACEMENTS}, got {self.placement!r}")
        check_float("mlp_ratio", self.mlp_ratio, positive=True)
        if isinstance(self.act, str) and get_info(self.act).kind != "act":
            raise ValueError(f"act must name an activation, {get_info(self.act).name!r} is a {get_info(self.act).kind}")
        attention_info(self.attention)

    def __str__(self) -> str:
        if self.kind == "attention":
            return f"attention({self.placement}, {self.attention})"
        act = self.act if isinstance(self.act, str) else getattr(self.act, "__name__", repr(self.act))
        return f"ffn({self.placement}, {act}, x{self.mlp_ratio:g})"


SublayerLike = str | SublayerSpec | Mapping[str, Any]


@dataclass(frozen=True)
class BlockSpec:
    """An ordered list of :class:`SublayerSpec` (Brainformer's block: e.g. attention, FFN, FFN, attention...)."""

    sublayers: tuple[SublayerSpec, ...]

    def __post_init__(self) -> None:
        if not self.sublayers:
            raise ValueError("a block spec needs at least one sub-layer")
        for s in self.sublayers:
            if not isinstance(s, SublayerSpec):
                raise TypeError(f"BlockSpec.sublayers holds SublayerSpec, got {type(s).__name__}")

    @classmethod
    def parse(cls, spec: BlockSpec | Sequence[SublayerLike], **defaults: Any) -> BlockSpec:
        """A spec from a :class:`BlockSpec` (returned as is) or a list of kinds (``"attention"``, ``"ffn"``),
        :class:`SublayerSpec` s or dicts of their fields; ``defaults`` (``placement="peri"``, ``act="swiglu"``)
        fill the fields that kinds and dicts leave out."""
        if isinstance(spec, BlockSpec):
            return spec
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
            raise TypeError(f"a block spec is a list of sub-layers, got {type(spec).__name__}")
        out = []
        for item in spec:
            if isinstance(item, SublayerSpec):
                out.append(item)
            elif isinstance(item, str):
                out.append(SublayerSpec(item, **defaults))
            elif isinstance(item, Mapping):
                out.append(SublayerSpec(**{**defaults, **item}))
            else:
                raise TypeError(f"a sub-layer is a kind, a SublayerSpec or a dict, got {type(item).__name__}")
        return cls(tuple(out))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.sublayers)

    def __str__(self) -> str:
        return " -> ".join(str(s) for s in self.sublayers)


class _Sublayer(nn.Module):
    """One residual sub-layer of a :class:`SpecBlock`: ``norm`` (before the branch for pre/peri, after the sum for
    post), the branch ``fn`` and, for peri, ``out_norm``."""

    def __init__(self, spec: SublayerSpec, fn: nn.Module, norm: nn.Module, out_norm: nn.Module | None) -> None:
        super().__init__()
        self.spec = spec
        self.norm, self.fn, self.out_norm = norm, fn, out_norm

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        branch = (lambda h: self.fn(h, mask)) if self.spec.kind == "attention" else self.fn
        if self.spec.placement == "post":
            return NF.residual_branch(x, branch, None, None, self.norm)
        return NF.residual_branch(x, branch, self.norm, self.out_norm, None)

    def extra_repr(self) -> str:
        return str(self.spec)


class SpecBlock(nn.Module):
    r"""A residual block assembled from a :class:`BlockSpec`, after Brainformer (Zhou, Du, Huang, Peng et al.,
    2023, "Brainformers: Trading Simplicity for Efficiency", arXiv:2306.00008): instead of the uniform
    attention-then-FFN block, an ordered list of sub-layers :math:`F_1, \dots, F_n` (attention or dense FFN), each
    with its own norm placement and activation,

    .. math::
        x_i = \begin{cases} x_{i-1} + F_i(\mathrm{N}_i(x_{i-1})) & \text{pre} \\
        \mathrm{N}_i(x_{i-1} + F_i(x_{i-1})) & \text{post} \\
        x_{i-1} + \mathrm{N}_{o,i}(F_i(\mathrm{N}_i(x_{i-1}))) & \text{peri} \end{cases}

    Brainformer searches such blocks (the order of attention, dense FFN and sparsely gated mixture-of-experts
    FFN layers, and per-layer choices such as the norm and the activation); its searched blocks are not
    reproduced here and its MoE sub-layers are left out (dense FFN only). ``["attention", "ffn"]`` with ``"pre"``
    is :class:`TransformerBlock` with ``placement="pre"`` (with ``"post"`` and ``"peri"`` those placements).
    Built by :func:`build_block`; projections Xavier-normal, biases zero, as the transformer blocks.

    Shape:
        (B, T, D) in and out; ``mask`` an optional boolean (B, T) padding mask for the attention sub-layers.
    """

    def __init__(
        self,
        spec: BlockSpec | Sequence[SublayerLike],
        dim: int,
        heads: int,
        *,
        norm: LayerType = "layernorm",
        causal: bool = False,
        bias: bool = True,
        rope: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.spec = BlockSpec.parse(spec)
        self.dim, self.heads = check_int("dim", dim), check_int("heads", heads)
        self.causal = bool(causal)
        self.norm = norm
        layers = []
        # the draws of construction happen again in reset_parameters, so that reset_parameters() after
        # torch.manual_seed(s) reproduces a block built after it (as TransformerBlock)
        with torch.random.fork_rng(devices=[]):
            for s in self.spec.sublayers:
                layers.append(_Sublayer(s, self._branch(s, bias, rope, device, dtype), *self._norms(s, device, dtype)))
        self.sublayers = nn.ModuleList(layers)
        self.reset_parameters()

    def _branch(self, s: SublayerSpec, bias: bool, rope: bool, device: Any, dtype: Any) -> nn.Module:
        kw = {"device": device, "dtype": dtype}
        if s.kind == "attention":
            return MultiHeadAttention(self.dim, self.heads, s.attention, causal=self.causal, bias=bias, rope=rope, **kw)
        hidden = max(1, round(s.mlp_ratio * self.dim))
        act = resolve(s.act)
        return FeedForward(
            nn.Linear(self.dim, 2 * hidden if _is_gated(s.act) else hidden, bias=bias, **kw),
            act(**factory_kwargs(act, device, dtype)),
            nn.Linear(hidden, self.dim, bias=bias, **kw),
        )

    def _norms(self, s: SublayerSpec, device: Any, dtype: Any) -> tuple[nn.Module, nn.Module | None]:
        norm = make_norm(self.norm, self.dim, device, dtype)
        return norm, make_norm(self.norm, self.dim, device, dtype) if s.placement == "peri" else None

    def reset_parameters(self) -> None:
        """Xavier-normal projections, zero biases, norms and activations reset."""
        for layer in self.sublayers:
            if isinstance(layer.fn, MultiHeadAttention):
                layer.fn.reset_parameters()
            else:
                for fc in (layer.fn.fc1, layer.fn.fc2):
                    nn.init.xavier_normal_(fc.weight)
                    if fc.bias is not None:
                        nn.init.zeros_(fc.bias)
                if hasattr(layer.fn.act, "reset_parameters"):
                    layer.fn.act.reset_parameters()
            for m in (layer.norm, layer.out_norm):
                if m is not None and hasattr(m, "reset_parameters"):
                    m.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        check_tensor(x, "SpecBlock")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"SpecBlock expects input of shape (B, T, {self.dim}), got shape {shape_str(x.shape)}")
        for layer in self.sublayers:
            x = layer(x, mask)
        return x

    def extra_repr(self) -> str:
        return f"{self.dim}, heads={self.heads}, causal={self.causal}, spec={str(self.spec)!r}"


def build_block(
    spec: BlockSpec | Sequence[SublayerLike],
    dim: int,
    heads: int,
    *,
    placement: str | None = None,
    act: LayerType | None = None,
    mlp_ratio: float | None = None,
    attention: str | None = None,
    **kwargs: Any,
) -> SpecBlock:
    """A :class:`SpecBlock` of width ``dim`` from a spec: ``build_block(["attention", "ffn", "ffn"], 64, 4,
    placement="peri", act="swiglu")``. ``placement``, ``act``, ``mlp_ratio`` and ``attention`` are the defaults of
    the sub-layers given by their kind alone; ``kwargs`` go to :class:`SpecBlock` (``norm``, ``causal``, ``bias``,
    ``rope``, ``device``, ``dtype``)."""
    given = {"placement": placement, "act": act, "mlp_ratio": mlp_ratio, "attention": attention}
    defaults = {k: v for k, v in given.items() if v is not None}
    return SpecBlock(BlockSpec.parse(spec, **defaults), dim, heads, **kwargs)
