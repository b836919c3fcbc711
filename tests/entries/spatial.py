"""Harness entries of the spatially conditioned normalizations: SPADE (Park et al., 2019, arXiv:1903.07291,
Eq. 1 and the official models/networks/normalization.py) and Region Normalization RN-B / RN-L (Yu et al., 2020,
arXiv:1911.10375, and the official rn.py: region statistics pooled over the batch, RN-L's threshold 0.8, 7x7
kernels and (1 + gamma) spatial affine).

References are float64 formulas written here without calling normact: the nearest resize by explicit source
indices floor(i * in / out), the region statistics by boolean selection of each region's pixels, channel by
channel. The conditioning inputs (``segmap`` for SPADE, ``mask`` for RN-B) come from each case's ``cond_fn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import running_update

# ----------------------------------------------------------------------------- helpers


def _nearest(t, size):
    """Nearest resize of the last two dims to ``size`` with source index floor(i * in / out)."""
    h, w = t.shape[-2:]
    rows = torch.tensor([(i * h) // size[0] for i in range(size[0])], dtype=torch.long)
    cols = torch.tensor([(j * w) // size[1] for j in range(size[1])], dtype=torch.long)
    return t[..., rows, :][..., cols]


def _same_conv(t, weight, bias):
    return F.conv2d(t, weight, bias, padding=weight.shape[-1] // 2)


# ----------------------------------------------------------------------------- SPADE


def ref_spade(x, p, hp, *, segmap):
    """Eq. 1 of the paper with the official (1 + gamma) form: BN or IN without affine, then
    x_hat * (1 + gamma(m)) + beta(m), m = segmap resized (nearest) to x's (H, W),
    gamma/beta = conv(ReLU(conv(m)))."""
    eps, view = hp["eps"], (1, -1, 1, 1)
    buffers = None
    if hp["param_free"] == "instance":
        mu = x.mean((2, 3), keepdim=True)
        var = ((x - mu) ** 2).mean((2, 3), keepdim=True)
        xhat = (x - mu) / torch.sqrt(var + eps)
    else:
        tracking = p.get("running_mean") is not None
        if hp["training"] or not tracking:
            n = x.numel() // x.shape[1]
            mu = x.mean((0, 2, 3))
            var = ((x - mu.reshape(view)) ** 2).mean((0, 2, 3))
            if hp["training"] and tracking:
                buffers = running_update(p, hp, mu, var * n / (n - 1))
        else:
            mu, var = p["running_mean"], p["running_var"]
        xhat = (x - mu.reshape(view)) / torch.sqrt(var.reshape(view) + eps)
    m = _nearest(segmap, x.shape[-2:])
    a = torch.relu(_same_conv(m, p["shared_weight"], p["shared_bias"]))
    gamma = _same_conv(a, p["gamma_weight"], p["gamma_bias"])
    beta = _same_conv(a, p["beta_weight"], p["beta_bias"])
    y = xhat * (1 + gamma) + beta
    return (y, buffers) if buffers is not None else y


def _segmap(label_nc, size=lambda h, w: (h, w), one_hot=False):
    """cond_fn: a (N, label_nc, h, w) map, random normal or one-hot labels."""

    def make(shape, g):
        n, _, h, w = shape
        sh, sw = size(h, w)
        if one_hot:
            labels = torch.randint(0, label_nc, (n, sh, sw), generator=g)
            return {"segmap": F.one_hot(labels, label_nc).permute(0, 3, 1, 2).to(torch.float64)}
        return {"segmap": torch.randn((n, label_nc, sh, sw), generator=g, dtype=torch.float64)}

    return make


def _half(h, w):
    return max(1, (h + 1) // 2), max(1, (w + 1) // 2)


def _double(h, w):
    return 2 * h, 2 * w


def _spade_functional(x, m, segmap):
    factor = 0.0
    if m.training and m.running_mean is not None:
        m.num_batches_tracked.add_(1)
        factor = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
    return NF.spade(
        x, segmap, m.shared_weight, m.shared_bias, m.gamma_weight, m.gamma_bias, m.beta_weight, m.beta_bias,
        m.running_mean, m.running_var, m.training, factor, m.eps, m.param_free,
    )  # fmt: skip


# ----------------------------------------------------------------------------- Region Normalization


def _binary(mask, size):
    """The mask as bool (N, 1, H, W): floating > 0.5, others nonzero; resized (nearest) to ``size``."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    binary = mask > 0.5 if mask.is_floating_point() else mask != 0
    return _nearest(binary, size)


