"""Harness entries of the normalization layers.

References are the papers' formulas in float64, written here without calling normact (the meta tests in
tests/test_harness_meta.py patch normact's functional forms and layer forwards to fail while a reference
runs). Only the ``functional=`` callables use normact.functional, to check it against the module.
"""

from __future__ import annotations

import math

import mpmath as mp
import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics, Setting

LAST_DIM = Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1)


def _dims(normalized_shape) -> tuple[int, ...]:
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(-k, 0))


def _channel_view(x) -> tuple[int, ...]:
    return (-1,) + (1,) * (x.dim() - 2)


def _affine(y, p, view=None):
    w, b = p.get("weight"), p.get("bias")
    if w is not None:
        y = y * (w if view is None else w.view(view))
    if b is not None:
        y = y + (b if view is None else b.view(view))
    return y


# ----------------------------------------------------------------------------- references


def ref_layernorm(x, p, hp):
    """(x - mean) / sqrt(biased var + eps) * w + b over the normalized dims."""
    dims = _dims(hp["normalized_shape"])
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    return _affine((x - mu) / torch.sqrt(var + hp["eps"]), p)


def ref_rmsnorm(x, p, hp):
    """x / sqrt(mean(x^2) + eps) * w, eps inside the root (machine epsilon when None)."""
    dims = _dims(hp["normalized_shape"])
    eps = hp["eps"] if hp["eps"] is not None else torch.finfo(torch.float64).eps
    return _affine(x / torch.sqrt((x * x).mean(dims, keepdim=True) + eps), p)


def ref_rmsnorm_paper(x, p, hp):
    """x / (||x||_2 / sqrt(d) + eps) * g + b, eps outside the root."""
    dims = _dims(hp["normalized_shape"])
    d = math.prod(x.shape[i] for i in dims)
    rms = torch.sqrt((x * x).sum(dims, keepdim=True)) / math.sqrt(d)
    return _affine(x / (rms + hp["eps"]), p)


def ref_scalenorm(x, p, hp):
    """g * x / max(||x||_2, eps)."""
    dims = _dims(hp["normalized_shape"])
    norm = torch.sqrt((x * x).sum(dims, keepdim=True))
    return p["scale"] * x / torch.clamp(norm, min=hp["eps"])


def ref_dyt(x, p, hp):
    """gamma * tanh(alpha x) + beta, gamma and beta on the channel axis."""
    view = None if hp["channels_last"] else _channel_view(x)
    return _affine(torch.tanh(p["alpha"] * x), p, view)


def mp_dyt(x, p, hp):
    """DyT at one input in mpmath (one feature: weight and bias have one element)."""
    alpha = p["alpha"][0] if isinstance(p["alpha"], list) else p["alpha"]
    y = mp.tanh(alpha * x)
    if hp["elementwise_affine"]:
        y = y * p["weight"][0] + p["bias"][0]
    return y


def ref_batchnorm(x, p, hp):
    """Batch statistics over (N, *spatial) per channel in training, with the running-average update
    (unbiased variance); running statistics in eval."""
    view = _channel_view(x)
    dims = (0, *range(2, x.dim()))
    tracking = p.get("running_mean") is not None
    if hp["training"] or not tracking:
        mean = x.mean(dims)
        var = ((x - mean.view(view)) ** 2).mean(dims)
    else:
        mean, var = p["running_mean"], p["running_var"]
    y = _affine((x - mean.view(view)) / torch.sqrt(var.view(view) + hp["eps"]), p, view)
    if not (hp["training"] and tracking):
        return y
    n = x.numel() / x.shape[1]
    tracked = p["num_batches_tracked"] + 1
    m = hp["momentum"] if hp["momentum"] is not None else 1.0 / float(tracked)
    return y, {
        "running_mean": (1 - m) * p["running_mean"] + m * mean,
        "running_var": (1 - m) * p["running_var"] + m * var * n / (n - 1),
        "num_batches_tracked": tracked,
    }


