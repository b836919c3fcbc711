r"""nGPT, the normalized transformer language model (Loshchilov, Hsieh, Sun, Ginsburg, 2024, arXiv:2410.01131):
unit-norm embeddings, a stack of :class:`~normact.layers.block.normalized.NormalizedTransformerBlock` s and a head
whose logits are rescaled by a learnable :math:`s_z`.

.. code-block:: python

    model = NGPT(vocab_size=256, dim=128, depth=4, heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.0)
    ngpt_renorm_hook(optimizer, model)  # the weights back on the unit sphere after every step
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.layers.block.normalized import (
    ALPHA_INIT,
    NGPTWeights,
    NormalizedTransformerBlock,
    normalize_ngpt_weights_,
)
from normact.models.transformer import embed_tokens

__all__ = ["NGPT"]

POSITIONS = ("rope", "learned", "none")
S_Z_INIT = 1.0
"""The logit scale's initial (used) value; stored as ``base_scale``."""


class NGPT(NGPTWeights, nn.Module):
    r"""A decoder-only nGPT (Loshchilov, Hsieh, Sun, Ginsburg, 2024, arXiv:2410.01131):

    .. math::
        h_0 = \mathrm{Norm}(E_{\text{tok}}[x] \,(+\, E_{\text{pos}}[t])),\quad
        h_\ell = \mathrm{Block}_\ell(h_{\ell - 1}),\quad z = s_z \odot (E_{\text{out}}\, h_L)

    with every row of :math:`E_{\text{tok}}, E_{\text{pos}}, E_{\text{out}}` of unit norm, no final norm (the hidden
    states already have unit norm) and :math:`s_z` (vocab,) stored as ``base_scale`` and used as
    ``stored / base_scale`` (1 at init), as in the official ``model.py``. Weights are drawn from
    :math:`N(0, 1/d)` and normalized along the embedding dimension; keep them there during training with
    :meth:`normalize_weights_` after every optimizer step (or
    :func:`~normact.layers.block.normalized.ngpt_renorm_hook`), without weight decay or warmup (the paper's
    recipe). The embeddings and the head are not tied (as in the paper).

    Args:
        vocab_size: the number of token ids (256: bytes).
        dim, depth, heads: width d, number of blocks, attention heads.
        context: the longest sequence with ``positions="learned"``; with ``"rope"`` (the paper's) or ``"none"``
            only a default length, longer inputs are allowed.
        positions: ``"rope"`` (rotary, on queries and keys before their normalization), ``"learned"`` (absolute,
            added to the token embedding before the normalization) or ``"none"``.
        act: the gated MLP activation (``"swiglu"``, the paper's; ``"geglu"``, ``"reglu"``).
        mlp_ratio: the MLP hidden width over ``dim``.
        alpha_init: the blocks' eigen learning rates at init (0.05).
        base_scale: the stored scale of :math:`\alpha, s_{qk}, s_z` and the init std; default :math:`1/\sqrt{d}`.

    ``forward(idx, mask=None)`` takes (B, T) int64 ids and returns (B, T, vocab_size) logits; ``mask`` an optional
    boolean (B, T) padding mask (True = a real token).
    """

    def __init__(
        self,
        vocab_size: int = 256,
        *,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        context: int = 64,
        positions: str = "rope",
        act: str = "swiglu",
        mlp_ratio: float = 4,
        alpha_init: float = ALPHA_INIT,
        base_scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.dim = check_int("dim", dim)
        self.depth = check_int("depth", depth)
        self.context = check_int("context", context)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        self.positions = positions
        default_scale = 1.0 / math.sqrt(self.dim)
        self.base_scale = default_scale if base_scale is None else check_float("base_scale", base_scale, positive=True)
        kw = {"device": device, "dtype": dtype}
        with torch.random.fork_rng(devices=[]):  # reset_parameters draws the weights
            self.tok = nn.Embedding(self.vocab_size, self.dim, **kw)
            self.pos = nn.Embedding(self.context, self.dim, **kw) if positions == "learned" else None
            self.head = nn.Linear(self.dim, self.vocab_size, bias=False, **kw)
            self.blocks = nn.ModuleList(
                NormalizedTransformerBlock(
                    self.dim,
                    heads,
                    act=act,
                    mlp_ratio=mlp_ratio,
                    causal=True,
                    rope=positions == "rope",
                    alpha_init=alpha_init,
                    base_scale=self.base_scale,
                    layer_index=i + 1,
                    depth=self.depth,
                    **kw,
                )
                for i in range(self.depth)
            )
        self.s_z = nn.Parameter(torch.empty(self.vocab_size, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings, head and blocks drawn again (std ``base_scale``) and normalized; :math:`s_z` stored as
        ``base_scale``."""
        for table in (self.tok, self.pos):
            if table is not None:
                nn.init.normal_(table.weight, std=self.base_scale)
        nn.init.normal_(self.head.weight, std=self.base_scale)
        for block in self.blocks:
            block.reset_parameters()
        with torch.no_grad():
            self.s_z.fill_(self.base_scale)
        self.normalize_weights_()

    def ngpt_unit_weights(self) -> Iterator[tuple[Tensor, int]]:
        """The embedding tables' and the head's rows (the blocks list their own)."""
        for table in (self.tok, self.pos):
            if table is not None:
                yield table.weight, 1
        yield self.head.weight, 1

    def normalize_weights_(self) -> NGPT:
        """Every weight vector along the embedding dimension back to unit norm (after each optimizer step)."""
        normalize_ngpt_weights_(self)
        return self

    def hidden_states(self, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        """The last block's output (B, T, dim), unit-norm rows."""
        h = NF.ngpt_normalize(embed_tokens(idx, self.tok, self.pos, self.context, "NGPT"))
        for block in self.blocks:
            h = block(h, mask)
        return h

    def forward(self, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.hidden_states(idx, mask)
        s_z = NF.ngpt_scaled(self.s_z, S_Z_INIT, self.base_scale)
        return s_z * self.head(h)

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, dim={self.dim}, depth={self.depth}, positions={self.positions!r}, "
            f"context={self.context}, base_scale={self.base_scale:.6g}"
        )
