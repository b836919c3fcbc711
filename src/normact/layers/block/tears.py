r"""The normalization recipe of "Transformers without Tears" (Nguyen & Salazar, 2019, arXiv:1910.05895) beyond
ScaleNorm (:class:`~normact.ScaleNorm`, registered as ``scalenorm``): FixNorm word embeddings of a fixed length
and the paper's smaller initialization of the attention projections, for normact's transformer blocks (with
``placement="pre"`` and ``norm="scalenorm"`` they are the paper's PreNorm + ScaleNorm model)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int
from normact.layers.block.attention import FeedForward, MultiHeadAttention

__all__ = ["FixNormEmbedding", "tears_attention_std", "tears_init_"]


class FixNormEmbedding(nn.Module):
    r"""FixNorm embeddings of a fixed length (Transformers without Tears, Nguyen & Salazar, 2019, arXiv:1910.05895).

    FixNorm is from Nguyen & Chiang (2018, arXiv:1710.01329): every row of the table normalized to one fixed
    length g,

    .. math::
        e_i = g\,\frac{E_i}{\max(\lVert E_i\rVert_2, \epsilon)}

    As the authors' code (tnq177/transformers_without_tears, ``model.py``): the table is drawn from
    :math:`U(-0.01, 0.01)`, its rows are ``F.normalize`` d (:math:`\epsilon = 10^{-12}`) and the input embeddings
    multiplied by :math:`\sqrt{d}`, so the default length is :math:`g = \sqrt{d}`; the output layer tied to the
    embeddings uses the unit rows (:meth:`unit_weight`, length 1).

    Args:
        num_embeddings: the vocabulary size.
        embedding_dim: d.
        length: g > 0; default :math:`\sqrt{d}`.
        eps: the smallest row norm divided by. Default: 1e-12.

    Shape:
        Input: integer ids of any shape (*); output (*, embedding_dim).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        length: float | None = None,
        eps: float = 1e-12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = check_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_int("embedding_dim", embedding_dim)
        self.length = math.sqrt(self.embedding_dim) if length is None else check_float("length", length, positive=True)
        self.eps = check_eps(eps)
        self.weight = nn.Parameter(torch.empty(self.num_embeddings, self.embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The table ~ U(-0.01, 0.01) (the authors' initialization with FixNorm)."""
        with torch.no_grad():
            self.weight.uniform_(-0.01, 0.01)

    def unit_weight(self) -> Tensor:
        """The table with unit rows, :math:`E_i / \\lVert E_i\\rVert` (the tied output projection's weight)."""
        ids = torch.arange(self.num_embeddings, device=self.weight.device)
        return NF.fix_norm_embedding(ids, self.weight, 1.0, self.eps)

    def forward(self, indices: Tensor) -> Tensor:
        return NF.fix_norm_embedding(indices, self.weight, self.length, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, length={self.length:.6g}"


def tears_attention_std(dim: int) -> float:
    r"""The paper's standard deviation of the attention projections, :math:`\sqrt{2/(5d)}`: Xavier-normal's for a
    (d, 4d) feed-forward layer, smaller than Xavier's :math:`\sqrt{1/d}` for a (d, d) projection."""
    return math.sqrt(2.0 / (5.0 * check_int("dim", dim)))


def tears_init_(module: nn.Module) -> nn.Module:
    r"""Re-initialize the attention and feed-forward layers of ``module`` (a :class:`~normact.TransformerBlock`,
    :class:`~normact.GPT`, :class:`~normact.ViT`, or any model holding normact's
    :class:`~normact.layers.block.attention.MultiHeadAttention` / ``FeedForward`` or ``torch.nn.MultiheadAttention``)
    as "Transformers without Tears" (Nguyen & Salazar, 2019, arXiv:1910.05895) does:

    - the query, key, value and output projections :math:`\sim \mathcal N(0, 2/(5d))`, d the model width
      (:func:`tears_attention_std`), their biases 0;
    - the feed-forward layers Xavier-normal, :math:`\mathcal N(0, 2/(d_\mathrm{in} + d_\mathrm{out}))`, biases 0
      (:math:`\sqrt{2/(5d)}` too for the 4x expansion).

    As the authors' code (tnq177/transformers_without_tears, ``layers.py``: "Xavier normal [for attention] is too
    big and causes instability in PostNorm, so we use the smaller std of the feedforward module"). Norms, embeddings
    and heads are left as they are (the paper's ScaleNorm starts at :math:`g = \sqrt{d}`, normact's default; see
    :class:`FixNormEmbedding` for the embeddings). Calling a block's ``reset_parameters()`` afterwards restores its
    own (Xavier) initialization. Returns ``module``; raises ``ValueError`` if it holds no attention or feed-forward
    layer."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"tears_init_ expects an nn.Module, got {type(module).__name__}")
    found = 0
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, MultiHeadAttention):
                std = tears_attention_std(m.dim)
                for proj in (m.q_proj, m.k_proj, m.v_proj, m.out_proj):
                    _normal_zero_bias(proj.weight, proj.bias, std)
                found += 1
            elif isinstance(m, nn.MultiheadAttention):
                std = tears_attention_std(m.embed_dim)
                if m.in_proj_weight is not None:
                    _normal_zero_bias(m.in_proj_weight, m.in_proj_bias, std)
                else:
                    for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight):
                        nn.init.normal_(w, 0.0, std)
                    if m.in_proj_bias is not None:
                        nn.init.zeros_(m.in_proj_bias)
                _normal_zero_bias(m.out_proj.weight, m.out_proj.bias, std)
                found += 1
            elif isinstance(m, FeedForward):
                for fc in (m.fc1, m.fc2):
                    nn.init.xavier_normal_(fc.weight)
                    if fc.bias is not None:
                        nn.init.zeros_(fc.bias)
                found += 1
    if not found:
        raise ValueError(f"tears_init_: {type(module).__name__} holds no attention or feed-forward layer to initialize")
    return module


def _normal_zero_bias(weight: Tensor, bias: Tensor | None, std: float) -> None:
    nn.init.normal_(weight, 0.0, std)
    if bias is not None:
        nn.init.zeros_(bias)
