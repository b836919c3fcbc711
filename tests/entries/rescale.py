"""Harness entry of RescaleNorm, DehazeFormer's RLN (Song et al., 2022, arXiv:2204.03883, and the official
models/dehazeformer.py class RLN). The reference, a float64 formula written here without calling normact,
returns the layer's three outputs (x_hat, rescale, rebias).

``detach_grad=True`` changes only the backward pass (a stop-gradient, which finite differences cannot see),
so it has no case here; tests/test_rescale_norm.py checks it.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def ref_rescale_norm(x, p, hp):
    """mu, sigma = sqrt(mean((x - mu)^2) + eps) per sample over (C, *); (x - mu) / sigma * w + b;
    rescale = W1 * sigma + B1 and rebias = W2 * mu + B2 per channel, shape (N, C, 1, ...)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, -1)
    mu = flat.sum(1) / flat.shape[1]
    sigma = torch.sqrt(((flat - mu[:, None]) ** 2).sum(1) / flat.shape[1] + hp["eps"])
    view = (n,) + (1,) * (x.dim() - 1)
    chan = (1, c) + (1,) * (x.dim() - 2)
    y = (x - mu.reshape(view)) / sigma.reshape(view)
    if p.get("weight") is not None:
        y = y * p["weight"].reshape(chan) + p["bias"].reshape(chan)
    rescale = p["rescale_weight"].reshape(chan) * sigma.reshape(view) + p["rescale_bias"].reshape(chan)
    rebias = p["rebias_weight"].reshape(chan) * mu.reshape(view) + p["rebias_bias"].reshape(chan)
    return y, rescale, rebias


def _functional(x, m):
    return NF.rescale_norm(
        x, m.weight, m.bias, m.rescale_weight, m.rescale_bias, m.rebias_weight, m.rebias_bias, m.eps, m.detach_grad
    )


ENTRIES = (
    LayerEntry(
        name="rescale_norm",
        reference=ref_rescale_norm,
        cases=(
            Case(init={"num_features": 6}, shape=(3, 6, 4, 5), offset=0.5),
            Case(init={"num_features": 4, "affine": False, "eps": 1e-3}, shape=(2, 4, 3, 3), offset=-1.0),
            Case(init={"num_features": 5}, shape=(3, 5, 7), offset=2.0, desc="3d"),
            Case(init={"num_features": 8}, shape=(4, 8), offset=1.0, desc="2d"),
            Case(init={"num_features": 4}, shape=(1, 4, 2, 3), train=False, offset=0.5, desc="eval_batch_1"),
        ),
        functional=_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, min_rank=2),
    ),
)
