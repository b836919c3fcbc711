"""Harness entries of the EvoNorm family (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967) and timm's variants.

References are written here in float64 from the formulas (paper Table/Appendix for B0 and S0, timm's
``evo_norm.py`` definitions for B1, B2, S0a, S1, S1a, S2, S2a) without calling normact. ``apply_act=False``
follows timm: the B variants and S0/S1/S2 reduce to ``x * weight + bias``, the "a" variants keep the
division by the group statistic and only drop the gate.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout

# ----------------------------------------------------------------------------- helpers


def _c(t):
    """(C,) -> (1, C, 1, 1)."""
    return t.reshape(1, -1, 1, 1)


def _affine(y, p):
    w, b = p.get("weight"), p.get("bias")
    if w is not None:
        y = y * _c(w)
    if b is not None:
        y = y + _c(b)
    return y


def _sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _silu(x):
    return x * _sigmoid(x)


def _groups(hp):
    return hp["num_features"] // hp["group_size"] if hp["group_size"] else hp["num_groups"]


def _group_stat(x, g, centered, eps):
    """sqrt(stat + eps) per sample and group, broadcast back to x's shape: stat is the biased variance
    (centered) or the mean square over the group's C/G channels and (H, W)."""
    n, c, h, w = x.shape
    xg = x.reshape(n, g, c // g * h * w)
    mean = xg.sum(-1, keepdim=True) / xg.shape[-1]
    if centered:
        stat = ((xg - mean) ** 2).sum(-1, keepdim=True) / xg.shape[-1]
    else:
        stat = (xg * xg).sum(-1, keepdim=True) / xg.shape[-1]
    d = torch.sqrt(stat + eps)
    return d.expand(n, g, c // g * h * w).reshape(n, c, h, w)


# ----------------------------------------------------------------------------- references


def _ref_b(right_term):
    """EvoNorm-B family: y = x / max(sqrt(s_b^2 + eps), right(x)) * w + b. In training s_b^2 is the biased
    variance over (N, H, W) per channel and running_var <- (1 - m) running_var + m * n/(n-1) * s_b^2; in eval
    s_b^2 = running_var. With apply_act=False the layer is the affine alone and running_var is untouched."""

    def reference(x, p, hp):
        rv = p["running_var"]
        if not hp["apply_act"]:
            y = _affine(x, p)
            return (y, {"running_var": rv}) if hp["training"] else y
        eps = hp["eps"]
        if hp["training"]:
            n = x.shape[0] * x.shape[2] * x.shape[3]
            mean = x.sum((0, 2, 3)) / n
            s_b2 = ((x - _c(mean)) ** 2).sum((0, 2, 3)) / n
        else:
            s_b2 = rv
        left = torch.sqrt(_c(s_b2) + eps)
        denom = torch.where(left > right_term(x, p, eps), left, right_term(x, p, eps))
        y = _affine(x / denom, p)
        if not hp["training"]:
            return y
        m = hp["momentum"]
        return y, {"running_var": (1 - m) * rv + m * s_b2 * n / (n - 1)}

    return reference


def _b0_right(x, p, eps):
    """v x + sqrt(s_w^2 + eps), s_w^2 the biased variance per sample and channel over (H, W)."""
    hw = x.shape[2] * x.shape[3]
    mu = x.sum((2, 3), keepdim=True) / hw
    s_w2 = ((x - mu) ** 2).sum((2, 3), keepdim=True) / hw
    return _c(p["v"]) * x + torch.sqrt(s_w2 + eps)


def _b1_right(x, p, eps):
    """(x + 1) * sqrt(mean_hw(x^2) + eps)."""
    hw = x.shape[2] * x.shape[3]
    return (x + 1) * torch.sqrt((x * x).sum((2, 3), keepdim=True) / hw + eps)


def _b2_right(x, p, eps):
    """sqrt(mean_hw(x^2) + eps) - x."""
    hw = x.shape[2] * x.shape[3]
    return torch.sqrt((x * x).sum((2, 3), keepdim=True) / hw + eps) - x


ref_evonorm_b0 = _ref_b(_b0_right)
ref_evonorm_b1 = _ref_b(_b1_right)
ref_evonorm_b2 = _ref_b(_b2_right)


def _ref_s(numerator, centered, a_variant):
    """EvoNorm-S family: y = numerator(x) / sqrt(stat_g + eps) * w + b, the statistic per sample and group.
    apply_act=False: affine only (plain variants) or x / sqrt(stat_g + eps) * w + b ("a" variants)."""

    def reference(x, p, hp):
        if not hp["apply_act"] and not a_variant:
            return _affine(x, p)
        num = numerator(x, p) if hp["apply_act"] else x
        return _affine(num / _group_stat(x, _groups(hp), centered, hp["eps"]), p)

    return reference


def _s0_num(x, p):
    """x * sigmoid(v x)."""
    return x * _sigmoid(_c(p["v"]) * x)


def _silu_num(x, p):
    return _silu(x)


ref_evonorm_s0 = _ref_s(_s0_num, centered=True, a_variant=False)
ref_evonorm_s0a = _ref_s(_s0_num, centered=True, a_variant=True)
ref_evonorm_s1 = _ref_s(_silu_num, centered=True, a_variant=False)
ref_evonorm_s1a = _ref_s(_silu_num, centered=True, a_variant=True)
ref_evonorm_s2 = _ref_s(_silu_num, centered=False, a_variant=False)
ref_evonorm_s2a = _ref_s(_silu_num, centered=False, a_variant=True)


# ----------------------------------------------------------------------------- entries

_B_LAYOUT = Layout(feature_arg="num_features", feature_axis=1, ranks=(4,), min_batch=2)
# Hypothesis draws C = 2f channels in f groups: every group holds 2 channels, so a group variance is defined
# even at H = W = 1.
_S_LAYOUT = Layout(
    feature_arg="num_features",
    feature_axis=1,
    ranks=(4,),
    init_for=lambda f: ({"num_features": 2 * f, "num_groups": f}, 2 * f),
)
_B_BAD = ({"momentum": 1.5}, {"momentum": -0.1}, {"momentum": None})
# (num_groups not dividing C is checked in tests/test_evonorm_timm.py: group_size, when given, overrides it.)
_S_BAD = ({"num_groups": 0}, {"num_groups": 2.5}, {"group_size": 5}, {"group_size": 0})


def _b_cases(extra=()):
    return (
        Case(init={"num_features": 4}, shape=(3, 4, 5, 5), offset=0.5),
        Case(init={"num_features": 4}, shape=(3, 4, 5, 5), desc="eval", train=False, offset=0.5),
        Case(init={"num_features": 4, "apply_act": False}, shape=(2, 4, 3, 3), desc="no_act"),
        Case(
            init={"num_features": 4, "affine": False, "eps": 1e-4, "momentum": 0.3},
            shape=(2, 4, 3, 4),
            desc="no_affine",
            offset=-0.5,
        ),
        # (N, C, 1, 1): the layout the bench uses for flat features; the instance statistic is then 0.
        Case(init={"num_features": 6}, shape=(5, 6, 1, 1), desc="flat", offset=0.3),
        *extra,
    )


def _s_cases(a_variant):
    return (
        Case(init={"num_features": 8, "num_groups": 4}, shape=(2, 8, 4, 4), offset=0.5),
        Case(init={"num_features": 6, "num_groups": 1}, shape=(3, 6, 3, 3), desc="one_group", offset=-0.5),
        Case(init={"num_features": 8, "group_size": 2}, shape=(2, 8, 3, 2), desc="group_size"),
        Case(
            init={"num_features": 8, "num_groups": 4, "apply_act": False},
            shape=(2, 8, 3, 3),
            desc="no_act_normalized" if a_variant else "no_act",
            offset=0.5,
        ),
        Case(
            init={"num_features": 4, "num_groups": 2, "affine": False, "eps": 1e-2},
            shape=(3, 4, 3, 3),
            desc="no_affine",
            train=False,
        ),
        Case(init={"num_features": 8, "num_groups": 4}, shape=(3, 8, 1, 1), desc="flat"),
    )


def _b_functional(fn, has_v):
    def call(x, m):
        extra = {"v": m.v} if has_v else {}
        return fn(
            x,
            m.running_var,
            m.weight,
            m.bias,
            training=m.training,
            momentum=m.momentum,
            eps=m.eps,
            apply_act=m.apply_act,
            **extra,
        )

    return call


def _s_functional(fn, has_v):
    def call(x, m):
        extra = {"v": m.v} if has_v else {}
        return fn(x, m.num_groups, m.weight, m.bias, eps=m.eps, apply_act=m.apply_act, **extra)

    return call


ENTRIES = (
    LayerEntry(
        name="evonorm_b0",
        reference=ref_evonorm_b0,
        cases=_b_cases(),
        functional=_b_functional(NF.evonorm_b0, has_v=True),
        layout=_B_LAYOUT,
        bad_init=_B_BAD,
    ),
    LayerEntry(
        name="evonorm_b1",
        reference=ref_evonorm_b1,
        cases=_b_cases(),
        functional=_b_functional(NF.evonorm_b1, has_v=False),
        layout=_B_LAYOUT,
        bad_init=_B_BAD,
    ),
    LayerEntry(
        name="evonorm_b2",
        reference=ref_evonorm_b2,
        cases=_b_cases(),
        functional=_b_functional(NF.evonorm_b2, has_v=False),
        layout=_B_LAYOUT,
        bad_init=_B_BAD,
    ),
    LayerEntry(
        name="evonorm_s0",
        reference=ref_evonorm_s0,
        cases=_s_cases(a_variant=False),
        functional=_s_functional(NF.evonorm_s0, has_v=True),
        layout=_S_LAYOUT,
        bad_init=_S_BAD,
    ),
    LayerEntry(
        name="evonorm_s0a",
        reference=ref_evonorm_s0a,
        cases=_s_cases(a_variant=True),
        functional=_s_functional(NF.evonorm_s0a, has_v=True),
        layout=_S_LAYOUT,
        bad_init=_S_BAD,
    ),
    LayerEntry(
        name="evonorm_s1",
        reference=ref_evonorm_s1,
        cases=_s_cases(a_variant=False),
        functional=_s_functional(NF.evonorm_s1, has_v=False),
        layout=_S_LAYOUT,
        bad_init=_S_BAD,
    ),
    LayerEntry(
        name="evonorm_s1a",
        reference=ref_evonorm_s1a,
        cases=_s_cases(a_variant=True),
        functional=_s_functional(NF.evonorm_s1a, has_v=False),
        layout=_S_LAYOUT,
        bad_init=_S_BAD,
    ),
    LayerEntry(
        name="evonorm_s2",
        reference=ref_evonorm_s2,
        cases=_s_cases(a_variant=False),
        functional=_s_functional(NF.evonorm_s2, has_v=False),
        layout=_S_LAYOUT,
        bad_init=_S_BAD,
    ),
    LayerEntry(
        name="evonorm_s2a",
        reference=ref_evonorm_s2a,
        cases=_s_cases(a_variant=True),
        functional=_s_functional(NF.evonorm_s2a, has_v=False),
        layout=_S_LAYOUT,
        bad_init=_S_BAD,
    ),
)
