"""Harness entries of the softmax-free row normalizers (normact.layers.attention.normalized): normalized attention,
LSSA, LSSAR and LLN. As in tests/entries/attention.py, x is the queries and k, v, mask are conditioning inputs;
the references loop over rows in float64 and never call normact or torch's attention."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry
from tests.entries.attention import CASES, QKV, _keep, _rows, kv

LLN_A, LLN_B = 0.14855178144710912, -0.35487039130661086  # the authors' fit (lln/lln_attention.py)


def ref_normalized_attention(x, p, hp, *, k, v, mask=None):
    scores = torch.einsum("bhtd,bhsd->bhts", x, k)
    gain, bias = p["gain"], p["bias"]

    def row(z, i, j):
        g, b = gain[j % gain.numel()], bias[j % bias.numel()]
        mean = z.mean()
        std = torch.sqrt(((z - mean) ** 2).mean())
        return g * (z - mean) / (std + hp["eps"]) + b

    weights = _rows(scores, _keep(*scores.shape, mask), row)
    return torch.einsum("bhts,bhse->bhte", weights, v)


def _cosines(x, k, eps):
    qn = x / torch.sqrt((x * x).sum(-1, keepdim=True)).clamp_min(eps)
    kn = k / torch.sqrt((k * k).sum(-1, keepdim=True)).clamp_min(eps)
    return torch.einsum("bhtd,bhsd->bhts", qn, kn)


def _lssa_row(d):
    def row(c, i, j):
        n = c.numel()
        a = torch.log1p(torch.exp(math.log(d) * math.log(n) * c))
        return a / a.sum()

    return row


def ref_lssa_attention(x, p, hp, *, k, v, mask=None):
    cos = _cosines(x, k, hp["eps"])
    weights = _rows(cos, _keep(*cos.shape, mask), _lssa_row(x.shape[-1]))
    return torch.einsum("bhts,bhse->bhte", weights, v)


def ref_lssar_attention(x, p, hp, *, k, v, mask=None):
    cos = _cosines(x, k, hp["eps"])
    lssa = _lssa_row(x.shape[-1])

    def row(c, i, j):
        n = c.numel()
        o = 0.0 if n <= hp["exempt_keys"] else hp["offset"]
        r = torch.clamp(n * lssa(c, i, j) - o, min=0.0) ** hp["power"]
        return r / r.sum() if r.sum() > 0 else r

    weights = _rows(cos, _keep(*cos.shape, mask), row)
    return torch.einsum("bhts,bhse->bhte", weights, v)


def lln_scales(sigma_q, sigma_k):
    tilde = math.sqrt((sigma_q**2 * sigma_k**2 - LLN_B) / (2 * LLN_A))
    return tilde / sigma_q, tilde / sigma_k


def ref_lln_attention(x, p, hp, *, k, v, mask=None):
    alpha, beta = lln_scales(hp["sigma_q"], hp["sigma_k"])
    # phi_Q(q_t) . phi_K(k_s) = sum_d exp(alpha q_td) exp(beta k_sd), no shift (moderate scores)
    kernel = torch.einsum("bhtd,bhsd->bhts", torch.exp(alpha * x), torch.exp(beta * k))
    weights = _rows(kernel, _keep(*kernel.shape, mask), lambda z, i, j: z / z.sum())
    return torch.einsum("bhts,bhse->bhte", weights, v)


ENTRIES = [
    LayerEntry(
        name="normalized_attention",
        reference=ref_normalized_attention,
        cases=(
            *CASES,
            Case(init={"heads": 2, "eps": 0.1}, shape=(2, 2, 5, 4), desc="per_head", cond_fn=kv(mask="padding")),
        ),
        functional=lambda x, m, k, v, mask=None: NF.normalized_attention(x, k, v, m.gain, m.bias, False, mask, m.eps),
        layout=QKV,
        bad_init=({"heads": 0}, {"heads": 1.5}),
    ),
    LayerEntry(
        name="lssa_attention",
        reference=ref_lssa_attention,
        cases=(*CASES, Case(shape=(2, 2, 4, 8), desc="long_keys", cond_fn=kv(keys=9))),
        functional=lambda x, m, k, v, mask=None: NF.lssa_attention(x, k, v, False, mask, m.eps),
        layout=QKV,
    ),
    LayerEntry(
        name="lssar_attention",
        reference=ref_lssar_attention,
        cases=(
            *CASES,
            Case(init={"power": 3.0}, shape=(2, 2, 4, 8), desc="p3", cond_fn=kv(keys=9, mask="padding")),
            Case(init={"power": 2.0, "offset": 0.5, "exempt_keys": 0}, shape=(2, 2, 5, 4), desc="offset", cond_fn=kv()),
        ),
        functional=lambda x, m, k, v, mask=None: NF.lssar_attention(
            x, k, v, m.power, m.offset, m.exempt_keys, False, mask, m.eps
        ),
        layout=QKV,
        bad_init=({"power": 0.5}, {"offset": -1.0}, {"exempt_keys": -1}),
    ),
    LayerEntry(
        name="lln_attention",
        reference=ref_lln_attention,
        cases=(
            *CASES,
            Case(init={"sigma_q": 0.5, "sigma_k": 2.0}, shape=(2, 2, 4, 4), desc="sigmas", cond_fn=kv(mask="padding")),
        ),
        functional=lambda x, m, k, v, mask=None: NF.lln_attention(x, k, v, m.sigma_q, m.sigma_k, False, mask),
        layout=QKV,
        bad_init=({"sigma_q": 0.0}, {"sigma_k": -1.0}, {"sigma_q": float("inf")}),
    ),
]
