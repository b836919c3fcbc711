"""Harness entries of the gated linear units GLU, ReGLU and the bilinear unit: closed forms in float64, written
without calling normact. Points are pairs of halves (a, b)."""

from __future__ import annotations

import math

import mpmath as mp
import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics

SPLIT_LAST = Layout(min_rank=1, even_axis=-1)
E = math.e


def _halves(x, dim):
    n = x.shape[dim] // 2
    return x.narrow(dim, 0, n), x.narrow(dim, n, n)


def ref_glu(x, p, hp):
    """Dauphin et al. / torch.nn.GLU: the second half is the gate, a * sigmoid(b)."""
    a, b = _halves(x, hp["dim"])
    return a / (1.0 + torch.exp(-b))


def ref_reglu(x, p, hp):
    a, b = _halves(x, hp["dim"])
    return torch.where(a > 0, a, torch.zeros_like(a)) * b


def ref_bilinear(x, p, hp):
    a, b = _halves(x, hp["dim"])
    return a * b


# mpmath references (tests/test_numerics.py): x is the pair of halves (a, b).


def mp_glu(x, p, hp):
    a, b = x
    return a / (1 + mp.exp(-b))


def mp_reglu(x, p, hp):
    a, b = x
    return max(a, 0) * b


def mp_bilinear(x, p, hp):
    a, b = x
    return a * b


def _cases():
    return (
        Case(shape=(4, 16)),
        Case(shape=(2, 3, 8), desc="3d", scale=3.0, offset=-0.5),
        Case(init={"dim": 1}, shape=(2, 6, 3), desc="split_dim1", layout=Layout(min_rank=2, even_axis=1)),
        Case(init={"dim": 0}, shape=(4,), desc="1d_dim0"),
    )


def _gated(name, reference, functional, points, kinks=(), numerics=None):
    return LayerEntry(
        name=name,
        reference=reference,
        cases=_cases(),
        functional=functional,
        layout=SPLIT_LAST,
        kinks=kinks,
        points=points,
        bad_init=({"dim": 1.5}, {"dim": "last"}),
        numerics=numerics,
    )


ENTRIES = (
    _gated(
        "glu",
        ref_glu,
        lambda x, m: NF.glu(x, m.dim),
        # a * sigmoid(b): sigmoid(0) = 1/2, sigmoid(1) = 1/(1 + e^-1), sigmoid(-2) = 1/(1 + e^2)
        points=(((1.0, 0.0), 0.5), ((2.0, 1.0), 2 / (1 + 1 / E)), ((-3.0, -2.0), -3 / (1 + E**2)), ((0.0, 5.0), 0.0)),
        numerics=Numerics(mp_glu),
    ),
    _gated(
        "reglu",
        ref_reglu,
        lambda x, m: NF.reglu(x, m.dim),
        # max(0, a) * b; the kink is at a = 0 (the harness checks it with b = 1)
        points=(((2.0, 3.0), 6.0), ((-2.0, 3.0), 0.0), ((1.5, -4.0), -6.0), ((0.0, 7.0), 0.0)),
        kinks=(0.0,),
        # torch has no ReGLU: at a = 0 the derivative is the max(0, a) = 0 piece's (ReLU's), 0
        numerics=Numerics(mp_reglu, kink_grads=(0.0,), gate=0),
    ),
    _gated(
        "bilinear",
        ref_bilinear,
        lambda x, m: NF.bilinear(x, m.dim),
        points=(((2.0, 3.0), 6.0), ((-2.0, 3.0), -6.0), ((-1.5, -4.0), 6.0), ((0.5, 0.0), 0.0)),
        numerics=Numerics(mp_bilinear),
    ),
)
