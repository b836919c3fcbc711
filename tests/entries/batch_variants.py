"""Harness entries of the batch-dependent BatchNorm variants: Batch Renormalization (Ioffe, 2017,
arXiv:1702.03275, Algorithm 1), IBN (Pan et al., 2018, arXiv:1807.09441, official ibnnet/modules.py) and
Batch-Channel Normalization (Qiao et al., 2019, arXiv:1903.10520, official BCNorm/EstBN).

References are float64 formulas written here without calling normact.

Two properties of these layers shape the training cases, because gradcheck re-runs the forward several
times on one module and compares the implemented gradient with finite differences:

- Batch Renormalization's r and d are stop-gradient: finite differences see their dependence on x, the
  implemented (paper's) gradient does not. Training cases therefore keep r and d clipped at their bounds in
  every channel (inputs far from the running statistics), or use r_max=1, d_max=0 (BatchNorm); the
  unclipped training path is checked against this reference in tests/test_batch_variants.py.
- Batch-Channel Normalization normalizes with the running estimates, updated by every forward: with
  momentum > 0 each gradcheck call would see other buffers. Its training cases use momentum=0; the update
  with momentum > 0 is checked against this reference in tests/test_batch_variants.py.
"""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import affine, channel_view, module_factor, reduce_dims, running_update, scale_shift
from tests.entries.norm import ref_instancenorm

# ----------------------------------------------------------------------------- references


def ref_batchrenorm(x, p, hp):
    """Algorithm 1 of the paper, sigma = sqrt(running_var + eps): ((x - mu_B)/sigma_B * r + d) * gamma + beta
    in training, r = clip(sigma_B/sigma, 1/r_max, r_max), d = clip((mu_B - mu)/sigma, -d_max, d_max), then
    the moving averages (unbiased variance); (x - mu)/sigma * gamma + beta in eval."""
    view, dims, eps = channel_view(x), reduce_dims(x), hp["eps"]
    mu, sigma = p["running_mean"], torch.sqrt(p["running_var"] + eps)
    w, b = p.get("weight"), p.get("bias")
    if not hp["training"]:
        return scale_shift((x - mu.reshape(view)) / sigma.reshape(view), w, b, view)
    n = x.numel() // x.shape[1]
    mu_b = x.sum(dims) / n
    var_b = ((x - mu_b.reshape(view)) ** 2).sum(dims) / n
    sigma_b = torch.sqrt(var_b + eps)
    r = torch.minimum(
        torch.maximum(sigma_b / sigma, torch.full_like(sigma, 1 / hp["r_max"])), torch.full_like(sigma, hp["r_max"])
    )
    d = torch.minimum(
        torch.maximum((mu_b - mu) / sigma, torch.full_like(mu, -hp["d_max"])), torch.full_like(mu, hp["d_max"])
    )
    xhat = (x - mu_b.reshape(view)) / sigma_b.reshape(view) * r.reshape(view) + d.reshape(view)
    return scale_shift(xhat, w, b, view), running_update(p, hp, mu_b, var_b * n / (n - 1))


def ref_ibn(x, p, hp):
    """The first floor(ratio * C) channels instance-normalized (per sample/channel over H, W) with affine,
    the rest batch-normalized (torch BatchNorm2d semantics), concatenated."""
    c = x.shape[1]
    h = math.floor(hp["ratio"] * c)
    eps, view = hp["eps"], (1, -1, 1, 1)
    outs, buffers = [], None
    if h > 0:
        xi = x[:, :h]
        mu = xi.mean((2, 3), keepdim=True)
        var = ((xi - mu) ** 2).mean((2, 3), keepdim=True)
        outs.append(scale_shift((xi - mu) / torch.sqrt(var + eps), p.get("in_weight"), p.get("in_bias"), view))
    if h < c:
        xb = x[:, h:]
        tracking = p.get("running_mean") is not None
        if hp["training"] or not tracking:
            n = xb.numel() // xb.shape[1]
            mean = xb.mean((0, 2, 3))
            var = ((xb - mean.reshape(view)) ** 2).mean((0, 2, 3))
            if hp["training"] and tracking:
                buffers = running_update(p, hp, mean, var * n / (n - 1))
        else:
            mean, var = p["running_mean"], p["running_var"]
        y = (xb - mean.reshape(view)) / torch.sqrt(var.reshape(view) + eps)
        outs.append(scale_shift(y, p.get("bn_weight"), p.get("bn_bias"), view))
    y = torch.cat(outs, dim=1)
    return (y, buffers) if buffers is not None else y


