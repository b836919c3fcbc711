r"""A small GPT (causal language model) and ViT (image encoder) built from the registry's transformer blocks: any
placement, normalization, activation (gated ones included) and attention normalizer, with ``depth``, ``dim`` and
``heads``. ``normact bench``'s ``gpt`` and ``vit`` models are these.

.. code-block:: python

    model = normact.GPT(placement="peri", attention="sigmoid", norm="rmsnorm", act="swiglu", depth=12)

The placement decides the norms around the stack as its paper does: Pre-LN, LayerNorm Scaling and NormFormer end
with a final norm; Peri-LN and the depth-scaled sandwich norm also normalize the embeddings; Post-LN and DeepNorm
have neither (their last block ends in a norm).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from normact._checks import check_int, check_tensor, shape_str
from normact.layers.block.attention import attention_info
from normact.layers.block.transformer import PLACEMENTS, TransformerBlock, make_norm
from normact.layers.layout import is_none, norm_layer
from normact.registry import LayerType, get_info

__all__ = ["GPT", "ViT", "embedding_norm_of", "final_norm_of"]

POSITIONS = ("learned", "rope", "none")

_FINAL_NORM = ("pre", "peri", "sandwich_depth_scaled", "layernorm_scaling", "normformer")
_EMBEDDING_NORM = ("peri", "sandwich_depth_scaled")


def final_norm_of(placement: str) -> bool:
    """Whether the placement ends the stack with a norm (Pre-LN and its variants; not Post-LN or DeepNorm)."""
    return placement in _FINAL_NORM


def embedding_norm_of(placement: str) -> bool:
    """Whether the placement normalizes the embeddings before the first block (Peri-LN, sandwich)."""
    return placement in _EMBEDDING_NORM


def with_norm_kwargs(norm: LayerType, norm_kwargs: Mapping[str, Any] | None) -> LayerType:
    """``norm`` built with the hyperparameters ``norm_kwargs`` (e.g. DyT's ``{"alpha_init": 0.2}``): for a
    registry name, a factory ``norm(width)``; a class or factory is wrapped by :func:`functools.partial`."""
    if not norm_kwargs:
        return norm
    if isinstance(norm, str):
        if is_none(norm):
            raise ValueError("norm_kwargs given for norm='none'")
        info = get_info(norm)
        make_norm(info.name, 2)  # a drop-in norm, or the clear error
        return functools.partial(norm_layer, info.name, layout="nlc", **norm_kwargs)
    return functools.partial(norm, **norm_kwargs)


class _Stack(nn.Module):
    """A model with the blocks between the embedding and the head (``blocks``), the placement's embedding norm
    (``embed_norm``, or None) and final norm (``norm``)."""

    def _build_stack(
        self,
        dim: int,
        depth: int,
        heads: int,
        norm: LayerType,
        act: LayerType,
        attention: str,
        placement: str,
        causal: bool,
        rope: bool,
        mlp_ratio: float,
        bias: bool,
        attention_kwargs: Mapping[str, Any] | None,
        block_kwargs: Mapping[str, Any] | None,
        norm_kwargs: Mapping[str, Any] | None,
        device: Any,
        dtype: Any,
    ) -> None:
        self.dim = check_int("dim", dim)
        norm = with_norm_kwargs(norm, norm_kwargs)
        self.depth = check_int("depth", depth)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.stack_placement = placement
        self.attention = attention_info(attention).name
        self.embed_norm = make_norm(norm, dim, device, dtype) if embedding_norm_of(placement) else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                heads,
                norm=norm,
                act=act,
                attention=attention,
                placement=placement,
                mlp_ratio=mlp_ratio,
                causal=causal,
                layer_index=i + 1,
                depth=depth,
                bias=bias,
                attention_kwargs=attention_kwargs,
                rope=rope,
                device=device,
                dtype=dtype,
                **dict(block_kwargs or {}),
            )
            for i in range(self.depth)
        )
        self.norm = make_norm(norm, dim, device, dtype) if final_norm_of(placement) else nn.Identity()

    @property
    def placement(self) -> str:
        return self.stack_placement

    def _run_stack(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class GPT(_Stack):
    r"""A decoder-only transformer language model: token (and learned position) embeddings, ``depth``
    :class:`~normact.TransformerBlock` s with causal self-attention, the placement's final norm and a linear head
    over the vocabulary.

    Args:
        vocab_size: the number of token ids (256: bytes).
        norm: a registered drop-in norm (``"layernorm"``, ``"rmsnorm"``, ``"dyt"``, ``"batchnorm"``...) or
            ``"none"``.
        act: the feed-forward activation; gated ones (``"swiglu"``) double the first projection.
        dim, depth, heads: width, number of blocks, attention heads.
        context: the longest sequence (the learned position table's size; with ``positions="rope"`` or
            ``"none"`` only the training length, longer inputs are allowed).
        placement: where the norms sit (:data:`normact.layers.block.transformer.PLACEMENTS`).
        attention: the attention normalizer (``"softmax"``, ``"sigmoid"``, ``"qk_norm"``, ... or its full name).
        positions: ``"learned"`` (absolute, added to the embeddings), ``"rope"`` (rotary, on queries and keys) or
            ``"none"`` (the causal mask alone tells positions apart).
        mlp_ratio: the FFN hidden width over ``dim``.
        bias: biases on the projections.
        tie_embeddings: the head shares the token embedding's weight.
        attention_kwargs: keyword arguments of the attention normalizer (e.g. ``{"seq_len": 64}``).
        block_kwargs: further :class:`TransformerBlock` arguments (``deepnorm_alpha``, ``dssn_c``...).
        norm_kwargs: hyperparameters of every norm (DyT's ``{"alpha_init": 0.2}``).

    ``forward(idx)`` takes (B, T) int64 ids and returns (B, T, vocab_size) logits; ``mask`` an optional boolean
    (B, T) padding mask (True = a real token).
    """

    def __init__(
        self,
        vocab_size: int = 256,
        norm: LayerType = "layernorm",
        act: LayerType = "gelu",
        *,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        context: int = 64,
        placement: str = "pre",
        attention: str = "softmax_attention",
        positions: str = "learned",
        mlp_ratio: float = 4,
        bias: bool = True,
        tie_embeddings: bool = False,
        attention_kwargs: Mapping[str, Any] | None = None,
        block_kwargs: Mapping[str, Any] | None = None,
        norm_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.context = check_int("context", context)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        self.positions = positions
        kw = {"device": device, "dtype": dtype}
        self.tok = nn.Embedding(self.vocab_size, dim, **kw)
        self.pos = nn.Embedding(self.context, dim, **kw) if positions == "learned" else None
        self._build_stack(
            dim,
            depth,
            heads,
            norm,
            act,
            attention,
            placement,
            True,
            positions == "rope",
            mlp_ratio,
            bias,
            attention_kwargs,
            block_kwargs,
            norm_kwargs,
            device,
            dtype,
        )
        self.head = nn.Linear(dim, self.vocab_size, bias=bias, **kw)
        if tie_embeddings:
            self.head.weight = self.tok.weight

    def forward(self, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        x = embed_tokens(idx, self.tok, self.pos, self.context, "GPT")
        return self.head(self._run_stack(x, mask))

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, dim={self.dim}, depth={self.depth}, placement={self.placement!r}, "
            f"attention={self.attention!r}, positions={self.positions!r}, context={self.context}"
        )


class ViT(_Stack):
    r"""A small Vision Transformer: non-overlapping patch embedding (a strided convolution), learned positions,
    ``depth`` :class:`~normact.TransformerBlock` s with bidirectional attention, the placement's final norm, mean
    pooling over the patches and a linear classifier.

    Args:
        in_shape: (C, H, W) of the images.
        num_classes: the classifier's outputs.
        norm, act, dim, depth, heads, placement, attention, mlp_ratio, bias, attention_kwargs, block_kwargs,
            norm_kwargs: as :class:`GPT`.
        patch: the patch size (default 4 for images of 16 pixels or more, else 2); must divide H and W.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        norm: LayerType = "layernorm",
        act: LayerType = "gelu",
        *,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        patch: int | None = None,
        placement: str = "pre",
        attention: str = "softmax_attention",
        mlp_ratio: float = 4,
        bias: bool = True,
        attention_kwargs: Mapping[str, Any] | None = None,
        block_kwargs: Mapping[str, Any] | None = None,
        norm_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {tuple(in_shape)}")
        c, h, w = (check_int(n, v) for n, v in zip(("channels", "height", "width"), in_shape, strict=True))
        patch = check_int("patch", patch or (4 if h >= 16 else 2))
        if h % patch or w % patch:
            raise ValueError(f"image {h}x{w} is not divisible into {patch}x{patch} patches")
        self.in_shape, self.patch = (c, h, w), patch
        kw = {"device": device, "dtype": dtype}
        self.embed = nn.Conv2d(c, dim, patch, patch, **kw)
        self.pos = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch), dim, **kw))
        nn.init.normal_(self.pos, std=0.02)
        self._build_stack(
            dim,
            depth,
            heads,
            norm,
            act,
            attention,
            placement,
            False,
            False,
            mlp_ratio,
            bias,
            attention_kwargs,
            block_kwargs,
            norm_kwargs,
            device,
            dtype,
        )
        self.head = nn.Linear(dim, check_int("num_classes", num_classes), **kw)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "ViT")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"ViT expects images of shape (N, {', '.join(map(str, self.in_shape))}), got {shape_str(x.shape)}"
            )
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self._run_stack(tokens, None).mean(1))


def embed_tokens(idx: Tensor, tok: nn.Embedding, pos: nn.Embedding | None, context: int, model: str) -> Tensor:
    """Token embeddings of (B, T) integer ids, plus learned positions where ``pos`` is given (then T <= ``context``);
    a clear ``ValueError`` for anything else."""
    if not isinstance(idx, Tensor) or idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 2:
        raise ValueError(f"{model} expects (B, T) integer token ids, got {_describe(idx)}")
    t = idx.shape[1]
    x = tok(idx)
    if pos is not None:
        if t > context:
            raise ValueError(f"sequence length {t} exceeds the context {context} (learned positions)")
        x = x + pos(torch.arange(t, device=idx.device))
    return x


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {shape_str(x.shape)}"
    return type(x).__name__
