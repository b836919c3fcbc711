r"""The transformer residual block with a ``placement`` argument, registered once per placement (kind ``block``),
and DeepNorm's constants.

Every placement is two residual sub-layers (attention, then the feed-forward network) of the form
:math:`y = \mathrm{Post}(\alpha x + \mathrm{Out}(F(s\,\mathrm{Pre}(x))))` (:func:`normact.functional.residual_branch`):

========================= ================================================ ==========================================
placement                 sub-layer                                        paper
========================= ================================================ ==========================================
``pre``                   :math:`x + F(\mathrm{N}(x))`                     Xiong et al. 2020, arXiv:2002.04745
``post``                  :math:`\mathrm{N}(x + F(x))`                     Xiong et al. 2020 (Vaswani et al. 2017)
``peri``                  :math:`x + \mathrm{N_o}(F(\mathrm{N}(x)))`       Kim et al. 2025, arXiv:2502.02732
``sandwich_depth_scaled`` as ``peri``, :math:`\gamma_o = c/\sqrt{L}` init  Pangu Ultra 2025, arXiv:2504.07866
``deepnorm``              :math:`\mathrm{N}(\alpha x + F(x))`, gain β init Wang et al. 2022, arXiv:2203.00555
``layernorm_scaling``     :math:`x + F(\mathrm{N}(x)/\sqrt{\ell})`         Sun et al. 2025, arXiv:2502.05795
``normformer``            Pre-LN + head scale, post-attention N, FFN mid-N Shleifer et al. 2021, arXiv:2110.09456
========================= ================================================ ==========================================

``gpas=True`` (any placement; preset ``gpas_block`` = ``pre`` + GPAS) adds GPAS (Chen et al. 2025, arXiv:2506.22049)
after each residual sum: :math:`G(t) = t - \mathrm{SiLU}(\alpha)\,\mathrm{sg}(t)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int, check_tensor, shape_str
from normact.functional.block import Norms
from normact.layers.block.attention import FeedForward, MultiHeadAttention, attention_info, factory_kwargs
from normact.layers.block.gpas import GPAS
from normact.layers.layout import is_none, norm_layer, wrapped_norm
from normact.registry import LayerType, Paper, Param, get_info, register, resolve

__all__ = ["TransformerBlock", "deepnorm_constants"]

PLACEMENTS = ("pre", "post", "peri", "sandwich_depth_scaled", "deepnorm", "layernorm_scaling", "normformer")
_OUT_NORM = ("peri", "sandwich_depth_scaled")  # an output norm on both sub-layers
_POST = ("post", "deepnorm")  # the norm after the residual sum

PRE_LN = Paper(
    "On Layer Normalization in the Transformer Architecture", 2020, "2002.04745", "Xiong, Yang, He, Zheng et al."
)
PERI_LN = Paper(
    "Peri-LN: Revisiting Normalization Layer in the Transformer Architecture", 2025, "2502.02732", "Kim et al."
)
PANGU_ULTRA = Paper(
    "Pangu Ultra: Pushing the Limits of Dense Large Language Models on Ascend NPUs", 2025, "2504.07866", "Yin et al."
)
DEEPNET = Paper("DeepNet: Scaling Transformers to 1,000 Layers", 2022, "2203.00555", "Wang, Ma, Dong, Huang et al.")
NORMFORMER = Paper(
    "NormFormer: Improved Transformer Pretraining with Extra Normalization",
    2021,
    "2110.09456",
    "Shleifer, Weston, Ott",
)
CURSE_OF_DEPTH = Paper(
    "The Curse of Depth in Large Language Models", 2025, "2502.05795", "Sun, Song, Li, Yin, Zheng, Liu"
)
GPAS_PAPER = Paper(
    "GPAS: Accelerating Convergence of LLM Pretraining via Gradient-Preserving Activation Scaling",
    2025,
    "2506.22049",
    "Chen, Xu, Liu, Li, Song, Jaiswal, Zhang, Hu, Wang, Chen, Diao, Liu, Li, Yin, Yang",
)

DEEPNORM_ARCHS = ("encoder", "decoder", "encoder-decoder")


def deepnorm_constants(
    N: int | None = None,  # noqa: N803 (the paper's symbols)
    M: int | None = None,  # noqa: N803
    arch: str = "encoder",
    stack: str | None = None,
) -> tuple[float, float]:
    r"""DeepNorm's :math:`(\alpha, \beta)` (Wang et al., 2022, Table 1) for N encoder and M decoder layers:

    - encoder-only: :math:`\alpha = (2N)^{1/4}`, :math:`\beta = (8N)^{-1/4}`;
    - decoder-only: :math:`\alpha = (2M)^{1/4}`, :math:`\beta = (8M)^{-1/4}`;
    - encoder-decoder (``stack`` = ``"encoder"`` or ``"decoder"``): encoder
      :math:`\alpha = 0.81 (N^4 M)^{1/16}`, :math:`\beta = 0.87 (N^4 M)^{-1/16}`; decoder
      :math:`\alpha = (3M)^{1/4}`, :math:`\beta = (12M)^{-1/4}`.

    :math:`\alpha` multiplies the residual before the post-norm; :math:`\beta` is the Xavier gain of the FFN,
    value and output projections.
    """
    if arch not in DEEPNORM_ARCHS:
        raise ValueError(f"arch must be one of {DEEPNORM_ARCHS}, got {arch!r}")

    def layers(name: str, value: int | None) -> int:
        if value is None:
            raise ValueError(f"deepnorm_constants(arch={arch!r}) needs {name}")
        return check_int(name, value)

    if arch == "encoder":
        n = layers("N", N)
        return (2.0 * n) ** 0.25, (8.0 * n) ** -0.25
    if arch == "decoder":
        m = layers("M", M)
        return (2.0 * m) ** 0.25, (8.0 * m) ** -0.25
    n, m = layers("N", N), layers("M", M)
    if stack == "encoder":
        return 0.81 * (n**4 * m) ** (1.0 / 16), 0.87 * (n**4 * m) ** (-1.0 / 16)
    if stack == "decoder":
        return (3.0 * m) ** 0.25, (12.0 * m) ** -0.25
    raise ValueError(f"arch='encoder-decoder' needs stack='encoder' or stack='decoder', got {stack!r}")


def _is_gated(act: LayerType) -> bool:
    """Whether a registered activation splits its input in halves (SwiGLU, GeGLU); unregistered ones are not."""
    try:
        return get_info(act).properties.gated if isinstance(act, (str, type)) else False
    except KeyError:
        return False


def make_norm(norm: LayerType, width: int, device: Any = None, dtype: Any = None) -> nn.Module:
    """A norm over the last dimension of (B, T, ``width``) tokens: a registered drop-in norm (``"layernorm"``,
    ``"rmsnorm"``; channel norms such as ``"batchnorm"`` see the tokens as (B, width, T), with statistics over the
    batch and the positions, see :func:`normact.layers.layout.norm_layer`), ``"none"`` (the identity), a class or
    a factory ``norm(width)``."""
    if isinstance(norm, str):
        if is_none(norm):
            return nn.Identity()
        info = get_info(norm)
        if info.kind != "norm":
            raise ValueError(f"norm must name a normalization layer, {info.name!r} is a {info.kind}")
        if not info.properties.drop_in:
            raise ValueError(f"norm {info.name!r} takes a conditioning input or a structured layout: not a drop-in")
        kwargs = factory_kwargs(info.factory, device, dtype)
        return norm_layer(info.name, width, "nlc", **kwargs)
    factory = resolve(norm)
    return factory(width, **factory_kwargs(factory, device, dtype))


def _reset(module: nn.Module | None) -> None:
    if module is not None and hasattr(module, "reset_parameters"):
        module.reset_parameters()


_BLOCK = dict(kind="block", functional=NF.transformer_block, input_layout="tokens")


@register(
    "gpas_block",
    paper=GPAS_PAPER,
    formula="h = G_a(x + Attn(N(x))); y = G_m(h + FFN(N(h))); G(t) = t - SiLU(alpha) sg(t), sg = stop-gradient",
    defaults={"placement": "pre", "gpas": True},
    params=(Param("attn_gpas.alpha, mlp_gpas.alpha", "()", "0"),),
    custom_backward=True,  # the stop-gradient: dG/dt = I although G(t) = (1 - SiLU(alpha)) t
    **_BLOCK,
)
@register(
    "pre_ln_block",
    paper=PRE_LN,
    formula="h = x + Attn(N(x)); y = h + FFN(N(h)) (a final N after the last block: final_norm=True)",
    defaults={"placement": "pre"},
    **_BLOCK,
)
@register(
    "post_ln_block",
    paper=PRE_LN,
    formula="h = N(x + Attn(x)); y = N(h + FFN(h))",
    defaults={"placement": "post"},
    **_BLOCK,
)
@register(
    "peri_ln_block",
    paper=PERI_LN,
    formula="h = x + N_o(Attn(N(x))); y = h + N_o(FFN(N(h))) (embedding_norm=True, final_norm=True at the ends)",
    defaults={"placement": "peri"},
    **_BLOCK,
)
@register(
    "sandwich_depth_scaled_block",
    paper=PANGU_ULTRA,
    formula="h = x + N_o(Attn(N(x))); y = h + N_o(FFN(N(h))); output-norm gains initialised c / sqrt(L)",
    defaults={"placement": "sandwich_depth_scaled"},
    params=(Param("attn_out_norm.weight, mlp_out_norm.weight", "(dim,)", "c / sqrt(depth), c = dssn_c (1.0)"),),
    aliases=("dssn_block",),
    **_BLOCK,
)
@register(
    "deepnorm_block",
    paper=DEEPNET,
    formula="h = N(alpha x + Attn(x)); y = N(alpha h + FFN(h)); v/out/FFN weights Xavier-normal with gain beta",
    defaults={"placement": "deepnorm"},
    **_BLOCK,
)
@register(
    "layernorm_scaling_block",
    paper=CURSE_OF_DEPTH,
    formula="h = x + Attn(N(x) / sqrt(l)); y = h + FFN(N(h) / sqrt(l)), l = layer_index (1-based)",
    defaults={"placement": "layernorm_scaling"},
    **_BLOCK,
)
@register(
    "normformer_block",
    paper=NORMFORMER,
    formula="h = x + N(MHA_gamma(N(x))), heads scaled by gamma before W_O; y = h + FC2(N(g(FC1(N(h)))))",
    defaults={"placement": "normformer"},
    params=(Param("attn.head_scale", "(heads,)", "1"),),
    **_BLOCK,
)
class TransformerBlock(nn.Module):
    r"""A transformer block (attention, then feed-forward) whose ``placement`` puts the norms where a paper puts
    them. Each sub-layer :math:`F` is

    .. math::
        y = \mathrm{Post}\big(\alpha\, x + \mathrm{Out}(F(s \cdot \mathrm{Pre}(x)))\big)

    - ``"pre"``: :math:`x + F(\mathrm{N}(x))`, Pre-LN (Xiong et al., 2020, arXiv:2002.04745), with a final norm
      after the last block (``final_norm=True`` there);
    - ``"post"``: :math:`\mathrm{N}(x + F(x))`, Post-LN (the original transformer, analysed in arXiv:2002.04745);
    - ``"peri"``: :math:`x + \mathrm{N}_o(F(\mathrm{N}(x)))`, Peri-LN / sandwich (Kim et al., 2025,
      arXiv:2502.02732), which also normalizes the embeddings (``embedding_norm=True`` on the first block) and
      ends with a final norm;
    - ``"sandwich_depth_scaled"``: as ``peri`` with the output norms' gains initialised to
      :math:`c/\sqrt{L}` (Pangu Ultra's depth-scaled sandwich norm, arXiv:2504.07866), L = ``depth``;
    - ``"deepnorm"``: :math:`\mathrm{N}(\alpha x + F(x))` with the value, output and FFN weights Xavier-normal
      with gain :math:`\beta` (DeepNet, Wang et al., 2022, arXiv:2203.00555); default
      :math:`\alpha = (2L)^{1/4}`, :math:`\beta = (8L)^{-1/4}` (encoder- or decoder-only, L = ``depth``; see
      :func:`deepnorm_constants` for encoder-decoder models); :math:`\alpha = \beta = 1` is Post-LN;
    - ``"layernorm_scaling"``: :math:`x + F(\mathrm{N}(x)/\sqrt{\ell})` with :math:`\ell` = ``layer_index``
      (1-based; LayerNorm Scaling, Sun et al., 2025, arXiv:2502.05795); :math:`\ell = 1` is Pre-LN;
    - ``"normformer"``: Pre-LN plus a learnable per-head gain before the output projection, a norm on the
      attention output and a norm after the FFN activation (NormFormer, Shleifer et al., 2021,
      arXiv:2110.09456).

    ``gpas=True`` adds GPAS (Chen et al., 2025, arXiv:2506.22049), :math:`G(t) = t - \mathrm{SiLU}(\alpha)\,
    \mathrm{sg}(t)` with a learnable scalar :math:`\alpha` per sub-layer (init 0, the identity), after each
    residual sum: :math:`h = G_a(x + F(\mathrm{N}(x)))` for the placements without a norm after the sum; for
    ``"post"`` and ``"deepnorm"`` on the shortcut, :math:`\mathrm{N}(\alpha\,G_a(x) + F(x))`, as the official
    code's ``deeppost_gpas``. The preset ``gpas_block`` is ``"pre"`` with GPAS (the paper's Pre + GPAS).

    Norms, activations and attention normalizers come from the registry. The projections are Xavier-normal
    (gain 1 but for DeepNorm's :math:`\beta`), biases zero.

    Args:
        dim: the model width D; ``forward`` takes (B, T, D).
        heads: attention heads; must divide ``dim``.
        norm: a registered norm over the last dimension (``"layernorm"``, ``"rmsnorm"``...), class or factory.
        act: the FFN activation; gated ones (``"swiglu"``) double the first projection.
        attention: a registered attention normalizer (``"softmax_attention"``, ``"sigmoid_attention"``...).
        placement: one of :data:`PLACEMENTS`.
        mlp_ratio: the FFN hidden width is ``round(mlp_ratio * dim)``.
        causal: causal self-attention.
        layer_index: this block's position, 1-based (LayerNorm Scaling).
        depth: the number of blocks L (DeepNorm's default constants, the depth-scaled sandwich norm).
        deepnorm_alpha, deepnorm_beta: DeepNorm's constants (``placement="deepnorm"`` only); default from depth.
        dssn_c: the depth-scaled sandwich norm's c in :math:`\gamma_o = c/\sqrt{L}` at init.
        bias: biases on the projections (but the keys').
        embedding_norm: normalize the block input first (Peri-LN's embedding norm; for the first block).
        final_norm: normalize the block output (Pre-LN / Peri-LN's last norm; for the last block).
        attention_kwargs: keyword arguments of the attention normalizer.
        rope: rotary position embeddings on queries and keys (:func:`normact.functional.rotary`).
        gpas: GPAS after each residual sum (``attn_gpas``, ``mlp_gpas``, :class:`~normact.layers.block.GPAS`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        norm: LayerType = "layernorm",
        act: LayerType = "gelu",
        attention: str = "softmax_attention",
        placement: str = "pre",
        mlp_ratio: float = 4,
        causal: bool = False,
        layer_index: int = 1,
        depth: int = 1,
        deepnorm_alpha: float | None = None,
        deepnorm_beta: float | None = None,
        dssn_c: float = 1.0,
        bias: bool = True,
        embedding_norm: bool = False,
        final_norm: bool = False,
        attention_kwargs: Mapping[str, Any] | None = None,
        rope: bool = False,
        gpas: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        if not isinstance(gpas, bool):
            raise TypeError(f"gpas must be a bool, got {type(gpas).__name__} {gpas!r}")
        self.heads = check_int("heads", heads)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement = placement
        self.depth = check_int("depth", depth)
        self.layer_index = check_int("layer_index", layer_index)
        if self.layer_index > self.depth:
            raise ValueError(f"layer_index ({self.layer_index}) must be <= depth ({self.depth})")
        self.mlp_ratio = check_float("mlp_ratio", mlp_ratio, positive=True)
        self.dssn_c = check_float("dssn_c", dssn_c, positive=True)
        if placement != "deepnorm" and (deepnorm_alpha is not None or deepnorm_beta is not None):
            raise ValueError(f"deepnorm_alpha/deepnorm_beta apply to placement='deepnorm', not {placement!r}")
        alpha, beta = deepnorm_constants(N=self.depth) if placement == "deepnorm" else (1.0, 1.0)
        self.alpha = alpha if deepnorm_alpha is None else check_float("deepnorm_alpha", deepnorm_alpha, positive=True)
        self.beta = beta if deepnorm_beta is None else check_float("deepnorm_beta", deepnorm_beta, positive=True)
        self.scale = 1.0 / math.sqrt(self.layer_index) if placement == "layernorm_scaling" else 1.0
        self.norm, self.act, self.attention = norm, act, attention_info(attention).name
        self.causal = bool(causal)
        self.attention_kwargs = dict(attention_kwargs or {})

        def new_norm(width: int = self.dim) -> nn.Module:
            return make_norm(norm, width, device, dtype)

        # the sub-layers initialise themselves as they are built; the draws happen again in reset_parameters
        # below, so that reset_parameters() after torch.manual_seed(s) reproduces a block built after it
        with torch.random.fork_rng(devices=[]):
            self.embedding_norm = new_norm() if embedding_norm else None
            self.attn_norm = new_norm()
            self.attn = MultiHeadAttention(
                self.dim,
                self.heads,
                attention,
                causal=self.causal,
                bias=bias,
                head_scale=placement == "normformer",
                rope=rope,
                device=device,
                dtype=dtype,
                **self.attention_kwargs,
            )
            self.attn_out_norm = new_norm() if placement in (*_OUT_NORM, "normformer") else None
            self.mlp_norm = new_norm()
            self.hidden = max(1, round(self.mlp_ratio * self.dim))
            self.gated = _is_gated(act)
            if isinstance(act, str) and get_info(act).kind != "act":
                raise ValueError(f"act must name an activation, {get_info(act).name!r} is a {get_info(act).kind}")
            act_factory = resolve(act)
            kw = {"device": device, "dtype": dtype}
            self.mlp = FeedForward(
                nn.Linear(self.dim, 2 * self.hidden if self.gated else self.hidden, bias=bias, **kw),
                act_factory(**factory_kwargs(act_factory, device, dtype)),
                nn.Linear(self.hidden, self.dim, bias=bias, **kw),
                new_norm(self.hidden) if placement == "normformer" else None,
            )
            self.mlp_out_norm = new_norm() if placement in _OUT_NORM else None
            self.final_norm = new_norm() if final_norm else None
        self.attn_gpas = GPAS(device=device, dtype=dtype) if gpas else None
        self.mlp_gpas = GPAS(device=device, dtype=dtype) if gpas else None
        if placement == "sandwich_depth_scaled":
            for m in (self.attn_out_norm, self.mlp_out_norm):
                if not isinstance(getattr(wrapped_norm(m), "weight", None), Tensor):
                    raise ValueError("placement='sandwich_depth_scaled' needs a norm with a gain (weight)")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal projections (gain :math:`\\beta` on the value, output and FFN weights for DeepNorm, 1
        otherwise), zero biases, norms reset; the depth-scaled sandwich norm's output gains set to
        :math:`c/\\sqrt{L}`."""
        gain = self.beta if self.placement == "deepnorm" else 1.0
        self.attn.reset_parameters(gain)
        for fc in (self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_normal_(fc.weight, gain=gain)
            if fc.bias is not None:
                nn.init.zeros_(fc.bias)
        for m in (
            self.embedding_norm,
            self.attn_norm,
            self.attn_out_norm,
            self.mlp_norm,
            self.mlp.mid_norm,
            self.mlp_out_norm,
            self.final_norm,
            self.mlp.act,
            self.attn_gpas,
            self.mlp_gpas,
        ):
            _reset(m)
        if self.placement == "sandwich_depth_scaled":
            with torch.no_grad():
                for m in (self.attn_out_norm, self.mlp_out_norm):
                    wrapped_norm(m).weight.fill_(self.dssn_c / math.sqrt(self.depth))  # type: ignore[union-attr]

    def _norms(self) -> tuple[Norms, Norms]:
        """The (pre, out, post) norms of the attention and feed-forward sub-layers."""
        if self.placement in _POST:
            return (None, None, self.attn_norm), (None, None, self.mlp_norm)
        return (self.attn_norm, self.attn_out_norm, None), (self.mlp_norm, self.mlp_out_norm, None)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, D); ``mask`` an optional boolean (B, T) padding mask of the tokens to attend (True)."""
        check_tensor(x, "TransformerBlock")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"TransformerBlock expects input of shape (B, T, {self.dim}), got shape {shape_str(x.shape)}"
            )
        attn_norms, mlp_norms = self._norms()
        return NF.transformer_block(
            x,
            lambda h: self.attn(h, mask),
            self.mlp,
            attn_norms,
            mlp_norms,
            self.alpha,
            self.scale,
            self.embedding_norm,
            self.final_norm,
            self.attn_gpas,
            self.mlp_gpas,
        )

    def extra_repr(self) -> str:
        fields = [f"{self.dim}", f"heads={self.heads}", f"placement={self.placement!r}", f"hidden={self.hidden}"]
        if self.placement == "deepnorm":
            fields += [f"alpha={self.alpha:.6g}", f"beta={self.beta:.6g}"]
        if self.placement == "layernorm_scaling":
            fields.append(f"layer_index={self.layer_index}")
        if self.placement in ("deepnorm", "sandwich_depth_scaled"):
            fields.append(f"depth={self.depth}")
        if self.attn_gpas is not None:
            fields.append("gpas=True")
        return ", ".join(fields)
