"""Multi-head self-attention around any registered attention normalizer (a building block of the transformer
blocks, not registered itself)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_int, check_tensor, shape_str
from normact.registry import get_info

__all__ = ["MultiHeadAttention"]


def factory_kwargs(factory: Any, device: torch.device | str | None, dtype: torch.dtype | None) -> dict[str, Any]:
    """``device=``/``dtype=`` for a layer factory that accepts them (parameter-free layers do not)."""
    accepted = inspect.signature(factory).parameters
    return {k: v for k, v in (("device", device), ("dtype", dtype)) if k in accepted}


class MultiHeadAttention(nn.Module):
    r"""Multi-head self-attention with q/k/v/out projections around any registered attention normalizer:

    .. math::
        \mathrm{MHA}(x) = \mathrm{Concat}(\gamma_1 h_1, \dots, \gamma_H h_H)\, W_O^\top + b_O,\quad
        h_i = \mathrm{Attn}(x W_{Q,i}^\top + b_{Q,i},\ x W_{K,i}^\top,\ x W_{V,i}^\top + b_{V,i})

    over (B, T, D) inputs (see :func:`normact.functional.multi_head_attention`). The keys have no bias (softmax
    ignores it). Projections are Xavier-normal with gain 1 and zero biases; :meth:`reset_parameters` takes the
    gain of the value and output projections (DeepNorm's :math:`\beta`).

    Args:
        dim: D, the model width.
        heads: H; must divide ``dim``.
        attention: the registry name of the attention normalizer (kind ``attention``). Default: softmax.
        causal: each token attends to itself and the earlier ones only.
        bias: biases on the query, value and output projections.
        head_scale: a learnable per-head gain :math:`\gamma_i` (init 1) before :math:`W_O` (NormFormer).
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **attention_kwargs: Any,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.heads = check_int("heads", heads)
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        if not isinstance(attention, str):
            raise TypeError(f"attention must be a registry name, got {type(attention).__name__}")
        info = get_info(attention)
        if info.kind != "attention":
            raise ValueError(f"attention must name an attention normalizer, {info.name!r} is a {info.kind}")
        self.attention = info.name
        self.causal = bool(causal)
        accepted = inspect.signature(info.factory).parameters
        shape = {"num_heads": self.heads, "heads": self.heads, "head_dim": self.dim // self.heads}
        for name, value in shape.items():  # normalizers with per-head parameters (ReLA's gated RMSNorm)
            if name in accepted and name not in attention_kwargs:
                attention_kwargs[name] = value
        self.normalizer = info.factory(**attention_kwargs, **factory_kwargs(info.factory, device, dtype))
        kw = {"device": device, "dtype": dtype}
        self.q_weight = nn.Parameter(torch.empty(self.dim, self.dim, **kw))
        self.k_weight = nn.Parameter(torch.empty(self.dim, self.dim, **kw))
        self.v_weight = nn.Parameter(torch.empty(self.dim, self.dim, **kw))
        self.out_weight = nn.Parameter(torch.empty(self.dim, self.dim, **kw))
        for name in ("q_bias", "v_bias", "out_bias"):
            self.register_parameter(name, nn.Parameter(torch.empty(self.dim, **kw)) if bias else None)
        self.head_scale = nn.Parameter(torch.empty(self.heads, **kw)) if head_scale else None
        self.reset_parameters()

    def reset_parameters(self, gain: float = 1.0) -> None:
        """Xavier-normal projections (gain 1 for queries and keys, ``gain`` for values and output), zero biases,
        head scales 1, and the normalizer's own parameters reset."""
        for w in (self.q_weight, self.k_weight):
            nn.init.xavier_normal_(w, gain=1.0)
        for w in (self.v_weight, self.out_weight):
            nn.init.xavier_normal_(w, gain=gain)
        for b in (self.q_bias, self.v_bias, self.out_bias):
            if b is not None:
                nn.init.zeros_(b)
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
        return NF.multi_head_attention(
            x,
            self.q_weight,
            self.k_weight,
            self.v_weight,
            self.out_weight,
            self.heads,
            self.q_bias,
            self.v_bias,
            self.out_bias,
            self.normalizer,
            self.causal,
            mask,
            self.head_scale,
            need_weights,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, heads={self.heads}, attention={self.attention!r}, causal={self.causal}, "
            f"bias={self.q_bias is not None}, head_scale={self.head_scale is not None}"
        )