def ref_groupnorm(x, p, hp):
    """Per sample and group of C/G channels: (x - mean) / sqrt(biased var + eps), then per-channel affine."""
    n, g = x.shape[0], hp["num_groups"]
    xg = x.reshape(n, g, -1)
    mu = xg.mean(-1, keepdim=True)
    var = ((xg - mu) ** 2).mean(-1, keepdim=True)
    return _affine(((xg - mu) / torch.sqrt(var + hp["eps"])).reshape(x.shape), p, _channel_view(x))


def ref_instancenorm(x, p, hp):
    """Per sample and channel over the spatial dims."""
    dims = tuple(range(2, x.dim()))
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    return _affine((x - mu) / torch.sqrt(var + hp["eps"]), p, _channel_view(x))


# ----------------------------------------------------------------------------- functional calls


def _bn_functional(x, m):
    momentum = m.momentum
    if m.training and m.track_running_stats and momentum is None:
        momentum = 1.0 / float(m.num_batches_tracked + 1)
        m.num_batches_tracked.add_(1)
    elif m.training and m.track_running_stats:
        m.num_batches_tracked.add_(1)
    return NF.batch_norm(
        x,
        m.running_mean,
        m.running_var,
        m.weight,
        m.bias,
        m.training or not m.track_running_stats,
        0.0 if momentum is None else momentum,
        m.eps,
    )


# ----------------------------------------------------------------------------- entries

_BN1D = Layout(feature_arg="num_features", feature_axis=1, ranks=(2, 3), min_batch=2)
_BN2D = Layout(feature_arg="num_features", feature_axis=1, ranks=(4,), min_batch=2)
_CHANNELS = Layout(
    feature_arg="num_channels",
    feature_axis=1,
    min_rank=2,
    init_for=lambda f: ({"num_channels": 4 * f, "num_groups": 2}, 4 * f),
)

# torch's CPU layer_norm applies the affine as x * (rstd * w) + (b - mean * rstd * w): for a row of zero
# variance and large mean (one element at |x| = 1e4: rstd = 1/sqrt(eps) ~ 316) the two terms of ~3e6 cancel
# in float32 and bfloat16 outputs miss the exact answer (the bias) by ~0.05. Shape tests therefore draw at
# least 2 normalized elements; the limitation is documented in LayerNorm's docstring.
_LAYER_NORM = Layout(
    feature_arg="normalized_shape", feature_axis=-1, min_rank=1, init_for=lambda f: ({"normalized_shape": f + 1}, f + 1)
)

