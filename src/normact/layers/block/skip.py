r"""A stack of transformer blocks whose learned per-token gates skip a symmetric span of the middle blocks
(Lawson & Aitchison, 2025). A composition of given :class:`TransformerBlock` s, not a registered layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_tensor, shape_str
from normact.layers.block.attention import MultiHeadAttention
from normact.layers.block.transformer import TransformerBlock

__all__ = ["MiddleSkipStack"]

_POST = ("post", "deepnorm")  # a norm after the residual sum: a gate of 0 would not give the identity


class MiddleSkipStack(nn.Module):
    r"""Learning to Skip the Middle Layers of Transformers (Lawson & Aitchison, 2025, arXiv:2506.21103): L
    transformer blocks (Peri-LN / sandwich in the paper) whose per-token gates :math:`g_\ell \in [0, 1]` skip a
    symmetric span of the central blocks,

    .. math::
        a = h + g_\ell \odot \mathrm{N_o}(\mathrm{GatedAttn}(\mathrm{N}(h), g_\ell)),\quad
        h' = a + g_\ell \odot \mathrm{N_o}(\mathrm{FFN}(\mathrm{N}(a))),

    with, for the first L/2 blocks, a router :math:`s_\ell = \mathrm{ReLU}(w_\ell \cdot h_\ell + b_\ell)` on the
    block's input, :math:`S_\ell = \sum_{k \le \ell} s_k`, :math:`g_\ell = 1 - \mathrm{clamp}(S_\ell, 0, 1)`, and
    :math:`g_{L-1-\ell} = g_\ell` for the second half (:func:`normact.functional.skip_gate`). Where
    :math:`g_\ell = 0` the block is the identity for that token (its computation could be skipped), and so are all
    the blocks between it and its mirror; gated attention adds :math:`\log \max(g_j, 10^{-6})` to the scores of
    key :math:`j`, which hides skipped positions from the other tokens
    (:func:`normact.functional.gated_softmax_attention`). The routers' weights start
    :math:`\mathcal{N}(0, 0.02^2)`, their biases 0 (the official training scripts' ``zero_init_masks False`` with
    the Llama initializer range); ``router_std=0`` starts them at zero (the code's default), where every gate is
    1 and the stack is the dense one, but where ReLU passes the routers no gradient. The paper reports no gain in
    validation cross-entropy against estimated FLOPs over smaller dense baselines at the scales it tried.

    What this implementation leaves to the caller or simplifies: the gates multiply the branches, the skipped
    computation is still done (no FLOP saving; the paper's training does the same); gated attention needs softmax
    attention (``gated_attention=False`` keeps the blocks' own attention normalizer, gating only the residual
    branches); the sparsity regularizer is :func:`normact.functional.skip_gate_loss` on the gates that
    ``forward(..., return_gates=True)`` returns, with targets and the adaptive coefficients' update in
    :func:`~normact.functional.skip_gate_targets` and :func:`~normact.functional.skip_gate_coef_update` (the
    training loop calls them); the model's input and output norms sit outside the stack.

    Args:
        blocks: an even number L >= 2 of :class:`TransformerBlock` of one width, with no norm after the residual
            sum (not ``"post"``/``"deepnorm"``), no ``embedding_norm``/``final_norm`` and no GPAS, so that a gate
            of 0 is the identity; the paper's are ``placement="peri"``.
        gated_attention: hide gated positions in the attention (softmax attention only).
        eps: the gate's floor inside the log of gated attention (1e-6).
        router_std: the standard deviation of the routers' initial weights (0.02; 0 for zeros).

    Shape:
        (B, T, D) in and out; ``return_gates=True`` also returns the gates (L, B, T).
    """

    def __init__(
        self,
        blocks: Sequence[TransformerBlock],
        *,
        gated_attention: bool = True,
        eps: float = 1e-6,
        router_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        blocks = list(blocks)
        if len(blocks) < 2 or len(blocks) % 2:
            raise ValueError(f"MiddleSkipStack needs an even number of blocks >= 2, got {len(blocks)}")
        for i, b in enumerate(blocks):
            if not isinstance(b, TransformerBlock):
                raise TypeError(f"blocks[{i}] must be a normact TransformerBlock, got {type(b).__name__}")
            if b.placement in _POST or b.embedding_norm is not None or b.final_norm is not None:
                raise ValueError(
                    f"blocks[{i}]: a gate of 0 must leave the stream unchanged: no norm after the residual sum "
                    f"(placement {b.placement!r}), no embedding_norm or final_norm"
                )
            if b.attn_gpas is not None:
                raise ValueError(f"blocks[{i}]: GPAS scales the stream even where the gate is 0")
            if b.dim != blocks[0].dim:
                raise ValueError(f"blocks[{i}] has width {b.dim}, blocks[0] {blocks[0].dim}: one width")
            if gated_attention and b.attention != "softmax_attention":
                raise ValueError(
                    f"blocks[{i}]: gated attention is defined for softmax attention, got {b.attention!r} "
                    "(use gated_attention=False)"
                )
        if not isinstance(gated_attention, bool):
            raise TypeError(f"gated_attention must be a bool, got {gated_attention!r}")
        self.dim = blocks[0].dim
        self.depth = len(blocks)
        self.gated_attention = gated_attention
        self.eps = check_float("eps", eps, positive=True, high=1.0)
        self.router_std = check_float("router_std", router_std, nonnegative=True)
        self.blocks = nn.ModuleList(blocks)
        kw = {"device": device, "dtype": dtype}
        self.routers = nn.ModuleList(nn.Linear(self.dim, 1, **kw) for _ in range(self.depth // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Router weights :math:`\mathcal{N}(0, \sigma^2)` with :math:`\sigma` = ``router_std`` (zeros for 0: every
        gate 1, the dense stack), biases zero; the blocks keep their parameters."""
        for r in self.routers:
            nn.init.normal_(r.weight, std=self.router_std) if self.router_std > 0 else nn.init.zeros_(r.weight)
            nn.init.zeros_(r.bias)

    def _attention(self, attn: MultiHeadAttention, g: Tensor, mask: Tensor | None) -> Callable[[Tensor], Tensor]:
        def gated(h: Tensor) -> Tensor:
            q = NF.split_heads(attn.q_proj(h), attn.heads)
            k = NF.split_heads(attn.k_proj(h), attn.heads)
            v = NF.split_heads(attn.v_proj(h), attn.heads)
            if attn.rope_base is not None:
                q, k = NF.rotary(q, attn.rope_base), NF.rotary(k, attn.rope_base)
            scale = getattr(attn.normalizer, "scale", None)
            out = NF.gated_softmax_attention(q, k, v, g, attn.causal, mask, scale, self.eps)
            return attn.out_proj(NF.merge_heads(out, attn.head_scale))

        if self.gated_attention:
            return gated
        return lambda h: attn(h, mask)

    def _block(self, block: TransformerBlock, h: Tensor, g: Tensor, mask: Tensor | None) -> Tensor:
        gate = g.unsqueeze(-1).to(h.dtype)
        (pre_a, out_a, _), (pre_m, out_m, _) = block._norms()

        def gated(norm: nn.Module | None) -> Callable[[Tensor], Tensor]:
            return lambda t: gate * (t if norm is None else norm(t))

        return NF.transformer_block(
            h,
            self._attention(block.attn, g, mask),
            block.mlp,
            (pre_a, gated(out_a), None),
            (pre_m, gated(out_m), None),
            block.alpha,
            block.scale,
        )

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_gates: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` (B, T, D); ``mask`` an optional boolean (B, T) padding mask; with ``return_gates`` also the gates
        (L, B, T), in float32 or float64."""
        check_tensor(x, "MiddleSkipStack")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"MiddleSkipStack expects input of shape (B, T, {self.dim}), got shape {shape_str(x.shape)}"
            )
        half = self.depth // 2
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        gates: list[Tensor] = []
        accumulated: Tensor | None = None
        h = x
        for i, block in enumerate(self.blocks):
            if i < half:
                s = F.relu(self.routers[i](h)).squeeze(-1).to(work)
                accumulated = s if accumulated is None else accumulated + s
                gates.append(NF.skip_gate(accumulated))
            else:
                gates.append(gates[self.depth - 1 - i])
            h = self._block(block, h, gates[-1], mask)
        return (h, torch.stack(gates)) if return_gates else h

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, depth={self.depth}, gated_attention={self.gated_attention}, eps={self.eps:g}, "
            f"router_std={self.router_std:g}"
        )