def ref_bcn(x, p, hp):
    """Official BCNorm(estimate=True): in training the estimates move first (mean towards E_B[x], variance
    towards E_B[(x - old estimate)^2], no Bessel correction); the updated estimates normalize x (then the
    per-channel affine); then per sample and group of C/G channels (and spatial dims) a normalization with
    the biased variance and the per-group affine."""
    c, n = x.shape[1], x.shape[0]
    g = hp["num_groups"] or math.gcd(c, 32)
    eps, view, dims = hp["eps"], channel_view(x), reduce_dims(x)
    mu, var = p["running_mean"], p["running_var"]
    buffers = None
    if hp["training"]:
        m = hp["momentum"]
        batch_mean = x.mean(dims)
        batch_sq = ((x - mu.reshape(view)) ** 2).mean(dims)
        mu = (1 - m) * mu + m * batch_mean
        var = (1 - m) * var + m * batch_sq
        buffers = {"running_mean": mu, "running_var": var, "num_batches_tracked": p["num_batches_tracked"] + 1}
    z = affine((x - mu.reshape(view)) / torch.sqrt(var.reshape(view) + eps), p, view)
    zg = z.reshape(n, g, -1)
    zm = zg.mean(-1, keepdim=True)
    zv = ((zg - zm) ** 2).mean(-1, keepdim=True)
    y = scale_shift((zg - zm) / torch.sqrt(zv + eps), p.get("group_weight"), p.get("group_bias"), (1, g, 1))
    y = y.reshape(x.shape)
    return (y, buffers) if buffers is not None else y


# ----------------------------------------------------------------------------- functional calls


def _brn_functional(x, m):
    factor = module_factor(m)
    return NF.batch_renorm(
        x, m.running_mean, m.running_var, m.weight, m.bias, m.training, factor, m.eps, m.r_max, m.d_max
    )


def _ibn_functional(x, m):
    factor = module_factor(m) if m.running_mean is not None else 0.0
    return NF.ibn(
        x, m.half, m.in_weight, m.in_bias, m.running_mean, m.running_var, m.bn_weight, m.bn_bias,
        m.training, factor, m.eps,
    )  # fmt: skip


def _bcn_functional(x, m):
    return NF.batch_channel_norm(
        x, m.num_groups, m.running_mean, m.running_var, m.weight, m.bias, m.group_weight, m.group_bias,
        m.training, m.momentum, m.eps,
    )  # fmt: skip


# ----------------------------------------------------------------------------- entries

_CHANNEL_FIRST = Layout(feature_arg="num_features", feature_axis=1, ranks=(2, 3, 4), min_batch=2)

