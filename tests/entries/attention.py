"""Harness entries of the attention score normalizers. The input ``x`` is the queries (B, H, T, D); the keys and
values (and, in some cases, a boolean mask of the keys to attend) are conditioning inputs (``Case.cond_fn``), so
gradcheck differentiates q, k and v. The references loop over the score matrix in float64 and never call
normact or torch's attention."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout

QKV = Layout(ranks=(4,))


def kv(keys: int | None = None, dv: int | None = None, mask: str | None = None):
    """cond_fn: k (B, H, S, D) and v (B, H, S, Dv) ~ N(0, 1) (S defaults to T, Dv to D), and a mask: "padding"
    (B, S), the last key of each sample but the first hidden; "causal" (1, 1, T, S) lower triangle; "empty" (B, S) with
    the second sample's keys all hidden (its rows have nothing to attend)."""

    def make(shape, g):
        b, h, t, d = shape
        s, e = keys or t, dv or d
        out = {
            "k": torch.randn(b, h, s, d, generator=g, dtype=torch.float64),
            "v": torch.randn(b, h, s, e, generator=g, dtype=torch.float64),
        }
        if mask == "padding":
            m = torch.ones(b, s, dtype=torch.bool)
            m[1:, -1] = False
            out["mask"] = m
        elif mask == "causal":
            out["mask"] = torch.ones(t, s, dtype=torch.bool).tril()[None, None]
        elif mask == "empty":
            m = torch.ones(b, s, dtype=torch.bool)
            m[1] = False
            out["mask"] = m
        return out

    return make


def _keep(b, h, t, s, mask):
    keep = torch.ones(b, h, t, s, dtype=torch.bool)
    if mask is not None:
        keep = keep & (mask[:, None, None, :] if mask.dim() == 2 else mask)
    return keep


def _rows(scores, keep, row_fn):
    """weights: ``row_fn(kept scores of a row, batch index, head index)`` written into the kept entries, zeros
    elsewhere (a row with no kept entry stays zero)."""
    out = torch.zeros_like(scores)
    b, h, t, _ = scores.shape
    for i in range(b):
        for j in range(h):
            for r in range(t):
                sel = keep[i, j, r]
                if sel.any():
                    out[i, j, r][sel] = row_fn(scores[i, j, r][sel], i, j)
    return out


def _softmax_row(z, i=None, j=None):
    e = torch.exp(z - z.max())
    return e / e.sum()


def _row_softmax(scores, keep):
    """softmax over the kept entries of each row; a row with none gives zeros."""
    return _rows(scores, keep, _softmax_row)


def ref_softmax_attention(x, p, hp, *, k, v, mask=None):
    scale = hp["scale"] if hp["scale"] is not None else 1.0 / math.sqrt(x.shape[-1])
    scores = torch.einsum("bhtd,bhsd->bhts", x, k) * scale
    weights = _row_softmax(scores, _keep(*scores.shape, mask))
    return torch.einsum("bhts,bhse->bhte", weights, v)


def ref_sigmoid_attention(x, p, hp, *, k, v, mask=None):
    scale = hp["scale"] if hp["scale"] is not None else 1.0 / math.sqrt(x.shape[-1])
    bias = hp["bias"] if hp["bias"] is not None else -math.log(k.shape[2])
    scores = torch.einsum("bhtd,bhsd->bhts", x, k) * scale + bias
    weights = (1.0 / (1.0 + torch.exp(-scores))) * _keep(*scores.shape, mask)
    return torch.einsum("bhts,bhse->bhte", weights, v)


def ref_qk_norm_attention(x, p, hp, *, k, v, mask=None):
    qn = x / torch.sqrt((x * x).sum(-1, keepdim=True)).clamp_min(hp["eps"])
    kn = k / torch.sqrt((k * k).sum(-1, keepdim=True)).clamp_min(hp["eps"])
    scores = p["gain"] * torch.einsum("bhtd,bhsd->bhts", qn, kn)
    weights = _row_softmax(scores, _keep(*scores.shape, mask))
    return torch.einsum("bhts,bhse->bhte", weights, v)


CASES = (
    Case(shape=(2, 2, 5, 4), cond_fn=kv()),
    Case(shape=(2, 3, 3, 4), desc="cross", cond_fn=kv(keys=6, dv=5)),
    Case(shape=(3, 2, 4, 4), desc="padding", cond_fn=kv(mask="padding")),
    Case(shape=(2, 1, 5, 3), desc="causal", cond_fn=kv(mask="causal")),
    Case(shape=(2, 2, 3, 4), desc="empty_rows", cond_fn=kv(mask="empty")),
)

ENTRIES = [
    LayerEntry(
        name="softmax_attention",
        reference=ref_softmax_attention,
        cases=(*CASES, Case(init={"scale": 0.3}, shape=(2, 2, 4, 4), desc="scale", cond_fn=kv(mask="padding"))),
        functional=lambda x, m, k, v, mask=None: NF.softmax_attention(x, k, v, False, mask, m.scale),
        layout=QKV,
        bad_init=({"scale": 0.0}, {"scale": -1.0}),
    ),
    LayerEntry(
        name="sigmoid_attention",
        reference=ref_sigmoid_attention,
        cases=(*CASES, Case(init={"bias": 0.5, "scale": 0.7}, shape=(2, 2, 4, 4), desc="bias", cond_fn=kv())),
        functional=lambda x, m, k, v, mask=None: NF.sigmoid_attention(x, k, v, m.bias, False, mask, m.scale),
        layout=QKV,
        bad_init=({"scale": 0.0}, {"bias": float("nan")}),
    ),
    LayerEntry(
        name="qk_norm_attention",
        reference=ref_qk_norm_attention,
        cases=(*CASES, Case(init={"seq_len": 8}, shape=(2, 2, 4, 4), desc="seq_len", cond_fn=kv(mask="padding"))),
        functional=lambda x, m, k, v, mask=None: NF.qk_norm_attention(x, k, v, m.gain, False, mask, m.eps),
        layout=QKV,
        bad_init=({"seq_len": 1}, {"seq_len": 0}, {"eps": 0.0}),
    ),
]
