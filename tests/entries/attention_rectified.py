"""Harness entries of the rectified (ReLU) attention normalizers: ReLUFormer and ReLA. The input ``x`` is the
queries; k, v and the mask come from ``kv`` (tests.entries.attention). The references work in float64 from the
papers' formulas and never call normact or torch's attention."""

from __future__ import annotations

import dataclasses
import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries.attention import CASES, QKV, _keep, kv


def _relu_scores(x, k, hp, mask):
    scale = hp["scale"] if hp["scale"] is not None else 1.0 / math.sqrt(x.shape[-1])
    scores = torch.einsum("bhtd,bhsd->bhts", x, k) * scale
    keep = _keep(*scores.shape, mask)
    return torch.where(keep, scores.clamp_min(0.0), torch.zeros_like(scores)), keep


def ref_reluformer_attention(x, p, hp, *, k, v, mask=None):
    weights, keep = _relu_scores(x, k, hp, mask)
    n = keep.sum(-1, keepdim=True).to(torch.float64).clamp_min(1.0)  # keys each query attends
    weights = weights / (hp["gamma"] * torch.sqrt(n / 2.0))
    return torch.einsum("bhts,bhse->bhte", weights, v)


def ref_rela_attention(x, p, hp, *, k, v, mask=None):
    weights, _ = _relu_scores(x, k, hp, mask)
    out = torch.einsum("bhts,bhse->bhte", weights, v)  # (B, H, T, Dv)
    result = torch.zeros_like(out)
    b, _, t, _ = out.shape
    for i in range(b):
        for r in range(t):
            o = out[i, :, r, :]  # every head's output of query r: the concatenated vector of the paper
            rms = torch.sqrt((o * o).mean() + hp["eps"])
            result[i, :, r, :] = p["weight"] * (o / rms) / (1.0 + torch.exp(-p["gate"] * o))
    return result


def _rela_case(case: Case) -> Case:
    """The shared case with the layer sized to it: heads from the shape, value features 5 in the cross case."""
    head_dim = 5 if case.desc == "cross" else case.shape[-1]
    return dataclasses.replace(case, init={"num_heads": case.shape[1], "head_dim": head_dim})


# The property-based shape test draws the heads (the layout's feature axis) and keeps head_dim: the first case
# fixes the value features at 4 whatever the query/key size.
RELA_LAYOUT = Layout(ranks=(4,), feature_arg="num_heads", feature_axis=1)
RELA_FIRST = Case(init={"num_heads": 2, "head_dim": 4}, shape=(2, 2, 5, 4), cond_fn=kv(dv=4))


ENTRIES = [
    LayerEntry(
        name="reluformer_attention",
        reference=ref_reluformer_attention,
        cases=(
            *CASES,
            Case(init={"gamma": 0.5, "scale": 0.7}, shape=(2, 2, 4, 4), desc="gamma", cond_fn=kv(mask="padding")),
        ),
        functional=lambda x, m, k, v, mask=None: NF.reluformer_attention(x, k, v, m.gamma, False, mask, m.scale),
        layout=QKV,
        bad_init=({"gamma": 0.0}, {"gamma": -1.0}, {"gamma": float("inf")}, {"scale": 0.0}),
    ),
    LayerEntry(
        name="rela_attention",
        reference=ref_rela_attention,
        cases=(
            RELA_FIRST,
            *(_rela_case(c) for c in CASES[1:]),
            Case(
                init={"num_heads": 3, "head_dim": 4, "eps": 1e-3, "scale": 0.6},
                shape=(2, 3, 4, 4),
                desc="eps_scale",
                cond_fn=kv(mask="padding"),
            ),
        ),
        functional=lambda x, m, k, v, mask=None: NF.rela_attention(
            x, k, v, m.weight, m.gate, False, mask, m.eps, m.scale
        ),
        layout=RELA_LAYOUT,
        bad_init=({"num_heads": 0}, {"head_dim": -2}, {"head_dim": 2.5}, {"scale": -1.0}),
    ),
]
