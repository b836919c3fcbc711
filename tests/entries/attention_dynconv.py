"""Harness entries of the LayerNorm attentions of "Interpret Vision Transformers as ConvNets with Dynamic
Convolutions" (Zhou, Loy & Dai, 2023, arXiv:2309.10713): the softmax over the keys replaced by a LayerNorm of the
(ReLU'd) scores. The input ``x`` is the queries; k, v and the mask come from ``kv`` (tests.entries.attention). The
references loop over the rows in float64 and never call normact or torch's attention and norm modules."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry
from tests.entries.attention import CASES, QKV, _keep, _rows, kv


def _ln_weights(x, k, hp, mask, relu):
    scale = hp["scale"] if hp["scale"] is not None else 1.0 / math.sqrt(x.shape[-1])
    scores = torch.einsum("bhtd,bhsd->bhts", x, k) * scale
    if relu:
        scores = scores.clamp_min(0.0)

    def row(z, i, j):
        mu = z.mean()
        return (z - mu) / torch.sqrt(((z - mu) ** 2).mean() + hp["eps"])

    return _rows(scores, _keep(*scores.shape, mask), row)


def ref_ln_attention(x, p, hp, *, k, v, mask=None):
    return torch.einsum("bhts,bhse->bhte", _ln_weights(x, k, hp, mask, relu=False), v)


def ref_relu_ln_attention(x, p, hp, *, k, v, mask=None):
    return torch.einsum("bhts,bhse->bhte", _ln_weights(x, k, hp, mask, relu=True), v)


BAD_INIT = ({"eps": float("inf")}, {"scale": 0.0}, {"scale": -1.0})

ENTRIES = [
    LayerEntry(
        name="ln_attention",
        reference=ref_ln_attention,
        cases=(*CASES, Case(init={"eps": 1e-2, "scale": 0.7}, shape=(2, 2, 4, 4), desc="eps_scale", cond_fn=kv())),
        functional=lambda x, m, k, v, mask=None: NF.ln_attention(x, k, v, False, mask, m.eps, m.scale),
        layout=QKV,
        bad_init=BAD_INIT,
    ),
    LayerEntry(
        name="relu_ln_attention",
        reference=ref_relu_ln_attention,
        cases=(
            *CASES,
            Case(init={"eps": 1e-2, "scale": 0.7}, shape=(2, 2, 4, 4), desc="eps_scale", cond_fn=kv(mask="padding")),
        ),
        functional=lambda x, m, k, v, mask=None: NF.relu_ln_attention(x, k, v, False, mask, m.eps, m.scale),
        layout=QKV,
        bad_init=BAD_INIT,
    ),
]
