"""Harness entries of Filter Response Normalization (Singh & Krishnan, 2019, arXiv:1911.09737), with and
without its TLU. References follow the paper's Eq. 1-2 and Eq. 3 (z = max(y, tau)) in float64."""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def ref_frn(x, p, hp):
    """nu2 = mean_{h,w} x^2 per (n, c); y = gamma x / sqrt(nu2 + eps) + beta; z = max(y, tau) with the TLU."""
    view = (1, -1, 1, 1)
    nu2 = (x * x).mean(dim=(2, 3), keepdim=True)
    y = p["weight"].view(view) * (x / torch.sqrt(nu2 + hp["eps"])) + p["bias"].view(view)
    if hp["apply_act"]:
        y = torch.where(y > p["tau"].view(view), y, p["tau"].view(view).expand_as(y))
    return y


_LAYOUT = Layout(feature_arg="num_features", feature_axis=1, ranks=(4,))

# The TLU kink sits where y = tau, a point that moves with the whole map (not a fixed input value), so no
# `kinks` are declared; tests/test_channel_norms_timm.py checks that every case's y stays > 1e-3 from tau, so
# that gradcheck's finite differences never straddle it.
ENTRIES = (
    LayerEntry(
        name="frn",
        reference=ref_frn,
        cases=(
            Case(init={"num_features": 6}, shape=(2, 6, 5, 5), offset=0.5),
            Case(init={"num_features": 4, "eps": 1e-3}, shape=(3, 4, 3, 4), desc="eps", offset=-0.3),
            Case(init={"num_features": 4}, shape=(2, 4, 4, 3), desc="eval", train=False, scale=0.7),
        ),
        functional=lambda x, m: NF.filter_response_norm(x, m.weight, m.bias, m.tau, m.eps),
        layout=_LAYOUT,
    ),
    LayerEntry(
        name="frn_no_tlu",
        reference=ref_frn,
        cases=(
            Case(init={"num_features": 6}, shape=(2, 6, 5, 5), offset=0.5),
            # 1x1 maps (fully connected features): y = gamma x / sqrt(x^2 + eps) + beta; a large eps keeps the
            # steep slope at x = 0 within reach of gradcheck's finite differences.
            Case(init={"num_features": 6, "eps": 0.1}, shape=(4, 6, 1, 1), desc="1x1"),
        ),
        functional=lambda x, m: NF.filter_response_norm(x, m.weight, m.bias, m.tau, m.eps),
        layout=_LAYOUT,
    ),
)