def _region_normalize(x, m, p, hp):
    """Each region k (m == k) of each channel normalized by the mean and biased variance of its pixels over
    the whole batch (training, or no running statistics) or by running_mean[k], running_var[k]; the buffers
    after the per-region running update (regions present only)."""
    eps = hp["eps"]
    tracking = p.get("running_mean") is not None
    use_batch = hp["training"] or not tracking
    y = torch.zeros_like(x)
    c = x.shape[1]
    mean = torch.zeros(2, c, dtype=x.dtype)
    var = torch.zeros(2, c, dtype=x.dtype)
    counts = [0, 0]
    for k in (0, 1):
        sel = m[:, 0] == bool(k)  # (N, H, W)
        counts[k] = int(sel.sum())
        for ch in range(c):
            values = x[:, ch][sel]
            if use_batch:
                if counts[k] == 0:
                    continue
                mean[k, ch] = values.mean()
                var[k, ch] = ((values - mean[k, ch]) ** 2).mean()
                mu, v = mean[k, ch], var[k, ch]
            else:
                mu, v = p["running_mean"][k, ch], p["running_var"][k, ch]
            out = y[:, ch]
            out[sel] = (values - mu) / torch.sqrt(v + eps)
    buffers = None
    if hp["training"] and tracking:
        rm, rv = p["running_mean"].clone(), p["running_var"].clone()
        tracked = p["num_batches_tracked"].clone()
        for k in (0, 1):
            if counts[k] == 0:
                continue
            tracked[k] += 1
            f = hp["momentum"] if hp["momentum"] is not None else 1.0 / float(tracked[k])
            unbiased = var[k] * counts[k] / max(counts[k] - 1, 1)
            rm[k] = (1 - f) * rm[k] + f * mean[k]
            rv[k] = (1 - f) * rv[k] + f * unbiased
        buffers = {"running_mean": rm, "running_var": rv, "num_batches_tracked": tracked}
    return y, buffers


def ref_region_norm_b(x, p, hp, *, mask):
    """RN-B: regions of the (nearest-resized) binary mask normalized separately, then region k's affine
    weight[k], bias[k] at its pixels."""
    m = _binary(mask, x.shape[-2:])
    y, buffers = _region_normalize(x, m, p, hp)
    if p.get("weight") is not None:
        w = torch.where(m, p["weight"][1].reshape(1, -1, 1, 1), p["weight"][0].reshape(1, -1, 1, 1))
        b = torch.where(m, p["bias"][1].reshape(1, -1, 1, 1), p["bias"][0].reshape(1, -1, 1, 1))
        y = y * w + b
    return (y, buffers) if buffers is not None else y


def ref_region_norm_l(x, p, hp):
    """RN-L: S = sigmoid(conv([mean_c x, max_c x])), M = S >= threshold, region normalization by M, then
    x_hat * (1 + conv(S)) + conv(S)."""
    pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], dim=1)
    s = torch.sigmoid(_same_conv(pooled, p["sa_weight"], None))
    m = s >= hp["threshold"]
    y, buffers = _region_normalize(x, m, p, hp)
    gamma = _same_conv(s, p["gamma_weight"], p["gamma_bias"])
    beta = _same_conv(s, p["beta_weight"], p["beta_bias"])
    y = y * (1 + gamma) + beta
    return (y, buffers) if buffers is not None else y


def _mask(size=lambda h, w: (h, w), kind="bool", p=0.5, squeeze=False):
    """cond_fn: a random binary mask (N, 1, h, w) (or (N, h, w)), bool / float 0-1 / int64, P(1) = p."""

    def make(shape, g):
        n, _, h, w = shape
        sh, sw = size(h, w)
        binary = torch.rand((n, 1, sh, sw), generator=g, dtype=torch.float64) < p
        mask = {"bool": binary, "float": binary.to(torch.float64), "int": binary.to(torch.long)}[kind]
        return {"mask": mask[:, 0] if squeeze else mask}

    return make


def _region_b_functional(x, m, mask):
    return NF.region_norm(
        x, mask, m.weight, m.bias, m.running_mean, m.running_var, m.num_batches_tracked, m.training, m.momentum,
        m.eps,
    )  # fmt: skip


def _region_l_functional(x, m):
    return NF.region_norm_l(
        x, m.sa_weight, m.gamma_weight, m.gamma_bias, m.beta_weight, m.beta_bias, m.running_mean, m.running_var,
        m.num_batches_tracked, m.training, m.momentum, m.eps, m.threshold,
    )  # fmt: skip


# ----------------------------------------------------------------------------- entries

_SPADE_LAYOUT = Layout(feature_arg="num_features", feature_axis=1, ranks=(4,), min_batch=2)
_REGION_LAYOUT = Layout(feature_arg="num_features", feature_axis=1, ranks=(4,))

