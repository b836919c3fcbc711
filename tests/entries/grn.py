"""Harness entry of Global Response Normalization (Woo et al., ConvNeXt V2, 2023, arXiv:2301.00808).
The reference follows the paper's Eq. 1-3 and its pseudo-code (Alg. 1) in float64."""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def ref_grn(x, p, hp):
    """Gx = ||x||_2 over the spatial dims per (n, c); Nx = Gx / (mean_c Gx + eps); y = gamma (x Nx) + beta + x."""
    if hp["channels_last"]:
        spatial, channel, view = (1, 2), 3, (1, 1, 1, -1)
    else:
        spatial, channel, view = (2, 3), 1, (1, -1, 1, 1)
    gx = torch.sqrt((x * x).sum(dim=spatial, keepdim=True))
    nx = gx / (gx.mean(dim=channel, keepdim=True) + hp["eps"])
    return p["weight"].view(view) * (x * nx) + p["bias"].view(view) + x


ENTRIES = (
    LayerEntry(
        name="grn",
        reference=ref_grn,
        cases=(
            Case(init={"num_features": 6}, shape=(2, 6, 4, 4), offset=0.5),
            Case(
                init={"num_features": 6, "channels_last": True},
                shape=(2, 4, 3, 6),
                desc="channels_last",
                offset=-0.5,
                layout=Layout(feature_arg="num_features", feature_axis=-1, ranks=(4,)),
            ),
            Case(init={"num_features": 5, "eps": 1e-3}, shape=(3, 5, 3, 2), desc="eps"),
            Case(init={"num_features": 4}, shape=(3, 4, 1, 1), desc="1x1"),
        ),
        functional=lambda x, m: NF.global_response_norm(x, m.weight, m.bias, m.eps, m.channels_last),
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(4,)),
    ),
)
