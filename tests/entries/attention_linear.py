"""Harness entries of the linear attentions (Galerkin, Fourier, TransNormer's NormAttention). The references
loop over the (query, key) pairs in float64, with the masks, LayerNorm, features, ALiBi slopes and output norm
written out; they never call normact or torch's attention."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry
from tests.entries.attention import CASES, QKV, _keep, kv


def _ln(x, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _pairwise(q, k, v, keep, factor):
    """o_t = sum over kept s of factor(t, s) (q_t . k_s) v_s, and the count of kept keys of each row."""
    b, h, t, _ = q.shape
    s = k.shape[2]
    out = torch.zeros(b, h, t, v.shape[-1], dtype=q.dtype)
    count = torch.zeros(b, h, t, 1, dtype=q.dtype)
    for i in range(b):
        for j in range(h):
            for r in range(t):
                for c in range(s):
                    if keep[i, j, r, c]:
                        out[i, j, r] = out[i, j, r] + factor(j, r, c) * (q[i, j, r] @ k[i, j, c]) * v[i, j, c]
                        count[i, j, r] += 1
    return out, count


def ref_galerkin_attention(x, p, hp, *, k, v, mask=None):
    kn, vn = _ln(k, hp["eps"]), _ln(v, hp["eps"])
    out, count = _pairwise(x, kn, vn, _keep(*x.shape[:3], k.shape[2], mask), lambda j, r, c: 1.0)
    return out / count.clamp_min(1)


def ref_fourier_attention(x, p, hp, *, k, v, mask=None):
    scale = hp["scale"] if hp["scale"] is not None else 1.0 / math.sqrt(x.shape[-1])
    qn, kn = _ln(x, hp["eps"]), _ln(k, hp["eps"])
    out, count = _pairwise(qn, kn, v, _keep(*x.shape[:3], k.shape[2], mask), lambda j, r, c: scale)
    return out / count.clamp_min(1)


def alibi_slopes(heads):
    """m_h = 2^(-8 (h+1) / P) for the largest power of two P <= H heads, then 2^(-8 (2j+1) / (2P)) for the
    remaining H - P heads (the odd members of the 2P-head sequence)."""
    power = 2 ** math.floor(math.log2(heads))
    slopes = [2.0 ** (-8.0 * (i + 1) / power) for i in range(power)]
    slopes += [2.0 ** (-8.0 * (2 * j + 1) / (2 * power)) for j in range(heads - power)]
    return slopes


def _decays(hp, heads):
    if hp["decay"] is None:
        return [1.0] * heads
    if hp["decay"] != "alibi":
        return [hp["decay"]] * heads
    layers, index = hp["num_layers"], hp["layer_index"]
    depth = 1.0 - (index / (layers - 1) if layers > 1 else 0.0) + 1e-5
    return [math.exp(-m * depth) for m in alibi_slopes(heads)]


def ref_norm_linear_attention(x, p, hp, *, k, v, mask=None):
    feature = {
        "silu": lambda z: z / (1.0 + torch.exp(-z)),
        "elu_plus_one": lambda z: torch.where(z > 0, z + 1.0, torch.exp(z)),
        "relu": lambda z: z.clamp_min(0),
        "identity": lambda z: z,
    }[hp["feature_map"]]
    lam = _decays(hp, x.shape[1])
    out, _ = _pairwise(
        feature(x), feature(k), v, _keep(*x.shape[:3], k.shape[2], mask), lambda j, r, c: lam[j] ** abs(r - c)
    )
    b, h, t, e = out.shape
    z = out if hp["per_head"] else out.permute(0, 2, 1, 3).reshape(b, t, h * e)
    rms = torch.sqrt((z * z).mean(-1, keepdim=True) + hp["eps"])
    z = z / rms if hp["norm"] == "rms" else _ln(z, hp["eps"])
    return z if hp["per_head"] else z.reshape(b, t, h, e).permute(0, 2, 1, 3)


RECURRENT_CASES = (
    Case(init={"mode": "recurrent"}, shape=(3, 2, 4, 4), desc="recurrent_padding", cond_fn=kv(mask="padding")),
    Case(init={"mode": "recurrent"}, shape=(2, 3, 3, 4), desc="recurrent_cross", cond_fn=kv(keys=6, dv=5)),
    Case(init={"mode": "recurrent"}, shape=(2, 2, 3, 4), desc="recurrent_empty", cond_fn=kv(mask="empty")),
)

ENTRIES = [
    LayerEntry(
        name="galerkin_attention",
        reference=ref_galerkin_attention,
        cases=(*CASES, *RECURRENT_CASES, Case(init={"eps": 0.1}, shape=(2, 2, 4, 4), desc="eps", cond_fn=kv())),
        functional=lambda x, m, k, v, mask=None: NF.galerkin_attention(x, k, v, False, mask, m.eps, m.mode),
        layout=QKV,
        bad_init=({"eps": 0.0}, {"mode": "fast"}),
    ),
    LayerEntry(
        name="fourier_attention",
        reference=ref_fourier_attention,
        cases=(
            *CASES,
            *RECURRENT_CASES,
            Case(init={"scale": 1.0}, shape=(2, 2, 4, 4), desc="paper_scale", cond_fn=kv(mask="padding")),
        ),
        functional=lambda x, m, k, v, mask=None: NF.fourier_attention(x, k, v, False, mask, m.scale, m.eps, m.mode),
        layout=QKV,
        bad_init=({"scale": 0.0}, {"eps": -1.0}, {"mode": "chunky"}),
    ),
    LayerEntry(
        name="norm_linear_attention",
        reference=ref_norm_linear_attention,
        cases=(
            *CASES,
            *RECURRENT_CASES,
            Case(init={"layer_index": 1, "num_layers": 3}, shape=(2, 3, 4, 4), desc="layer", cond_fn=kv()),
            Case(init={"decay": 0.5, "per_head": True}, shape=(2, 2, 4, 4), desc="per_head", cond_fn=kv()),
            Case(
                init={"decay": None, "feature_map": "elu_plus_one", "norm": "layer", "mode": "recurrent"},
                shape=(2, 2, 4, 4),
                desc="transnormer",
                cond_fn=kv(mask="padding"),
            ),
            Case(init={"feature_map": "relu"}, shape=(2, 1, 4, 4), desc="relu", cond_fn=kv(), offset=0.5),
        ),
        functional=lambda x, m, k, v, mask=None: NF.norm_linear_attention(
            x, k, v, m.head_decay(x.shape[1]), False, mask, m.feature_map, m.norm, m.per_head, m.eps, m.mode
        ),
        layout=QKV,
        bad_init=(
            {"decay": 1.5},
            {"decay": 0.0},
            {"layer_index": 5},
            {"num_layers": 0},
            {"feature_map": "tanh"},
            {"norm": "batch"},
            {"eps": 0.0},
            {"mode": "fast"},
        ),
    ),
]
