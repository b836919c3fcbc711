"""Harness entry of the feature-normalized classifier head (Zhang, Beitollahi, Bie & Chen, 2023,
arXiv:2308.09565): the float64 reference normalizes the features by their Euclidean norm and applies the
classifier, written out with einsum (no normact, no torch.nn.functional)."""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def ref_feature_norm_head(x, p, hp):
    """scale * (W z / max(||z||, eps) + b)."""
    norm = torch.sqrt((x * x).sum(-1, keepdim=True)).clamp_min(hp["eps"])
    logits = torch.einsum("...i,ki->...k", x / norm, p["weight"])
    if p.get("bias") is not None:
        logits = logits + p["bias"]
    return hp["scale"] * logits


ENTRIES = [
    LayerEntry(
        name="feature_norm_head",
        reference=ref_feature_norm_head,
        cases=(
            Case(init={"in_features": 16}, shape=(4, 16), offset=0.5),
            Case(init={"in_features": 8, "num_classes": 3, "bias": True, "scale": 8.0}, shape=(2, 3, 8), desc="bias"),
            Case(init={"in_features": 6, "num_classes": 5, "eps": 1e-3}, shape=(6,), scale=0.01, desc="eps_1d"),
        ),
        functional=lambda x, m: NF.feature_norm_head(x, m.weight, m.bias, m.scale, m.eps),
        layout=Layout(feature_arg="in_features", feature_axis=-1, min_rank=1),
        bad_init=({"num_classes": 0}, {"scale": 0.0}, {"scale": -2.0}, {"scale": float("nan")}),
    ),
]
