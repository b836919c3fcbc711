"""Harness entry of nGPT's normalized transformer block (``ngpt_block``). The input is (B, T, D) tokens (not unit
norm: the block normalizes its input first); a boolean (B, T) padding mask is a conditioning input in some cases.
The float64 reference writes the block out from the paper (arXiv:2410.01131, section 2) and the official
NVIDIA/ngpt model.py: L2 normalizations, einsum projections, rotate-half RoPE, an explicit masked softmax with
scale sqrt(d_k), the gated MLP with s_v sqrt(d) on the gate, the |alpha| updates."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout

# widths 8..28 with 2 heads (even head dimensions for RoPE), as the other blocks
BLOCK = Layout(feature_arg="dim", feature_axis=-1, ranks=(3,), init_for=lambda f: ({"dim": 4 * (f + 1)}, 4 * (f + 1)))
SHAPE = (2, 5, 8)
BASE = {"dim": 8, "heads": 2}
# a whole block in low precision: a dozen rounded operations deep (as tests/entries/block.py)
TOLERANCES = {torch.bfloat16: (1e-1, 6e-2), torch.float16: (3e-2, 2e-2)}


def padding(shape, g):
    """A (B, T) mask: the second sample's last two tokens are padding (not attended)."""
    m = torch.ones(shape[0], shape[1], dtype=torch.bool)
    if shape[0] > 1 and shape[1] > 2:
        m[1, -2:] = False
    return {"mask": m}


def _unit(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


def _linear(x, w):
    return torch.einsum("...i,oi->...o", x, w)


def _rope(x, base):
    """RoPE (Su et al., 2021) on (B, H, T, Dh), dimension i paired with i + Dh/2, angle t * base^(-2i/Dh)."""
    t, dh = x.shape[-2], x.shape[-1]
    half = dh // 2
    freq = torch.tensor([base ** (-2.0 * i / dh) for i in range(half)], dtype=torch.float64)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * freq[None, :]
    c, s = torch.cos(angle), torch.sin(angle)
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * c - b * s, b * c + a * s), dim=-1)


def _gated(h, name):
    """The gated activation, gate half first: g(a) * b."""
    a, b = h[..., : h.shape[-1] // 2], h[..., h.shape[-1] // 2 :]
    if name == "swiglu":
        return a / (1.0 + torch.exp(-a)) * b
    if name == "geglu":
        return 0.5 * a * (1.0 + torch.erf(a / math.sqrt(2.0))) * b
    if name == "reglu":
        return torch.where(a > 0, a, torch.zeros_like(a)) * b
    raise AssertionError(name)


def _attention(h, p, hp, mask):
    b, t, d = h.shape
    heads = hp["heads"]
    hd = d // heads
    base_scale = hp["base_scale"] or 1.0 / math.sqrt(d)

    def split(y):
        return y.reshape(b, t, heads, hd).permute(0, 2, 1, 3)

    q, k, v = (split(_linear(h, p[f"{n}_proj.weight"])) for n in "qkv")
    if hp["rope"]:
        q, k = _rope(q, hp["rope_base"]), _rope(k, hp["rope_base"])
    s_qk = (p["s_qk"] * (1.0 / base_scale)).reshape(heads, 1, hd)  # used = stored * (init 1 / base_scale)
    q, k = s_qk * _unit(q), s_qk * _unit(k)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) * math.sqrt(hd)  # sqrt(d_k), not 1/sqrt(d_k)
    keep = torch.ones(b, heads, t, t, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    if hp["causal"]:
        keep = keep & torch.ones(t, t, dtype=torch.bool).tril()
    z = scores.masked_fill(~keep, -math.inf)
    z = z - z.amax(-1, keepdim=True).clamp_min(-1e300)
    e = torch.exp(z) * keep
    weights = e / e.sum(-1, keepdim=True).clamp_min(1e-300)
    out = torch.einsum("bhts,bhse->bhte", weights, v).permute(0, 2, 1, 3).reshape(b, t, d)
    return _linear(out, p["out_proj.weight"])


def _mlp(h, p, hp):
    uv = _linear(h, p["fc1.weight"])
    gate_scale = p["s_v"] * math.sqrt(hp["dim"])  # nu <- s_nu nu sqrt(d_model)
    scale = torch.cat((gate_scale, p["s_u"]))  # u <- s_u u
    return _linear(_gated(uv * scale, hp["act"]), p["fc2.weight"])


def ref_ngpt_block(x, p, hp, *, mask=None):
    """h = Norm(x); h = Norm(h + |a_A| (Norm(h_A) - h)); y = Norm(h + |a_M| (Norm(h_M) - h))."""
    base_scale = hp["base_scale"] or 1.0 / math.sqrt(hp["dim"])
    alpha_attn = (p["alpha_attn"] * (hp["alpha_init"] / base_scale)).abs()
    alpha_mlp = (p["alpha_mlp"] * (hp["alpha_init"] / base_scale)).abs()
    h = _unit(x)
    h = _unit(h + alpha_attn * (_unit(_attention(h, p, hp, mask)) - h))
    return _unit(h + alpha_mlp * (_unit(_mlp(h, p, hp)) - h))


def functional_ngpt_block(x, m, mask=None):
    alpha = (m.alpha_init, m.base_scale)
    return NF.ngpt_block(
        x,
        m.q_proj.weight,
        m.k_proj.weight,
        m.v_proj.weight,
        m.out_proj.weight,
        m.fc1.weight,
        m.fc2.weight,
        NF.ngpt_scaled(m.s_qk, 1.0, m.base_scale),
        NF.ngpt_scaled(m.s_u, 1.0, 1.0),
        NF.ngpt_scaled(m.s_v, 1.0, 1.0),
        NF.ngpt_scaled(m.alpha_attn, *alpha),
        NF.ngpt_scaled(m.alpha_mlp, *alpha),
        m.heads,
        m.act,
        m.causal,
        mask,
        m.rope_base,
        m.eps,
    )


BAD_INIT = (
    {"heads": 3},
    {"act": "gelu"},
    {"act": "glu"},
    {"act": "layernorm"},
    {"act": NF.swiglu},
    {"alpha_init": -0.1},
    {"alpha_init": float("nan")},
    {"base_scale": 0.0},
    {"mlp_ratio": 0.0},
    {"rope": True, "rope_base": -1.0},
    {"dim": 12, "heads": 4, "rope": True},  # head dimension 3: RoPE needs it even
    {"layer_index": 3, "depth": 2},
)

ENTRIES = [
    LayerEntry(
        name="ngpt_block",
        reference=ref_ngpt_block,
        cases=(
            Case(init=BASE, shape=SHAPE),
            Case(
                init={**BASE, "causal": True, "rope": True},
                shape=SHAPE,
                desc="causal_rope_padding",
                cond_fn=padding,
            ),
            Case(init={**BASE, "alpha_init": 0.5, "act": "geglu", "mlp_ratio": 2}, shape=(3, 4, 8), desc="geglu_alpha"),
            Case(
                init={**BASE, "rope": True, "rope_base": 100.0, "base_scale": 0.5, "alpha_init": 1.0},
                shape=SHAPE,
                desc="rope_base_scale",
                cond_fn=padding,
            ),
        ),
        functional=functional_ngpt_block,
        layout=BLOCK,
        tolerances=TOLERANCES,
        bad_init=BAD_INIT,
    ),
]
