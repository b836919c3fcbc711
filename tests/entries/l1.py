"""Harness entries of the L1 normalizations (mean absolute deviation in place of the standard deviation;
Wu et al., 2018, arXiv:1802.09769; Guo et al., 2024, arXiv:2411.10948). References are float64 formulas
written here without calling normact."""

from __future__ import annotations

import math

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import affine

SQRT_HALF_PI = math.sqrt(math.pi / 2)


def ref_l1_layernorm(x, p, hp):
    """(x - mean) / (s * mean|x - mean| + eps) * w + b over the normalized dims."""
    shape = hp["normalized_shape"]
    k = 1 if isinstance(shape, int) else len(shape)
    dims = tuple(range(-k, 0))
    n = math.prod(x.shape[d] for d in dims)
    mu = x.sum(dims, keepdim=True) / n
    mad = (x - mu).abs().sum(dims, keepdim=True) / n
    return affine((x - mu) / (hp["scale"] * mad + hp["eps"]), p)


def ref_l1_batchnorm(x, p, hp):
    """Training: (x - mu_B) / (s * mean_B|x - mu_B| + eps) per channel over N and space, then the running
    statistics lerped with momentum (1/n for None); eval: the running statistics."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    dims = (0, *range(2, x.dim()))
    use_batch = hp["training"] or not hp["track_running_stats"]
    buffers = {}
    if use_batch:
        n = x.numel() // x.shape[1]
        mu = x.sum(dims) / n
        dev = hp["scale"] * (x - mu.reshape(view)).abs().sum(dims) / n
        if hp["training"] and hp["track_running_stats"]:
            tracked = p["num_batches_tracked"] + 1
            m = hp["momentum"] if hp["momentum"] is not None else 1.0 / float(tracked)
            buffers = {
                "running_mean": (1 - m) * p["running_mean"] + m * mu,
                "running_dev": (1 - m) * p["running_dev"] + m * dev,
                "num_batches_tracked": tracked,
            }
    else:
        mu, dev = p["running_mean"], p["running_dev"]
    y = affine((x - mu.reshape(view)) / (dev.reshape(view) + hp["eps"]), p, view)
    return (y, buffers) if buffers else y


def _l1_bn_functional(x, m):
    factor = m.momentum
    if m.training and m.track_running_stats:
        m.num_batches_tracked.add_(1)
        factor = 1.0 / m.num_batches_tracked.double() if m.momentum is None else m.momentum
    return NF.l1_batch_norm(
        x,
        m.running_mean,
        m.running_dev,
        m.weight,
        m.bias,
        m.training or not m.track_running_stats,
        factor if m.training else 0.0,
        m.eps,
        m.scale,
    )


_CHANNELS = Layout(feature_arg="num_features", feature_axis=1, ranks=(2, 3, 4), min_batch=2)

ENTRIES = (
    LayerEntry(
        name="l1_layernorm",
        reference=ref_l1_layernorm,
        functional=lambda x, m: NF.l1_layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps, m.scale),
        layout=Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1),
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.7),
            Case(init={"normalized_shape": (3, 5)}, shape=(2, 4, 3, 5), offset=-0.4, desc="two-dims"),
            Case(init={"normalized_shape": 8, "elementwise_affine": False, "scale": 1.0}, shape=(3, 8), desc="plain"),
            Case(init={"normalized_shape": 8, "bias": False, "eps": 1e-3}, shape=(2, 5, 8), desc="no-bias"),
        ),
        bad_init=({"normalized_shape": 8, "scale": 0.0}, {"normalized_shape": 8, "scale": -1.0}),
    ),
    LayerEntry(
        name="l1_batchnorm",
        reference=ref_l1_batchnorm,
        functional=_l1_bn_functional,
        layout=_CHANNELS,
        cases=(
            Case(init={"num_features": 4}, shape=(6, 4, 3, 3), offset=0.5),
            Case(init={"num_features": 5, "momentum": None}, shape=(4, 5, 7), desc="cumulative"),
            Case(init={"num_features": 6, "affine": False, "scale": 1.0}, shape=(8, 6), desc="plain"),
            Case(init={"num_features": 4}, shape=(3, 4, 2, 2), train=False, desc="eval"),
            Case(init={"num_features": 3, "track_running_stats": False}, shape=(4, 3, 5), train=False, desc="no-stats"),
        ),
        bad_init=({"num_features": 4, "scale": 0.0}, {"num_features": 4, "momentum": 1.5}),
    ),
)

DISTRIBUTED_CASES = [
    ("l1_batchnorm", (8, 4, 3, 3), {}, None),
    ("l1_batchnorm", (8, 5), {"momentum": None, "affine": False}, None),
]
