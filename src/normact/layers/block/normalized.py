r"""nGPT's normalized transformer block (registry kind ``block``, name ``ngpt_block``) and the weight normalization
that nGPT applies after every optimizer step (:func:`normalize_ngpt_weights_`, :func:`ngpt_renorm_hook`).

In nGPT (Loshchilov, Hsieh, Sun, Ginsburg, 2024, arXiv:2410.01131) there are no LayerNorm or RMSNorm layers:
hidden states, embeddings and every weight vector along the embedding dimension have unit norm. A training loop
keeps the weights there by renormalizing them after each optimizer step:

.. code-block:: python

    model = normact.models.NGPT(vocab_size=256, dim=128, depth=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.0)  # no weight decay, no warmup
    handle = normact.ngpt_renorm_hook(optimizer, model)  # model.normalize_weights_() after every step
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int, check_tensor, shape_str
from normact.functional.ngpt import DEFAULT_EPS
from normact.layers.block.attention import factory_kwargs
from normact.registry import Paper, Param, get_info, register, resolve

__all__ = ["NormalizedTransformerBlock", "ngpt_renorm_hook", "normalize_ngpt_weights_"]

NGPT = Paper(
    "nGPT: Normalized Transformer with Representation Learning on the Hypersphere",
    2024,
    "2410.01131",
    "Loshchilov, Hsieh, Sun, Ginsburg",
)

GATED_ACTS = ("swiglu", "geglu", "reglu")
"""The gated activations the block takes: gate half first (normact's layout), the gate rescaled by sqrt(d)."""

ALPHA_INIT = 0.05
"""The eigen learning rates' initial (used) value, :math:`\\alpha_{A}` and :math:`\\alpha_{M}` (official model.py)."""
S_QK_INIT = 1.0
"""The query/key scale's initial (used) value; stored as ``base_scale``."""
S_UV_INIT = 1.0
"""The MLP scales' initial value; stored as 1 (their base scale is 1)."""


class NGPTWeights:
    """Mixin of the nGPT modules: :meth:`ngpt_unit_weights` lists the module's own weight matrices with the axis
    along which each vector of the embedding dimension lies (:func:`normalize_ngpt_weights_` normalizes them)."""

    def ngpt_unit_weights(self) -> Iterator[tuple[Tensor, int]]:
        raise NotImplementedError


@register(
    "ngpt_block",
    kind="block",
    paper=NGPT,
    formula=(
        "h = Norm(x); h = Norm(h + |a_A| (Norm(Attn(h)) - h)); y = Norm(h + |a_M| (Norm(MLP(h)) - h)); "
        "Attn: q, k = s_qk Norm(q), s_qk Norm(k) per head after RoPE, softmax(sqrt(d_k) q k^T) v W_O; "
        "MLP: W_2 (SiLU(s_v sqrt(d) v) * s_u u), (v, u) = W_1 h; Norm(x) = x / ||x||"
    ),
    functional=NF.ngpt_block,
    params=(
        Param("alpha_attn, alpha_mlp", "(dim,)", "base_scale (used as stored * alpha_init / base_scale = 0.05)"),
        Param("s_qk", "(dim,)", "base_scale (used as stored / base_scale = 1)"),
        Param("s_u, s_v", "(hidden,)", "1 (used as stored; s_v times sqrt(dim))"),
        Param(
            "q_proj.weight, k_proj.weight, v_proj.weight, out_proj.weight, fc1.weight, fc2.weight",
            "(out, in)",
            "N(0, base_scale^2), then unit norm along the embedding dimension",
        ),
    ),
    input_layout="tokens",
)
class NormalizedTransformerBlock(NGPTWeights, nn.Module):
    r"""The normalized transformer block of nGPT (Loshchilov, Hsieh, Sun, Ginsburg, 2024, arXiv:2410.01131):
    attention and MLP move the unit-norm hidden state towards their own normalized outputs, by learnable
    per-dimension eigen learning rates,

    .. math::
        h &\leftarrow \mathrm{Norm}\big(h + |\alpha_A| \odot (\mathrm{Norm}(h_A) - h)\big),\\
        h &\leftarrow \mathrm{Norm}\big(h + |\alpha_M| \odot (\mathrm{Norm}(h_M) - h)\big),\qquad
        \mathrm{Norm}(x) = x / \lVert x\rVert_2,

    where :math:`h_A` is attention with per-head :math:`q, k \leftarrow s_{qk} \odot \mathrm{Norm}(q),\ s_{qk} \odot
    \mathrm{Norm}(k)` after RoPE and softmax scale :math:`\sqrt{d_k}`, and :math:`h_M = W_2 (\mathrm{SiLU}(s_\nu
    \odot \nu \sqrt{d}) \odot s_u \odot u)` with :math:`(\nu, u) = W_1 h` (see :func:`normact.functional.ngpt_block`).
    There are no norm layers and no biases. The input is normalized first (a no-op on the unit-norm states of an
    nGPT), so every output row has unit norm.

    The scales are stored and used as in the official code (NVIDIA/ngpt ``model.py``): :math:`\alpha_A,
    \alpha_M` are stored as ``base_scale`` (:math:`1/\sqrt{d}`) and used as ``stored * alpha_init / base_scale``
    (0.05 at init), :math:`s_{qk}` is stored as ``base_scale`` and used as ``stored / base_scale`` (1 at init),
    :math:`s_u, s_\nu` are stored and used as 1 at init. Weights are drawn from :math:`N(0, \text{base\_scale}^2)`
    and normalized along the embedding dimension, as the official ``train.py`` does before the first step; call
    :func:`normalize_ngpt_weights_` (or register :func:`ngpt_renorm_hook`) after every optimizer step, and train
    without weight decay.

    Deliberate differences from the official code: RoPE is normact's rotate-half layout
    (:func:`normact.functional.rotary`); ``Norm`` divides by :math:`\max(\lVert x\rVert, \epsilon)` (zero vectors
    stay finite); the official code also multiplies :math:`u` by :math:`\sqrt{d}` (``suv`` covers both halves), which
    the paper does not and which :math:`\mathrm{Norm}(h_M)` cancels exactly.

    Args:
        dim: the model width d; ``forward`` takes (B, T, d).
        heads: attention heads; must divide ``dim``.
        act: the gated activation, gate half first: ``"swiglu"`` (the paper's), ``"geglu"`` or ``"reglu"``.
        mlp_ratio: the MLP hidden width is ``round(mlp_ratio * dim)`` (4 in the paper).
        causal: causal self-attention.
        rope: rotary position embeddings on queries and keys, before their normalization.
        rope_base: the rotary base.
        alpha_init: the eigen learning rates' initial used value (0.05; 0 makes the block the identity on unit-norm
            input, 1 replaces each state by the normalized branch output).
        base_scale: the stored scale of :math:`\alpha_A, \alpha_M, s_{qk}` and the weights' init std; default
            :math:`1/\sqrt{d}`.
        eps: the smallest norm divided by.
        layer_index, depth: this block's position (1-based) and the number of blocks, accepted as
            :class:`~normact.layers.block.transformer.TransformerBlock` takes them (so that ``normact.create(name,
            dim, heads, depth=..., layer_index=...)`` builds any block); the nGPT block does not depend on them.

    Shape:
        Input (B, T, dim) and an optional boolean (B, T) padding mask (True = attend); output (B, T, dim) with
        unit-norm rows.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        act: str = "swiglu",
        mlp_ratio: float = 4,
        causal: bool = False,
        rope: bool = False,
        rope_base: float = 10000.0,
        alpha_init: float = ALPHA_INIT,
        base_scale: float | None = None,
        eps: float = DEFAULT_EPS,
        layer_index: int = 1,
        depth: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.heads = check_int("heads", heads)
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        self.head_dim = self.dim // self.heads
        if rope and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dimension, got dim // heads = {self.head_dim}")
        if not isinstance(act, str):
            raise TypeError(f"act must be a registry name, one of {GATED_ACTS}, got {type(act).__name__}")
        act_name = get_info(act).name
        if act_name not in GATED_ACTS:
            raise ValueError(f"act must be a gated activation with the gate first, one of {GATED_ACTS}, got {act!r}")
        self.act_name = act_name
        self.mlp_ratio = check_float("mlp_ratio", mlp_ratio, positive=True)
        self.hidden = max(1, round(self.mlp_ratio * self.dim))
        self.causal = bool(causal)
        self.rope_base = check_float("rope_base", rope_base, positive=True) if rope else None
        self.alpha_init = check_float("alpha_init", alpha_init, nonnegative=True)
        default_scale = 1.0 / math.sqrt(self.dim)
        self.base_scale = default_scale if base_scale is None else check_float("base_scale", base_scale, positive=True)
        self.eps = check_eps(eps)
        self.depth = check_int("depth", depth)
        self.layer_index = check_int("layer_index", layer_index)
        if self.layer_index > self.depth:
            raise ValueError(f"layer_index ({self.layer_index}) must be <= depth ({self.depth})")
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        act_factory = resolve(act_name)
        with torch.random.fork_rng(devices=[]):  # reset_parameters draws the weights (reproducible after a seed)
            self.q_proj = nn.Linear(self.dim, self.dim, bias=False, **kw)
            self.k_proj = nn.Linear(self.dim, self.dim, bias=False, **kw)
            self.v_proj = nn.Linear(self.dim, self.dim, bias=False, **kw)
            self.out_proj = nn.Linear(self.dim, self.dim, bias=False, **kw)
            self.fc1 = nn.Linear(self.dim, 2 * self.hidden, bias=False, **kw)
            self.fc2 = nn.Linear(self.hidden, self.dim, bias=False, **kw)
        self.act = act_factory(**factory_kwargs(act_factory, device, dtype))
        self.s_qk = nn.Parameter(torch.empty(self.dim, **kw))
        self.alpha_attn = nn.Parameter(torch.empty(self.dim, **kw))
        self.alpha_mlp = nn.Parameter(torch.empty(self.dim, **kw))
        self.s_u = nn.Parameter(torch.empty(self.hidden, **kw))
        self.s_v = nn.Parameter(torch.empty(self.hidden, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights from :math:`N(0, \\text{base\\_scale}^2)`, normalized along the embedding dimension; the scales
        at their stored initial values (``base_scale`` for the eigen learning rates and :math:`s_{qk}`, 1 for
        :math:`s_u, s_\\nu`)."""
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.fc1, self.fc2):
            nn.init.normal_(linear.weight, std=self.base_scale)
        with torch.no_grad():
            for p in (self.s_qk, self.alpha_attn, self.alpha_mlp):
                p.fill_(self.base_scale)
            self.s_u.fill_(S_UV_INIT)
            self.s_v.fill_(S_UV_INIT)
        normalize_ngpt_weights_(self)

    def ngpt_unit_weights(self) -> Iterator[tuple[Tensor, int]]:
        """(weight, axis) pairs: the rows of the input projections (q, k, v, fc1) and the columns of the output
        projections (out, fc2) are the vectors of the embedding dimension (official ``train.py``)."""
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.fc1):
            yield linear.weight, 1
        for linear in (self.out_proj, self.fc2):
            yield linear.weight, 0

    def effective_scales(self) -> dict[str, Tensor]:
        """The used values of the stored scales: ``s_qk``, ``s_u``, ``s_v``, ``alpha_attn``, ``alpha_mlp``."""
        alpha = (self.alpha_init, self.base_scale)
        return {
            "s_qk": NF.ngpt_scaled(self.s_qk, S_QK_INIT, self.base_scale),
            "s_u": NF.ngpt_scaled(self.s_u, S_UV_INIT, 1.0),
            "s_v": NF.ngpt_scaled(self.s_v, S_UV_INIT, 1.0),
            "alpha_attn": NF.ngpt_scaled(self.alpha_attn, *alpha),
            "alpha_mlp": NF.ngpt_scaled(self.alpha_mlp, *alpha),
        }

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, dim), unit-norm rows expected (others are normalized first); ``mask`` an optional boolean
        (B, T) padding mask of the tokens to attend (True)."""
        check_tensor(x, "NormalizedTransformerBlock")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"NormalizedTransformerBlock expects input of shape (B, T, {self.dim}), got shape {shape_str(x.shape)}"
            )
        return NF.ngpt_block(
            x,
            self.q_proj.weight,
            self.k_proj.weight,
            self.v_proj.weight,
            self.out_proj.weight,
            self.fc1.weight,
            self.fc2.weight,
            heads=self.heads,
            act=self.act,
            causal=self.causal,
            mask=mask,
            rope_base=self.rope_base,
            eps=self.eps,
            **self.effective_scales(),
        )

    def extra_repr(self) -> str:
        fields = [f"{self.dim}", f"heads={self.heads}", f"act={self.act_name!r}", f"hidden={self.hidden}"]
        fields += [f"causal={self.causal}", f"alpha_init={self.alpha_init:g}", f"base_scale={self.base_scale:.6g}"]
        if self.rope_base is not None:
            fields.append(f"rope_base={self.rope_base:g}")
        return ", ".join(fields)


def _unit_weights(module: nn.Module) -> list[tuple[Tensor, int]]:
    found: dict[int, tuple[Tensor, int]] = {}  # by identity: a tied weight is normalized once
    for m in module.modules():
        if isinstance(m, NGPTWeights):
            for w, axis in m.ngpt_unit_weights():
                found.setdefault(id(w), (w, axis))
    return list(found.values())


@torch.no_grad()
def normalize_ngpt_weights_(module: nn.Module) -> nn.Module:
    r"""Normalize, in place, every weight matrix of the nGPT blocks and models inside ``module`` along the embedding
    dimension, :math:`w \leftarrow w / \lVert w\rVert_2` for each vector of length d (official ``train.py``'s
    ``normalize_matrices``): embedding and output-head rows, the rows of the q, k, v and first MLP projections,
    the columns of the attention output and second MLP projections. Call it after every optimizer step (or
    register :func:`ngpt_renorm_hook`). Returns ``module``; a ``ValueError`` if it holds no nGPT module."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"normalize_ngpt_weights_ expects an nn.Module, got {type(module).__name__}")
    weights = _unit_weights(module)
    if not weights:
        raise ValueError(f"{type(module).__name__} holds no nGPT block or model (nothing to normalize)")
    for w, axis in weights:
        w.copy_(NF.ngpt_normalize(w, dim=axis))
    return module


def ngpt_renorm_hook(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """Register :func:`normalize_ngpt_weights_` of ``model`` as a post-step hook of ``optimizer``
    (``optimizer.register_step_post_hook``), so that the weights are back on the unit sphere after every
    ``optimizer.step()``. Returns the handle (``handle.remove()`` unregisters it)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"ngpt_renorm_hook expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"ngpt_renorm_hook expects an nn.Module, got {type(model).__name__}")
    if not _unit_weights(model):
        raise ValueError(f"{type(model).__name__} holds no nGPT block or model (nothing to normalize)")

    def renormalize(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        normalize_ngpt_weights_(model)

    return optimizer.register_step_post_hook(renormalize)
