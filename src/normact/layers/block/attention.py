"""Multi-head self-attention around any registered attention normalizer (a building block of the transformer
blocks, not registered itself)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int, check_tensor, shape_str
from normact.registry import get_info

__all__ = ["FeedForward", "MultiHeadAttention", "attention_info"]


def factory_kwargs(factory: Any, device: torch.device | str | None, dtype: torch.dtype | None) -> dict[str, Any]:
    """``device=``/``dtype=`` for a layer factory that accepts them (parameter-free layers do not)."""
    accepted = inspect.signature(factory).parameters
    return {k: v for k, v in (("device", device), ("dtype", dtype)) if k in accepted}


def attention_info(name: str) -> Any:
    """The registry entry of an attention normalizer: ``"sigmoid_attention"``, or ``"sigmoid"`` for short (a name
    that is not an attention normalizer itself is tried with ``_attention`` appended)."""
    if not isinstance(name, str):
        raise TypeError(f"attention must be a registry name, got {type(name).__name__}")
    try:
        info = get_info(name)
    except KeyError:
        info = None
    if info is None or info.kind != "attention":
        try:
            info = get_info(f"{name}_attention")
        except KeyError:
            if info is None:
                raise
    if info.kind != "attention":
        raise ValueError(f"attention must name an attention normalizer, {info.name!r} is a {info.kind}")
    return info


class MultiHeadAttention(nn.Module):
    r"""Multi-head self-attention with q/k/v/out projections around any registered attention normalizer:

    .. math::
        \mathrm{MHA}(x) = \mathrm{Concat}(\gamma_1 h_1, \dots, \gamma_H h_H)\, W_O^\top + b_O,\quad
        h_i = \mathrm{Attn}(x W_{Q,i}^\top + b_{Q,i},\ x W_{K,i}^\top,\ x W_{V,i}^\top + b_{V,i})

    over (B, T, D) inputs (see :func:`normact.functional.multi_head_attention`). The projections are the
    ``nn.Linear`` children ``q_proj``, ``k_proj`` (no bias: softmax ignores it), ``v_proj`` and ``out_proj``, so
    that model surgery (``normact.fold``, ``convert_preln_to_rmsnorm``) and hooks see them as in a Hugging Face
    model. Projections are Xavier-normal with gain 1 and zero biases; :meth:`reset_parameters` takes the gain of
    the value and output projections (DeepNorm's :math:`\beta`).

    Args:
        dim: D, the model width.
        heads: H; must divide ``dim``.
        attention: the registry name of the attention normalizer (kind ``attention``; ``"sigmoid"`` for
            ``"sigmoid_attention"``). Default: softmax.
        causal: each token attends to itself and the earlier ones only.
        bias: biases on the query, value and output projections.
        head_scale: a learnable per-head gain :math:`\gamma_i` (init 1) before :math:`W_O` (NormFormer).
        rope: rotate queries and keys by rotary position embeddings (:func:`normact.functional.rotary`).
        rope_base: the rotary base (10000).
        **attention_kwargs: passed to the normalizer (``scale=``, ``bias=``, ``seq_len=``...).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        attention: str = "softmax_attention",
        causal: bool = False,
        bias: bool = True,
        head_scale: bool = False,
        rope: bool = False,
        rope_base: float = 10000.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **attention_kwargs: Any,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.heads = check_int("heads", heads)
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        info = attention_info(attention)
        self.attention = info.name
        self.causal = bool(causal)
        self.rope_base = check_float("rope_base", rope_base, positive=True) if rope else None
        if rope and (self.dim // self.heads) % 2:
            raise ValueError(f"rope needs an even head dimension, got dim // heads = {self.dim // self.heads}")
        accepted = inspect.signature(info.factory).parameters
        shape = {"num_heads": self.heads, "heads": self.heads, "head_dim": self.dim // self.heads}
        for name, value in shape.items():  # normalizers with per-head parameters (ReLA's gated RMSNorm)
            if name in accepted and name not in attention_kwargs:
                attention_kwargs[name] = value
        self.normalizer = info.factory(**attention_kwargs, **factory_kwargs(info.factory, device, dtype))
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(self.dim, self.dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.dim, self.dim, bias=False, **kw)
        self.v_proj = nn.Linear(self.dim, self.dim, bias=bias, **kw)
        self.out_proj = nn.Linear(self.dim, self.dim, bias=bias, **kw)
        self.head_scale = nn.Parameter(torch.empty(self.heads, **kw)) if head_scale else None
        self.reset_parameters()

    def reset_parameters(self, gain: float = 1.0) -> None:
        """Xavier-normal projections (gain 1 for queries and keys, ``gain`` for values and output), zero biases,
        head scales 1, and the normalizer's own parameters reset."""
        for proj, g in ((self.q_proj, 1.0), (self.k_proj, 1.0), (self.v_proj, gain), (self.out_proj, gain)):
            nn.init.xavier_normal_(proj.weight, gain=g)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        if self.head_scale is not None:
            nn.init.ones_(self.head_scale)
        if hasattr(self.normalizer, "reset_parameters"):
            self.normalizer.reset_parameters()

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` (B, T, D); ``mask`` a boolean (B, T) padding mask (True = attend); with ``need_weights`` also
        the attention weights (B, H, T, T)."""
        check_tensor(x, "MultiHeadAttention")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"MultiHeadAttention expects input of shape (B, T, {self.dim}), got shape {shape_str(x.shape)}"
            )
        q = NF.split_heads(self.q_proj(x), self.heads)
        k = NF.split_heads(self.k_proj(x), self.heads)
        v = NF.split_heads(self.v_proj(x), self.heads)
        if self.rope_base is not None:
            q, k = NF.rotary(q, self.rope_base), NF.rotary(k, self.rope_base)
        out = self.normalizer(q, k, v, causal=self.causal, mask=mask, need_weights=need_weights)
        weights = None
        if need_weights:
            out, weights = out
        y = self.out_proj(NF.merge_heads(out, self.head_scale))
        return (y, weights) if need_weights else y

    def extra_repr(self) -> str:
        rope = "" if self.rope_base is None else f", rope_base={self.rope_base:g}"
        return (
            f"{self.dim}, heads={self.heads}, attention={self.attention!r}, causal={self.causal}, "
            f"bias={self.q_proj.bias is not None}, head_scale={self.head_scale is not None}{rope}"
        )


class FeedForward(nn.Module):
    r"""The position-wise feed-forward network :math:`\mathrm{FC}_2(\mathrm{Mid}(g(\mathrm{FC}_1 x)))` with
    ``nn.Linear`` children ``fc1``, ``fc2``, the activation ``act`` and NormFormer's optional ``mid_norm`` over the
    hidden width (:func:`normact.functional.feed_forward`). A gated activation (SwiGLU, GeGLU) takes ``fc1``'s
    output of twice the hidden width and halves it. Built by :class:`TransformerBlock`; its initialisation is the
    block's."""

    def __init__(self, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, mid_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = fc1, act, fc2
        self.mid_norm = mid_norm

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc1(x))
        if self.mid_norm is not None:
            h = self.mid_norm(h)
        return self.fc2(h)
