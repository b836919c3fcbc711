"""Harness entries of the smooth / sigmoidal activations (torch.nn's Sigmoid, Tanh, LogSigmoid, Softplus,
Softsign, Hardsigmoid, Hardswish, and GELU's sigmoid approximation): closed forms in float64, written from the
formulas without calling normact or torch's activation functions."""

from __future__ import annotations

import math

import mpmath as mp
import torch
import torch.nn.functional as F

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics

ANY = Layout(min_rank=0)
E = math.e
LN2, LN3 = math.log(2.0), math.log(3.0)
GELU_SIGMOID_SCALE = 1.702  # Hendrycks & Gimpel, arXiv:1606.08415: Phi(x) ~ sigmoid(1.702 x)


def _logistic(z):
    return 1.0 / (1.0 + torch.exp(-z))


def ref_sigmoid(x, p, hp):
    return _logistic(x)


def ref_tanh(x, p, hp):
    # (e^x - e^-x) / (e^x + e^-x) = (e^{2x} - 1) / (e^{2x} + 1), with expm1 for accuracy near 0
    u = torch.expm1(2.0 * x)
    return u / (u + 2.0)


def ref_logsigmoid(x, p, hp):
    # log(1 / (1 + e^-x)) = -log(1 + e^-x) = x - log(1 + e^x); each branch where its exponential cannot overflow
    neg = torch.clamp(x, max=0.0)
    pos = torch.clamp(x, min=0.0)
    return torch.where(x < 0, neg - torch.log1p(torch.exp(neg)), -torch.log1p(torch.exp(-pos)))


def ref_softplus(x, p, hp):
    beta, threshold = hp["beta"], hp["threshold"]
    z = beta * x
    smooth = torch.log1p(torch.exp(torch.clamp(z, max=threshold))) / beta
    return torch.where(z > threshold, x, smooth)  # torch's linear region: x itself where beta x > threshold


def ref_softsign(x, p, hp):
    return x / (1.0 + torch.abs(x))


def ref_hardsigmoid(x, p, hp):
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    return torch.where(x <= -3.0, zero, torch.where(x >= 3.0, one, x / 6.0 + 0.5))


def ref_hardswish(x, p, hp):
    return torch.where(x <= -3.0, torch.zeros_like(x), torch.where(x >= 3.0, x, x * (x + 3.0) / 6.0))


def ref_gelu_sigmoid(x, p, hp):
    return x / (1.0 + torch.exp(-GELU_SIGMOID_SCALE * x))


# mpmath references (tests/test_numerics.py): the same formulas at 40 digits, for the tails and the derivatives
# at switch points; torch's documented case distinctions (softplus's linear region) included.


def mp_sigmoid(x, p, hp):
    return 1 / (1 + mp.exp(-x))


def mp_tanh(x, p, hp):
    return (mp.exp(x) - mp.exp(-x)) / (mp.exp(x) + mp.exp(-x))


def mp_logsigmoid(x, p, hp):
    return -mp.log1p(mp.exp(-x))


def mp_softplus(x, p, hp):
    beta = mp.mpf(hp["beta"])
    return x if beta * x > hp["threshold"] else mp.log1p(mp.exp(beta * x)) / beta


def mp_softsign(x, p, hp):
    return x / (1 + abs(x))


def mp_hardsigmoid(x, p, hp):
    return mp.mpf(0) if x <= -3 else mp.mpf(1) if x >= 3 else x / 6 + mp.mpf(1) / 2


def mp_hardswish(x, p, hp):
    return mp.mpf(0) if x <= -3 else x if x >= 3 else x * (x + 3) / 6


def mp_gelu_sigmoid(x, p, hp):
    return x / (1 + mp.exp(-mp.mpf("1.702") * x))


_POINTWISE = (
    Case(shape=(4, 16)),
    Case(shape=(2, 3, 5, 4), desc="4d", scale=4.0, offset=-1.0),
    Case(shape=(), desc="scalar", offset=0.7),
)


def _linspace(lo, hi, n=64):
    return lambda shape, g: torch.linspace(lo, hi, n, dtype=torch.float64)


def _pointwise(name, reference, functional, *, extra_cases=(), **kwargs):
    return LayerEntry(
        name=name,
        reference=reference,
        cases=(*_POINTWISE, *extra_cases),
        functional=functional,
        layout=ANY,
        **kwargs,
    )


