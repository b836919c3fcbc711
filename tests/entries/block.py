"""Harness entries of the transformer residual blocks (registry kind ``block``): one per placement. The input is
(B, T, D) tokens; a boolean (B, T) padding mask is a conditioning input in some cases. The float64 reference
rebuilds the whole block from its parameters with explicit formulas (einsum attention, LayerNorm/RMSNorm, GELU,
SwiGLU) and never calls normact or torch's attention and norm modules."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout

# widths 8..28 in the property tests (2 heads): a norm over a few features of nearly equal values is ill-conditioned
# (over 2 it is the sign of a - b), and in bfloat16 (8-bit mantissa) the block's rounding then moves the output
# by more than any tolerance (seen at widths 2 and 4); float32 and float16 are fine there
BLOCK = Layout(feature_arg="dim", feature_axis=-1, ranks=(3,), init_for=lambda f: ({"dim": 4 * (f + 1)}, 4 * (f + 1)))
SHAPE = (2, 5, 8)
BASE = {"dim": 8, "heads": 2}
# a whole block in low precision is a dozen rounded operations deep, against one for a single layer
TOLERANCES = {torch.bfloat16: (1e-1, 6e-2), torch.float16: (3e-2, 2e-2)}


def padding(shape, g):
    """A (B, T) mask: the second sample's last two tokens are padding (not attended)."""
    m = torch.ones(shape[0], shape[1], dtype=torch.bool)
    if shape[0] > 1 and shape[1] > 2:
        m[1, -2:] = False
    return {"mask": m}


# --------------------------------------------------------------------------------------------------
# float64 pieces


def _linear(x, w, b=None):
    y = torch.einsum("...i,oi->...o", x, w)
    return y if b is None else y + b


def _norm(x, p, name, hp):
    """The block's norm ``name`` (its parameters ``name.weight``/``name.bias``) over the last dim."""
    w, b = p.get(f"{name}.weight"), p.get(f"{name}.bias")
    if hp["norm"] == "layernorm":
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + 1e-5)
    elif hp["norm"] == "rmsnorm":  # torch's RMSNorm: eps = machine epsilon of the dtype inside the root
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)
    else:
        raise AssertionError(hp["norm"])
    y = y if w is None else y * w
    return y if b is None else y + b