ENTRIES = (
    LayerEntry(
        name="spade",
        reference=ref_spade,
        cases=(
            Case(
                init={"num_features": 4, "label_nc": 3, "hidden": 8},
                shape=(3, 4, 5, 4),
                offset=0.5,
                cond_fn=_segmap(3, one_hot=True),
                desc="one_hot_same_size",
            ),
            Case(
                init={"num_features": 5, "label_nc": 2, "hidden": 6, "momentum": None},
                shape=(2, 5, 6, 5),
                offset=-1.0,
                cond_fn=_segmap(2, size=_half),
                desc="smaller_segmap_cumulative",
            ),
            Case(
                init={"num_features": 3, "label_nc": 2, "hidden": 4, "kernel_size": 5, "eps": 1e-3},
                shape=(2, 3, 4, 3),
                offset=1.0,
                cond_fn=_segmap(2, size=_double),
                desc="larger_segmap_k5",
            ),
            Case(
                init={"num_features": 4, "label_nc": 3, "hidden": 8},
                shape=(3, 4, 4, 4),
                offset=0.5,
                train=False,
                cond_fn=_segmap(3, size=_half),
                desc="eval",
            ),
            Case(
                init={"num_features": 4, "label_nc": 1, "hidden": 4, "track_running_stats": False},
                shape=(2, 4, 3, 3),
                offset=0.5,
                train=False,
                cond_fn=_segmap(1),
                desc="untracked_eval",
            ),
        ),
        functional=_spade_functional,
        layout=_SPADE_LAYOUT,
        bad_init=(
            {"label_nc": 0},
            {"hidden": 0},
            {"kernel_size": 2},
            {"param_free": "group"},
            {"momentum": 1.5},
        ),
    ),
    LayerEntry(
        name="spade_instance",
        reference=ref_spade,
        cases=(
            Case(
                init={"num_features": 4, "label_nc": 3, "hidden": 8},
                shape=(2, 4, 5, 4),
                offset=0.5,
                cond_fn=_segmap(3, one_hot=True),
                desc="one_hot_same_size",
            ),
            Case(
                init={"num_features": 3, "label_nc": 2, "hidden": 4, "kernel_size": 1},
                shape=(1, 3, 6, 4),
                offset=-1.0,
                cond_fn=_segmap(2, size=_half),
                desc="smaller_segmap_k1_batch_1",
            ),
            Case(
                init={"num_features": 4, "label_nc": 2, "hidden": 4},
                shape=(2, 4, 3, 4),
                train=False,
                offset=1.0,
                cond_fn=_segmap(2, size=_double),
                desc="eval_larger_segmap",
            ),
        ),
        functional=_spade_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(4,)),
        bad_init=({"label_nc": -1}, {"kernel_size": 4}),
    ),
    LayerEntry(
        name="region_norm_b",
        reference=ref_region_norm_b,
        cases=(
            Case(init={"num_features": 4}, shape=(3, 4, 5, 4), offset=0.5, cond_fn=_mask(), desc="bool_mask"),
            Case(
                init={"num_features": 3, "momentum": None},
                shape=(2, 3, 4, 4),
                offset=-0.5,
                cond_fn=_mask(size=_double, kind="float", p=0.3, squeeze=True),
                desc="float_mask_nhw_larger_cumulative",
            ),
            Case(
                init={"num_features": 3, "affine": False, "eps": 1e-3},
                shape=(2, 3, 6, 4),
                offset=1.0,
                cond_fn=_mask(size=_half, kind="int", p=0.6),
                desc="int_mask_smaller_no_affine",
            ),
            Case(
                init={"num_features": 4},
                shape=(2, 4, 3, 3),
                offset=0.5,
                cond_fn=_mask(p=1.1),
                desc="all_ones_mask",
            ),
            Case(init={"num_features": 4}, shape=(3, 4, 4, 3), offset=0.5, train=False, cond_fn=_mask(), desc="eval"),
            Case(
                init={"num_features": 4, "track_running_stats": False},
                shape=(3, 4, 4, 3),
                offset=0.5,
                train=False,
                cond_fn=_mask(p=0.4),
                desc="untracked_eval",
            ),
        ),
        functional=_region_b_functional,
        layout=_REGION_LAYOUT,
        bad_init=({"momentum": -0.1},),
    ),
    LayerEntry(
        name="region_norm_l",
        reference=ref_region_norm_l,
        cases=(
            Case(init={"num_features": 4}, shape=(3, 4, 6, 5), offset=0.5),
            Case(
                init={"num_features": 3, "kernel_size": 3, "threshold": 0.5, "momentum": None},
                shape=(2, 3, 5, 5),
                offset=-0.5,
                desc="k3_threshold_0.5_cumulative",
            ),
            Case(init={"num_features": 4, "threshold": 0.6}, shape=(2, 4, 5, 4), offset=0.5, train=False, desc="eval"),
            Case(
                init={"num_features": 4, "track_running_stats": False, "eps": 1e-3},
                shape=(2, 4, 4, 4),
                train=False,
                desc="untracked_eval",
            ),
        ),
        functional=_region_l_functional,
        layout=_REGION_LAYOUT,
        bad_init=({"kernel_size": 6}, {"threshold": float("nan")}, {"momentum": 2.0}),
    ),
)

DISTRIBUTED_CASES = [
    ("spade", (8, 4, 5, 5), {"label_nc": 3, "hidden": 8}, _segmap(3, one_hot=True)),
    ("spade", (8, 3, 4, 4), {"label_nc": 2, "hidden": 4, "momentum": None}, _segmap(2, size=_half)),
    ("region_norm_b", (8, 4, 5, 5), {}, _mask()),
    ("region_norm_b", (8, 3, 4, 4), {"momentum": None}, _mask(size=_double, kind="float", p=0.3, squeeze=True)),
    ("region_norm_l", (8, 4, 5, 5), {"threshold": 0.5}, None),
]
