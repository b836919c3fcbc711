"""Harness entries of the per-sample norms of channels-first maps: LayerNorm over the channels at each position
(Ba, Kiros & Hinton, 2016, arXiv:1607.06450) and GroupNorm with one group (Wu & He, 2018, arXiv:1803.08494).
References are the papers' formulas in float64 (biased variance, eps inside the square root)."""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def _channel_affine(y, p):
    view = (-1,) + (1,) * (y.dim() - 2)
    w, b = p.get("weight"), p.get("bias")
    if w is not None:
        y = y * w.view(view)
    if b is not None:
        y = y + b.view(view)
    return y


def ref_layernorm2d(x, p, hp):
    """Per (n, h, w): (x - mean_c x) / sqrt(var_c x + eps), then the per-channel affine."""
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    return _channel_affine((x - mu) / torch.sqrt(var + hp["eps"]), p)


def ref_groupnorm1(x, p, hp):
    """Per sample n: (x - mean x_n) / sqrt(var x_n + eps) over all of (C, *), then the per-channel affine."""
    dims = tuple(range(1, x.dim()))
    mu = x.mean(dim=dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=dims, keepdim=True)
    return _channel_affine((x - mu) / torch.sqrt(var + hp["eps"]), p)


# Shape tests draw at least 2 channels (LayerNorm2d: a single channel has zero variance and torch's CPU
# layer_norm kernel then loses the bias to cancellation at |x| = 1e4, see tests/entries/norm.py; GroupNorm1:
# (N, 1) input has a single value per sample, which is rejected).
ENTRIES = (
    LayerEntry(
        name="layernorm2d",
        reference=ref_layernorm2d,
        cases=(
            Case(init={"num_channels": 6}, shape=(2, 6, 4, 4), offset=0.5),
            Case(init={"num_channels": 5, "affine": False, "eps": 1e-3}, shape=(3, 5, 2, 3), desc="no_affine"),
            Case(init={"num_channels": 8, "eps": 1e-5}, shape=(2, 8, 1, 5), desc="eps", offset=-1.0),
        ),
        functional=lambda x, m: NF.layer_norm2d(x, m.weight, m.bias, m.eps),
        layout=Layout(
            feature_arg="num_channels",
            feature_axis=1,
            ranks=(4,),
            init_for=lambda f: ({"num_channels": f + 1}, f + 1),
        ),
    ),
    LayerEntry(
        name="groupnorm1",
        reference=ref_groupnorm1,
        cases=(
            Case(init={"num_channels": 6}, shape=(2, 6, 4, 4), offset=0.5),
            Case(init={"num_channels": 6, "affine": False, "eps": 1e-3}, shape=(3, 6, 5), desc="no_affine_ncl"),
            Case(init={"num_channels": 8}, shape=(4, 8), desc="nc", offset=-1.0),
        ),
        functional=lambda x, m: NF.group_norm1(x, m.weight, m.bias, m.eps),
        layout=Layout(
            feature_arg="num_channels",
            feature_axis=1,
            min_rank=2,
            init_for=lambda f: ({"num_channels": f + 1}, f + 1),
        ),
    ),
)