ENTRIES = (
    LayerEntry(
        name="batchrenorm",
        reference=ref_batchrenorm,
        cases=(
            # r clipped at r_max (sigma_B ~ 3 > 1.2 sigma) and d at d_max (mu_B - mu ~ 3 > 0.5 sigma).
            Case(
                init={"num_features": 6, "r_max": 1.2, "d_max": 0.5, "momentum": 0.01},
                shape=(4, 6, 5),
                scale=3.0,
                offset=3.0,
                desc="clipped_high",
            ),
            # r clipped at 1/r_max (sigma_B ~ 0.2) and d at -d_max (mu_B - mu ~ -3).
            Case(
                init={"num_features": 6, "momentum": 0.01, "r_max": 1.5, "d_max": 0.5},
                shape=(8, 6, 2, 2),
                scale=0.2,
                offset=-3.0,
                desc="clipped_low",
            ),
            Case(
                init={"num_features": 5, "r_max": 1.0, "d_max": 0.0, "affine": False, "momentum": None},
                shape=(8, 5),
                offset=0.5,
                desc="bn_limit_no_affine_cumulative",
            ),
            Case(init={"num_features": 6}, shape=(4, 6, 3, 3), offset=0.5, train=False, desc="eval"),
            Case(init={"num_features": 6, "eps": 1e-3}, shape=(5, 6), offset=-1.0, train=False, desc="eval_2d"),
        ),
        functional=_brn_functional,
        layout=_CHANNEL_FIRST,
        bad_init=({"r_max": 0.5}, {"d_max": -1.0}, {"momentum": 1.5}, {"r_max": float("inf")}),
    ),
    LayerEntry(
        name="ibn",
        reference=ref_ibn,
        cases=(
            Case(init={"num_features": 6}, shape=(4, 6, 3, 3), offset=0.5),
            Case(init={"num_features": 6}, shape=(3, 6, 4, 2), offset=0.5, train=False, desc="eval"),
            Case(init={"num_features": 7, "ratio": 0.3, "momentum": None}, shape=(2, 7, 3, 3), desc="ratio_0.3"),
            Case(init={"num_features": 4, "ratio": 0.0}, shape=(3, 4, 2, 3), offset=-0.5, desc="ratio_0"),
            Case(init={"num_features": 4, "ratio": 1.0}, shape=(3, 4, 2, 3), offset=1.0, desc="ratio_1"),
            Case(
                init={"num_features": 6, "affine": False, "track_running_stats": False, "eps": 1e-3},
                shape=(3, 6, 3, 3),
                train=False,
                desc="no_affine_untracked_eval",
            ),
        ),
        functional=_ibn_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(4,), min_batch=2),
        bad_init=({"ratio": -0.1}, {"ratio": 1.5}, {"momentum": -0.1}),
    ),
    LayerEntry(
        name="bcn",
        reference=ref_bcn,
        cases=(
            Case(init={"num_features": 8, "num_groups": 4, "momentum": 0.0}, shape=(4, 8, 3, 3), offset=0.5),
            Case(init={"num_features": 8, "num_groups": 2}, shape=(3, 8, 2, 2), offset=0.5, train=False, desc="eval"),
            Case(init={"num_features": 8, "num_groups": 2, "momentum": 0.0}, shape=(6, 8), offset=-0.5, desc="2d"),
            Case(
                init={"num_features": 6, "num_groups": 3, "momentum": 0.0, "affine": False, "eps": 1e-3},
                shape=(3, 6, 5),
                desc="3d_no_affine",
            ),
            Case(init={"num_features": 8, "momentum": 0.0}, shape=(1, 8, 2, 2), offset=1.0, desc="micro_batch_1"),
        ),
        functional=_bcn_functional,
        layout=Layout(
            feature_arg="num_features",
            feature_axis=1,
            ranks=(2, 3, 4),
            init_for=lambda f: ({"num_features": 2 * f, "num_groups": 2}, 2 * f),
        ),
        bad_init=({"num_groups": 5}, {"num_groups": 0}, {"momentum": 1.5}),
    ),
    LayerEntry(
        name="ibn_b",
        reference=ref_instancenorm,
        cases=(
            Case(init={"num_features": 4}, shape=(2, 4, 5, 5), offset=0.5),
            Case(init={"num_features": 3, "eps": 1e-3}, shape=(3, 3, 2, 4), desc="eps", train=False),
        ),
        functional=lambda x, m: NF.instance_norm(
            x, m.running_mean, m.running_var, m.weight, m.bias, True, m.momentum, m.eps
        ),
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(4,), min_spatial=2),
        bad_init=({"momentum": None},),
    ),
)
