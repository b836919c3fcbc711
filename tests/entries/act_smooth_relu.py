"""Harness entries of SmeLU (Shamir, Lin & Coviello, 2020, arXiv:2010.09931), CRReLU (Sun et al., 2024,
arXiv:2405.12954) and VeLU (Shakarami et al., 2025, arXiv:2504.15051): closed forms in float64, written from the
formulas without calling normact.

VeLU is not elementwise (each element is scaled by a function of its row's mean square over the last dim), so
its exact points are the values at the five-element row (0, 1, -1, 2, -2), whose mean square is 2.
"""

from __future__ import annotations

import math

import mpmath as mp
import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics

ANY = Layout(min_rank=0)


def ref_smelu(x, p, hp):
    b = hp["beta"]
    quad = (x + b) ** 2 / (4 * b)
    return torch.where(x >= b, x, torch.where(x <= -b, torch.zeros_like(x), quad))


def mp_smelu(x, p, hp):
    b = mp.mpf(hp["beta"])
    if x >= b:
        return x
    if x <= -b:
        return mp.mpf(0)
    return (x + b) ** 2 / (4 * b)


def mp_crrelu(x, p, hp):
    return max(x, mp.mpf(0)) + p["epsilon"] * x * mp.exp(-(x**2) / 2)


def _channels(x, v, axis):
    if v.dim() == 0:
        return v
    axis = axis % x.dim()
    return v.reshape((-1,) + (1,) * (x.dim() - axis - 1))


def ref_crrelu(x, p, hp):
    eps = _channels(x, p["epsilon"], hp["channel_axis"])
    return torch.where(x > 0, x, torch.zeros_like(x)) + eps * x * torch.exp(-(x**2) / 2)


def ref_velu(x, p, hp):
    mean_square = (x**2).mean(dim=-1, keepdim=True)
    scale = 1 + hp["gamma"] * torch.tanh(hp["momentum"] / torch.sqrt(mean_square + hp["eps"]))
    mix = torch.atan(hp["beta1"] * x) + torch.asin(torch.clamp(hp["beta2"] * x, -1.0, 1.0))
    return p["lambd"] * x * torch.sigmoid(hp["alpha"] * mix) * scale


def _velu_point(x, row=(0.0, 1.0, -1.0, 2.0, -2.0)):
    """VeLU at its defaults (alpha = beta1 = beta2 = gamma = 0.1, momentum = 0.9, eps = 1e-6, lambda = 1) for the
    element x of ``row``."""
    mean_square = sum(v * v for v in row) / len(row)
    scale = 1 + 0.1 * math.tanh(0.9 / math.sqrt(mean_square + 1e-6))
    mix = math.atan(0.1 * x) + math.asin(0.1 * x)
    return x / (1 + math.exp(-0.1 * mix)) * scale


E = math.e

ENTRIES = (
    LayerEntry(
        name="smelu",
        reference=ref_smelu,
        cases=(
            Case(shape=(4, 16)),
            Case(shape=(2, 3, 5, 4), desc="4d", scale=3.0, offset=-0.5),
            Case(shape=(6, 7), desc="beta0.3", init={"beta": 0.3}, scale=0.5),
            Case(shape=(5, 4), desc="beta2.5", init={"beta": 2.5}, scale=4.0),
            Case(shape=(), desc="scalar", offset=0.4),
        ),
        functional=lambda x, m: NF.smelu(x, m.beta),
        layout=ANY,
        kinks=(-1.0, 1.0),
        points=((-2.0, 0.0), (-1.0, 0.0), (0.0, 1 / 4), (0.5, 1.5**2 / 4), (-0.5, 0.5**2 / 4), (1.0, 1.0), (3.0, 3.0)),
        bad_init=({"beta": 0.0}, {"beta": -1.0}, {"beta": float("inf")}),
        # C^1: the pieces meet with equal slopes, 0 at -beta and 1 at beta
        numerics=Numerics(mp_smelu, kink_grads=(0.0, 1.0)),
    ),
    LayerEntry(
        name="crrelu",
        reference=ref_crrelu,
        cases=(
            Case(shape=(4, 16)),
            Case(
                init={"dim": 16},
                shape=(4, 16),
                desc="per_channel",
                layout=Layout(feature_arg="dim", feature_axis=-1, min_rank=1),
            ),
            Case(
                init={"dim": 3, "channel_axis": 1},
                shape=(2, 3, 4, 4),
                desc="per_channel_nchw",
                layout=Layout(feature_arg="dim", feature_axis=1, min_rank=2),
            ),
            Case(init={"epsilon_init": -0.5, "learnable": False}, shape=(5, 7), desc="fixed_negative", scale=3.0),
            Case(shape=(), desc="scalar", offset=-0.8),
        ),
        functional=lambda x, m: NF.crrelu(x, m.epsilon, m.channel_axis),
        layout=ANY,
        kinks=(0.0,),
        points=(
            (0.0, 0.0),
            (1.0, 1 + 0.01 * E**-0.5),
            (-1.0, -0.01 * E**-0.5),
            (2.0, 2 + 0.02 * E**-2),
            (-3.0, -0.03 * E**-4.5),
        ),
        bad_init=({"epsilon_init": float("nan")}, {"dim": 0}, {"channel_axis": 1.5}),
        # ReLU's derivative at 0 is torch.relu's, 0: the derivative there is epsilon's term's, 0.01
        numerics=Numerics(mp_crrelu, kink_grads=(0.01,)),
    ),
    LayerEntry(
        name="velu",
        reference=ref_velu,
        cases=(
            Case(shape=(4, 16)),
            Case(shape=(2, 3, 5, 4), desc="4d", scale=4.0, offset=-1.0),
            Case(  # the settings of the official notebook's plot: the clip at |x| = 1/0.7 is active
                init={"alpha": 2.0, "beta1": 1.0, "beta2": 0.7},
                shape=(3, 20),
                desc="official_plot",
                input_fn=lambda shape, g: torch.linspace(-3.1, 3.3, 60, dtype=torch.float64).reshape(shape),
            ),
            Case(init={"learnable": False, "gamma": 0.5, "momentum": 2.0, "eps": 1e-3}, shape=(6, 5), desc="fixed"),
            Case(shape=(7,), desc="1d", scale=20.0),  # beyond the clip at |x| = 10
        ),
        functional=lambda x, m: NF.velu(x, m.lambd, m.alpha, m.beta1, m.beta2, m.gamma, m.momentum, m.eps),
        layout=Layout(min_rank=1),
        kinks=(-10.0, 10.0),
        points=tuple((x, _velu_point(x)) for x in (0.0, 1.0, -1.0, 2.0, -2.0)),
        bad_init=({"alpha": 0.0}, {"beta2": -0.1}, {"momentum": 0.0}, {"lambda_ot": -1.0}, {"gamma": float("nan")}),
    ),
)
