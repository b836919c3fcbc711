"""Harness entries of NaLaFormer's norm-aware linear attention and ReGLA. The references loop over the (query,
key) pairs in float64 with the feature maps, gates and norms written out from the papers and the authors' code;
they never call normact or torch's attention."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry
from tests.entries.attention import CASES, QKV, _keep, kv


def _nala_features(q, k):
    norm = torch.sqrt((q * q).sum())
    power = 3.0 * (0.5 + math.tanh(float(norm)))
    phi_q = torch.cat([(q.clamp_min(0) / norm) ** power, ((-q).clamp_min(0) / norm) ** power])
    cube = k * k * k
    return phi_q, torch.cat([cube.clamp_min(0), (-cube).clamp_min(0)])


def ref_nala_attention(x, p, hp, *, k, v, mask=None):
    b, h, t, _ = x.shape
    keep = _keep(b, h, t, k.shape[2], mask)
    out = torch.zeros(b, h, t, v.shape[-1], dtype=torch.float64)
    for i in range(b):
        for j in range(h):
            for r in range(t):
                kept = [c for c in range(k.shape[2]) if keep[i, j, r, c]]
                dots = []
                for c in kept:
                    phi_q, phi_k = _nala_features(x[i, j, r], k[i, j, c])
                    dots.append(phi_q @ phi_k)
                total = sum(dots) + len(kept) * hp["eps"]
                for c, dot in zip(kept, dots, strict=True):
                    out[i, j, r] = out[i, j, r] + dot / total * v[i, j, c]
    return out


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def _gate_value(bias, extra, i, j, pos, f):
    """bias_h + extra[b, h, pos, f] with the broadcasting of a (B|1, H|1, P|1, D|1) tensor."""
    value = float(bias[j if bias.numel() > 1 else 0])
    if extra is not None:
        e = extra.reshape((1,) * (4 - extra.dim()) + tuple(extra.shape))
        idx = [i, j, pos, f]
        value += float(e[tuple(n if e.shape[a] > 1 else 0 for a, n in enumerate(idx))])
    return value


def ref_regla_attention(x, p, hp, *, k, v, mask=None, gate_logits=None, refine_logits=None):
    b, h, t, d = x.shape
    s_len = k.shape[2]
    keep = _keep(b, h, t, s_len, mask)
    scale = hp["scale"] if hp["scale"] is not None else 1.0 / (math.e * math.sqrt(d * (math.e**2 - 1.0)))

    def forget(i, j, pos, f):  # F = r (1 - (1 - g)^2) + (1 - r) g^2
        g = _sigmoid(_gate_value(p["gate_bias"], gate_logits, i, j, pos, f))
        r = _sigmoid(_gate_value(p["refine_bias"], refine_logits, i, j, pos, f))
        return r * (1.0 - (1.0 - g) ** 2) + (1.0 - r) * g**2

    raw = torch.zeros(b, h, t, v.shape[-1], dtype=torch.float64)
    empty = torch.zeros(b, h, t, dtype=torch.bool)
    for i in range(b):
        for j in range(h):
            for r in range(t):
                kept = [c for c in range(s_len) if keep[i, j, r, c]]
                if not kept:
                    empty[i, j, r] = True
                    continue
                phi_q = torch.exp(x[i, j, r] - x[i, j, r].max())
                top = max(float(k[i, j, c].max()) for c in kept)  # the keys' maximum over what row r attends
                for c in kept:
                    phi_k = torch.exp(k[i, j, c] - top)
                    lo, hi = min(r, c), max(r, c)
                    decay = [math.prod(forget(i, j, pos, f) for pos in range(lo + 1, hi + 1)) for f in range(d)]
                    weight = scale * sum(float(phi_q[f] * phi_k[f]) * decay[f] for f in range(d))
                    raw[i, j, r] = raw[i, j, r] + weight * v[i, j, c]
    e = raw.shape[-1]
    z = raw if hp["per_head"] else raw.permute(0, 2, 1, 3).reshape(b, t, h * e)
    if hp["norm"] == "rms":
        z = z / torch.sqrt((z * z).mean(-1, keepdim=True) + hp["eps"])
    else:
        centred = z - z.mean(-1, keepdim=True)
        z = centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + hp["eps"])
    out = z if hp["per_head"] else z.reshape(b, t, h, e).permute(0, 2, 1, 3)
    return out.masked_fill(empty[..., None], 0.0)


def kv_gates(keys=None, dv=None, mask=None, refine=True):
    """cond_fn: ``kv`` plus token-dependent gate (and refiner) logits (B, H, max(T, S), D) ~ N(0, 1)."""
    make = kv(keys, dv, mask)

    def cond(shape, g):
        out = make(shape, g)
        b, h, t, d = shape
        positions = max(t, keys or t)
        out["gate_logits"] = torch.randn(b, h, positions, d, generator=g, dtype=torch.float64)
        if refine:
            out["refine_logits"] = torch.randn(b, h, positions, 1, generator=g, dtype=torch.float64)
        return out

    return cond


RECURRENT = {"mode": "recurrent"}

ENTRIES = [
    LayerEntry(
        name="nala_attention",
        reference=ref_nala_attention,
        cases=(
            *CASES,
            Case(init=RECURRENT, shape=(3, 2, 4, 4), desc="recurrent_padding", cond_fn=kv(mask="padding")),
            Case(init=RECURRENT, shape=(2, 3, 3, 4), desc="recurrent_cross", cond_fn=kv(keys=6, dv=5)),
            Case(init=RECURRENT, shape=(2, 2, 3, 4), desc="recurrent_empty", cond_fn=kv(mask="empty")),
            Case(init={"eps": 0.5}, shape=(2, 2, 4, 4), desc="eps", cond_fn=kv(mask="padding"), scale=0.5),
        ),
        functional=lambda x, m, k, v, mask=None: NF.nala_attention(x, k, v, False, mask, m.eps, m.mode),
        layout=QKV,
        bad_init=({"mode": "chunked"}, {"eps": float("inf")}),
    ),
    LayerEntry(
        name="regla_attention",
        reference=ref_regla_attention,
        cases=(
            *CASES,
            Case(init=RECURRENT, shape=(3, 2, 4, 4), desc="recurrent_padding", cond_fn=kv(mask="padding")),
            Case(init=RECURRENT, shape=(2, 3, 3, 4), desc="recurrent_cross", cond_fn=kv_gates(keys=6, dv=5)),
            Case(init=RECURRENT, shape=(2, 2, 3, 4), desc="recurrent_empty", cond_fn=kv(mask="empty")),
            Case(init={"heads": 2}, shape=(2, 2, 5, 4), desc="token_gates", cond_fn=kv_gates(mask="causal")),
            Case(
                init={"heads": 3, "norm": "rms", "per_head": False, "eps": 1e-3, "scale": 0.5},
                shape=(2, 3, 4, 3),
                desc="rms_all_heads",
                cond_fn=kv_gates(mask="padding", refine=False),
            ),
        ),
        functional=lambda x, m, k, v, mask=None, gate_logits=None, refine_logits=None: NF.regla_attention(
            x, k, v, *m.logits(gate_logits, refine_logits), False, mask, m.norm, m.per_head, m.eps, m.scale, m.mode
        ),
        layout=QKV,
        bad_init=(
            {"heads": 0},
            {"gate_init": 1.0},
            {"gate_init": 0.0},
            {"norm": "batch"},
            {"per_head": 1},
            {"scale": 0.0},
            {"mode": "fast"},
        ),
    ),
]