ENTRIES = (
    _pointwise(
        "sigmoid",
        ref_sigmoid,
        lambda x, m: NF.sigmoid(x),
        extra_cases=(Case(shape=(64,), desc="wide", input_fn=_linspace(-30.0, 30.0)),),
        # sigma(0) = 1/2; sigma(ln 3) = 1 / (1 + 1/3) = 3/4; sigma(1) = 1 / (1 + e^-1); sigma(-2) = 1 / (1 + e^2)
        points=((0.0, 0.5), (LN3, 0.75), (1.0, 1 / (1 + 1 / E)), (-2.0, 1 / (1 + E**2))),
        numerics=Numerics(mp_sigmoid),
    ),
    _pointwise(
        "tanh",
        ref_tanh,
        lambda x, m: NF.tanh(x),
        extra_cases=(Case(shape=(64,), desc="wide", input_fn=_linspace(-30.0, 30.0)),),
        # tanh(atanh(1/2)) = 1/2 with atanh(1/2) = ln(3)/2; tanh(-ln 2) = -(2 - 1/2) / (2 + 1/2) = -3/5
        points=((0.0, 0.0), (LN3 / 2, 0.5), (-LN2, -0.6), (1.0, (E**2 - 1) / (E**2 + 1))),
        numerics=Numerics(mp_tanh),
    ),
    _pointwise(
        "logsigmoid",
        ref_logsigmoid,
        lambda x, m: NF.logsigmoid(x),
        extra_cases=(Case(shape=(64,), desc="wide", input_fn=_linspace(-40.0, 40.0)),),
        # log sigma(0) = -ln 2; log sigma(ln 3) = ln(3/4); log sigma(-ln 3) = ln(1/4) = -2 ln 2
        points=((0.0, -LN2), (LN3, math.log(0.75)), (-LN3, -2 * LN2), (1.0, -math.log(1 + 1 / E))),
        numerics=Numerics(mp_logsigmoid),
    ),
    _pointwise(
        "softplus",
        ref_softplus,
        lambda x, m: NF.softplus(x, m.beta, m.threshold),
        extra_cases=(
            # across the linear region at x = threshold / beta = 20 (no grid point within 0.4 of it)
            Case(shape=(64,), desc="wide", input_fn=_linspace(-30.0, 30.0)),
            Case(
                init={"beta": 2.0, "threshold": 10.0}, shape=(64,), desc="beta2_threshold10", input_fn=_linspace(-8, 8)
            ),
            Case(init={"beta": 0.5}, shape=(4, 16), desc="beta_half", scale=3.0),
        ),
        # ln(1 + e^0) = ln 2; ln(1 + 3) = ln 4; ln(1 + 1/3) = ln(4/3); at x = 20 (beta x = threshold, not above it)
        # still ln(1 + e^20); above it x itself
        points=(
            (0.0, LN2),
            (LN3, 2 * LN2),
            (-LN3, math.log(4 / 3)),
            (20.0, math.log1p(math.exp(20.0))),
            (25.0, 25.0),
        ),
        bad_init=({"beta": 0.0}, {"beta": -1.0}, {"threshold": 0.0}, {"threshold": float("nan")}),
        # torch's linear region starts above beta x = threshold: at x = 20 a jump of log1p(e^-20) ~ 2e-9
        kinks=(20.0,),
        numerics=Numerics(
            mp_softplus,
            kink_grads=(1 / (1 + math.exp(-20.0)),),
            torch_twin=lambda x, m: F.softplus(x, m.beta, m.threshold),
        ),
    ),
    _pointwise(
        "softsign",
        ref_softsign,
        lambda x, m: NF.softsign(x),
        # the second derivative jumps at 0 (f is C^1 only): gradcheck keeps away, the kink check compares slopes
        kinks=(0.0,),
        points=((0.0, 0.0), (1.0, 0.5), (-3.0, -0.75), (0.25, 0.2)),
        numerics=Numerics(mp_softsign, kink_grads=(1.0,), torch_twin=lambda x, m: F.softsign(x)),
    ),
    _pointwise(
        "hardsigmoid",
        ref_hardsigmoid,
        lambda x, m: NF.hardsigmoid(x),
        extra_cases=(Case(shape=(64,), desc="wide", input_fn=_linspace(-8.0, 8.0)),),
        kinks=(-3.0, 3.0),
        # relu6(x + 3) / 6: 0 at -3 and below, 1 at 3 and above, 3/6 at 0, (1.5 + 3) / 6 = 3/4 at 1.5
        points=((-3.0, 0.0), (3.0, 1.0), (0.0, 0.5), (1.5, 0.75), (-4.0, 0.0), (4.0, 1.0)),
        numerics=Numerics(mp_hardsigmoid, kink_grads=(0.0, 0.0), torch_twin=lambda x, m: F.hardsigmoid(x)),
    ),
    _pointwise(
        "hardswish",
        ref_hardswish,
        lambda x, m: NF.hardswish(x),
        extra_cases=(Case(shape=(64,), desc="wide", input_fn=_linspace(-8.0, 8.0)),),
        kinks=(-3.0, 3.0),
        # x relu6(x + 3) / 6: 0 at -3, 3 * 6/6 = 3 at 3, -1.5 * 1.5 / 6 = -3/8 (the minimum) at -1.5, 1 * 4/6 at 1
        points=((-3.0, 0.0), (3.0, 3.0), (-1.5, -0.375), (1.0, 2 / 3), (-4.0, 0.0), (5.0, 5.0)),
        numerics=Numerics(mp_hardswish, kink_grads=(0.0, 1.0), torch_twin=lambda x, m: F.hardswish(x)),
    ),
    _pointwise(
        "gelu_sigmoid",
        ref_gelu_sigmoid,
        lambda x, m: NF.gelu_sigmoid(x),
        extra_cases=(Case(shape=(64,), desc="wide", input_fn=_linspace(-30.0, 30.0)),),
        # x / (1 + e^{-1.702 x}); at x = ln(3)/1.702 the gate is 1 / (1 + 1/3) = 3/4
        points=(
            (0.0, 0.0),
            (1.0, 1 / (1 + math.exp(-GELU_SIGMOID_SCALE))),
            (-1.0, -1 / (1 + math.exp(GELU_SIGMOID_SCALE))),
            (LN3 / GELU_SIGMOID_SCALE, 0.75 * LN3 / GELU_SIGMOID_SCALE),
        ),
        numerics=Numerics(mp_gelu_sigmoid),
    ),
)