ENTRIES = (
    LayerEntry(
        name="layernorm",
        reference=ref_layernorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(init={"normalized_shape": (3, 8)}, shape=(2, 5, 3, 8), desc="2d_shape", offset=-1.0),
            Case(init={"normalized_shape": 16, "bias": False}, shape=(3, 16), desc="no_bias"),
            Case(
                init={"normalized_shape": 16, "elementwise_affine": False, "eps": 1e-3},
                shape=(2, 3, 16),
                desc="no_affine",
            ),
        ),
        functional=lambda x, m: NF.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps),
        layout=_LAYER_NORM,
    ),
    LayerEntry(
        name="rmsnorm",
        reference=ref_rmsnorm,
        cases=(
            Case(init={"normalized_shape": 16, "eps": 1e-6}, shape=(4, 16), offset=0.5),
            Case(init={"normalized_shape": 16}, shape=(2, 3, 16), desc="eps_none"),
            Case(
                init={"normalized_shape": (2, 8), "elementwise_affine": False, "eps": 1e-5},
                shape=(3, 2, 8),
                desc="no_affine",
            ),
        ),
        functional=lambda x, m: NF.rms_norm(x, m.normalized_shape, m.weight, m.eps),
        layout=LAST_DIM,
    ),
    LayerEntry(
        name="rmsnorm_paper",
        reference=ref_rmsnorm_paper,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(init={"normalized_shape": 16, "bias": True, "eps": 1e-5}, shape=(2, 3, 16), desc="bias"),
        ),
        functional=lambda x, m: NF.rms_norm_paper(x, m.normalized_shape, m.weight, m.bias, m.eps),
        layout=LAST_DIM,
    ),
    LayerEntry(
        name="scalenorm",
        reference=ref_scalenorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(
                init={"normalized_shape": 16, "affine": False, "scale_init": 2.0},
                shape=(2, 3, 16),
                desc="fixed_scale",
            ),
        ),
        functional=lambda x, m: NF.scale_norm(x, m.normalized_shape, m.scale, m.eps),
        layout=LAST_DIM,
    ),
    LayerEntry(
        name="dyt",
        reference=ref_dyt,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), scale=3.0),
            Case(
                init={"normalized_shape": 6, "channels_last": False, "alpha_init": 0.8},
                shape=(2, 6, 3, 3),
                desc="channels_first",
                scale=3.0,
                layout=Layout(feature_arg="normalized_shape", feature_axis=1, min_rank=2),
            ),
            Case(init={"normalized_shape": 16, "elementwise_affine": False}, shape=(3, 16), desc="no_affine"),
        ),
        functional=lambda x, m: NF.dyt(x, m.alpha, m.weight, m.bias, m.channels_last),
        layout=LAST_DIM,
        bad_init=({"alpha_init": float("inf")},),
        # elementwise: held against mpmath like the activations (one feature)
        points_init={"normalized_shape": 1},
        numerics=Numerics(mp_dyt, settings=(Setting({"alpha": 2.0, "weight": 0.5, "bias": 0.2}),)),
    ),
    LayerEntry(
        name="batchnorm1d",
        reference=ref_batchnorm,
        cases=(
            Case(init={"num_features": 6}, shape=(8, 6), offset=0.5),
            Case(init={"num_features": 6}, shape=(4, 6, 5), desc="ncl"),
            Case(init={"num_features": 6, "momentum": None}, shape=(4, 6, 5), desc="cumulative"),
            Case(init={"num_features": 6}, shape=(4, 6, 5), desc="eval", train=False),
            Case(
                init={"num_features": 6, "affine": False, "track_running_stats": False},
                shape=(5, 6),
                desc="stateless",
                train=False,
            ),
        ),
        functional=_bn_functional,
        layout=_BN1D,
        bad_init=({"momentum": 1.5}, {"momentum": -0.1}),
    ),
    LayerEntry(
        name="batchnorm2d",
        reference=ref_batchnorm,
        cases=(
            Case(init={"num_features": 4}, shape=(3, 4, 5, 5), offset=0.5),
            Case(init={"num_features": 4}, shape=(3, 4, 5, 5), desc="eval", train=False),
            Case(init={"num_features": 4, "affine": False}, shape=(2, 4, 3, 3), desc="no_affine"),
        ),
        functional=_bn_functional,
        layout=_BN2D,
        bad_init=({"momentum": 2.0},),
    ),
    LayerEntry(
        name="groupnorm",
        reference=ref_groupnorm,
        cases=(
            Case(init={"num_channels": 8, "num_groups": 4}, shape=(2, 8, 4, 4), offset=0.5),
            Case(init={"num_channels": 6, "num_groups": 1}, shape=(3, 6, 5), desc="one_group"),
            Case(
                init={"num_channels": 6, "num_groups": 6, "affine": False},
                shape=(2, 6, 7),
                desc="per_channel",
            ),
        ),
        functional=lambda x, m: NF.group_norm(x, m.num_groups, m.weight, m.bias, m.eps),
        layout=_CHANNELS,
        bad_init=({"num_groups": 0}, {"num_groups": -2}, {"num_groups": 5}),
    ),
    LayerEntry(
        name="instancenorm2d",
        reference=ref_instancenorm,
        cases=(
            Case(init={"num_features": 4}, shape=(2, 4, 5, 5), offset=0.5),
            Case(init={"num_features": 4, "affine": True}, shape=(3, 4, 3, 4), desc="affine"),
        ),
        functional=lambda x, m: NF.instance_norm(
            x, m.running_mean, m.running_var, m.weight, m.bias, True, m.momentum, m.eps
        ),
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(4,), min_spatial=2),
        bad_init=({"momentum": None},),
    ),
)