def _act(h, name):
    if name == "gelu":
        return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    if name == "relu":
        return h.clamp_min(0.0)
    if name == "swiglu":
        a, b = h[..., : h.shape[-1] // 2], h[..., h.shape[-1] // 2 :]
        return a / (1.0 + torch.exp(-a)) * b
    raise AssertionError(name)


def _attention(x, p, hp, mask):
    b, t, d = x.shape
    heads = hp["heads"]
    hd = d // heads
    kwargs = dict(hp["attention_kwargs"] or {})

    def split(y):
        return y.reshape(b, t, heads, hd).permute(0, 2, 1, 3)

    q = split(_linear(x, p["attn.q_proj.weight"], p.get("attn.q_proj.bias")))
    k = split(_linear(x, p["attn.k_proj.weight"]))
    v = split(_linear(x, p["attn.v_proj.weight"], p.get("attn.v_proj.bias")))
    scale = kwargs.get("scale") or 1.0 / math.sqrt(hd)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) * scale
    keep = torch.ones(b, heads, t, t, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    if hp["causal"]:
        keep = keep & torch.ones(t, t, dtype=torch.bool).tril()
    if hp["attention"] == "softmax_attention":
        z = scores.masked_fill(~keep, -math.inf)
        z = z - z.amax(-1, keepdim=True).clamp_min(-1e300)
        e = torch.exp(z) * keep
        weights = e / e.sum(-1, keepdim=True).clamp_min(1e-300)
    elif hp["attention"] == "sigmoid_attention":
        bias = kwargs.get("bias")
        bias = -math.log(t) if bias is None else bias
        weights = keep / (1.0 + torch.exp(-(scores + bias)))
    else:
        raise AssertionError(hp["attention"])
    out = torch.einsum("bhts,bhse->bhte", weights, v)
    if hp["placement"] == "normformer":
        out = out * p["attn.head_scale"][None, :, None, None]
    out = out.permute(0, 2, 1, 3).reshape(b, t, d)
    return _linear(out, p["attn.out_proj.weight"], p.get("attn.out_proj.bias"))


def _ffn(x, p, hp):
    h = _act(_linear(x, p["mlp.fc1.weight"], p.get("mlp.fc1.bias")), hp["act"])
    if hp["placement"] == "normformer":
        h = _norm(h, p, "mlp.mid_norm", hp)
    return _linear(h, p["mlp.fc2.weight"], p.get("mlp.fc2.bias"))


def ref_block(x, p, hp, *, mask=None):
    """The block written out per placement (N = the norm, N_o = an output norm, A = attention, M = the FFN)."""
    placement = hp["placement"]

    def n(name, h):
        return _norm(h, p, name, hp)

    def a(h):
        return _attention(h, p, hp, mask)

    def m(h):
        return _ffn(h, p, hp)

    if hp["embedding_norm"]:
        x = n("embedding_norm", x)
    if placement == "pre":
        h = x + a(n("attn_norm", x))
        y = h + m(n("mlp_norm", h))
    elif placement == "post":
        h = n("attn_norm", x + a(x))
        y = n("mlp_norm", h + m(h))
    elif placement == "deepnorm":
        alpha = hp["deepnorm_alpha"] or (2.0 * hp["depth"]) ** 0.25
        h = n("attn_norm", alpha * x + a(x))
        y = n("mlp_norm", alpha * h + m(h))
    elif placement in ("peri", "sandwich_depth_scaled"):
        h = x + n("attn_out_norm", a(n("attn_norm", x)))
        y = h + n("mlp_out_norm", m(n("mlp_norm", h)))
    elif placement == "layernorm_scaling":
        s = 1.0 / math.sqrt(hp["layer_index"])
        h = x + a(n("attn_norm", x) * s)
        y = h + m(n("mlp_norm", h) * s)
    elif placement == "normformer":
        h = x + n("attn_out_norm", a(n("attn_norm", x)))
        y = h + m(n("mlp_norm", h))
    else:
        raise AssertionError(placement)
    return n("final_norm", y) if hp["final_norm"] else y


# --------------------------------------------------------------------------------------------------
# the same block through normact.functional's pieces

_NORMS = {  # placement -> (pre, out, post) norm names of the attention and feed-forward sub-layers
    "pre": (("attn_norm", None, None), ("mlp_norm", None, None)),
    "layernorm_scaling": (("attn_norm", None, None), ("mlp_norm", None, None)),
    "post": ((None, None, "attn_norm"), (None, None, "mlp_norm")),
    "deepnorm": ((None, None, "attn_norm"), (None, None, "mlp_norm")),
    "peri": (("attn_norm", "attn_out_norm", None), ("mlp_norm", "mlp_out_norm", None)),
    "sandwich_depth_scaled": (("attn_norm", "attn_out_norm", None), ("mlp_norm", "mlp_out_norm", None)),
    "normformer": (("attn_norm", "attn_out_norm", None), ("mlp_norm", None, None)),
}


def functional_block(x, m, mask=None):
    at = m.attn

    def attention(h):
        return NF.multi_head_attention(
            h,
            at.q_proj.weight,
            at.k_proj.weight,
            at.v_proj.weight,
            at.out_proj.weight,
            at.heads,
            at.q_proj.bias,
            at.v_proj.bias,
            at.out_proj.bias,
            at.normalizer,
            at.causal,
            mask,
            at.head_scale,
        )

    def mlp(h):
        return NF.feed_forward(
            h, m.mlp.fc1.weight, m.mlp.fc2.weight, m.mlp.act, m.mlp.fc1.bias, m.mlp.fc2.bias, m.mlp.mid_norm
        )

    attn_names, mlp_names = _NORMS[m.placement]
    attn_norms = tuple(None if n is None else getattr(m, n) for n in attn_names)
    mlp_norms = tuple(None if n is None else getattr(m, n) for n in mlp_names)
    rescale = {}
    if getattr(m, "attn_gpas", None) is not None:  # GPAS after each residual sum (tests/entries/gpas.py)
        rescale = {
            "attn_rescale": lambda t: NF.gpas(t, m.attn_gpas.alpha),
            "mlp_rescale": lambda t: NF.gpas(t, m.mlp_gpas.alpha),
        }
    return NF.transformer_block(
        x, attention, mlp, attn_norms, mlp_norms, m.alpha, m.scale, m.embedding_norm, m.final_norm, **rescale
    )


BAD_INIT = (
    {"placement": "middle"},
    {"heads": 3},
    {"layer_index": 9, "depth": 2},
    {"mlp_ratio": 0.0},
    {"norm": "td_layernorm"},
    {"norm": "gelu"},
    {"act": "layernorm"},
    {"attention": "gelu"},
    {"dssn_c": 0.0},
)


def _entry(name, *cases, bad_init=()):
    return LayerEntry(
        name=name,
        reference=ref_block,
        cases=tuple(Case(init={**BASE, **c.init}, shape=c.shape, desc=c.desc, cond_fn=c.cond_fn) for c in cases),
        functional=functional_block,
        layout=BLOCK,
        tolerances=TOLERANCES,
        bad_init=BAD_INIT + bad_init,
    )


RMS_SWIGLU_SIGMOID = {"norm": "rmsnorm", "act": "swiglu", "attention": "sigmoid_attention"}

ENTRIES = [
    _entry(
        "pre_ln_block",
        Case(shape=SHAPE),
        Case(init={"final_norm": True}, shape=SHAPE, desc="final_norm"),
        Case(init={"causal": True}, shape=SHAPE, desc="causal_padding", cond_fn=padding),
        Case(init=RMS_SWIGLU_SIGMOID, shape=SHAPE, desc="rms_swiglu_sigmoid", cond_fn=padding),
        Case(init={"bias": False, "act": "relu", "mlp_ratio": 2}, shape=(3, 4, 8), desc="no_bias_relu"),
        Case(init={"attention_kwargs": {"scale": 0.3}}, shape=SHAPE, desc="attention_kwargs"),
        bad_init=({"deepnorm_alpha": 2.0},),
    ),
    _entry(
        "post_ln_block",
        Case(shape=SHAPE),
        Case(init={"causal": True}, shape=SHAPE, desc="causal_padding", cond_fn=padding),
    ),
    _entry(
        "peri_ln_block",
        Case(shape=SHAPE),
        Case(init={"embedding_norm": True, "final_norm": True}, shape=SHAPE, desc="embedding_final"),
        Case(init=RMS_SWIGLU_SIGMOID, shape=SHAPE, desc="rms_swiglu_sigmoid", cond_fn=padding),
    ),
    _entry(
        "sandwich_depth_scaled_block",
        Case(init={"depth": 4, "layer_index": 2}, shape=SHAPE),
        Case(init={"depth": 9, "norm": "rmsnorm", "dssn_c": 0.5}, shape=SHAPE, desc="rmsnorm_c"),
    ),
    _entry(
        "deepnorm_block",
        Case(init={"depth": 6}, shape=SHAPE),
        Case(init={"deepnorm_alpha": 1.417938, "deepnorm_beta": 0.496989}, shape=SHAPE, desc="constants"),
        Case(init={"depth": 3, "causal": True}, shape=SHAPE, desc="causal_padding", cond_fn=padding),
        bad_init=({"deepnorm_alpha": 0.0}, {"deepnorm_beta": -1.0}),
    ),
    _entry(
        "layernorm_scaling_block",
        Case(init={"depth": 4, "layer_index": 3}, shape=SHAPE),
        Case(init={"depth": 2, "layer_index": 2, "causal": True}, shape=SHAPE, desc="causal_padding", cond_fn=padding),
    ),
    _entry(
        "normformer_block",
        Case(shape=SHAPE),
        Case(init={"act": "swiglu", "final_norm": True}, shape=SHAPE, desc="swiglu_final"),
        Case(init={"causal": True}, shape=SHAPE, desc="causal_padding", cond_fn=padding),
    ),
]
