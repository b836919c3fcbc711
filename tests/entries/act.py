"""Harness entries of the activation functions: closed forms in float64, written without calling normact."""

from __future__ import annotations

import math

import mpmath as mp
import torch
import torch.nn.functional as F

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics, Setting

ANY = Layout(min_rank=0)
SPLIT_LAST = Layout(min_rank=1, even_axis=-1)


def _sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def _phi(z):
    """Standard normal CDF."""
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def ref_relu(x, p, hp):
    return torch.where(x > 0, x, torch.zeros_like(x))


def ref_relu2(x, p, hp):
    return torch.where(x > 0, x * x, torch.zeros_like(x))


def ref_gelu(x, p, hp):
    if hp["approximate"] == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return x * _phi(x)


def ref_silu(x, p, hp):
    return x * _sigmoid(x)


def ref_swish(x, p, hp):
    beta = p["beta"]
    if beta.dim() > 0:
        axis = hp["channel_axis"] % x.dim()
        beta = beta.reshape((-1,) + (1,) * (x.dim() - axis - 1))
    return x * _sigmoid(beta * x)


def ref_mish(x, p, hp):
    return x * torch.tanh(torch.log1p(torch.exp(x)))


def ref_golu(x, p, hp):
    return x * hp["alpha"] * torch.exp(-hp["beta"] * torch.exp(-hp["gamma"] * x))


def _halves(x, dim):
    n = x.shape[dim] // 2
    return x.narrow(dim, 0, n), x.narrow(dim, n, n)


def ref_swiglu(x, p, hp):
    a, b = _halves(x, hp["dim"])
    return a * _sigmoid(a) * b


def ref_geglu(x, p, hp):
    a, b = _halves(x, hp["dim"])
    return a * _phi(a) * b


# mpmath references (tests/test_numerics.py): the same formulas at 40 digits, for the tails and the
# derivatives at switch points.


def mp_sigmoid(z):
    return 1 / (1 + mp.exp(-z))


def mp_phi(z):
    """Standard normal CDF, accurate in both tails."""
    return mp.erfc(-z / mp.sqrt(2)) / 2


def mp_gelu(x, p, hp):
    if hp["approximate"] == "tanh":
        # 1 + tanh(u) = 2 / (1 + exp(-2u)): the same number without 40 digits cancelling below x = -10
        u = mp.sqrt(2 / mp.pi) * (x + mp.mpf(0.044715) * x**3)
        return x / (1 + mp.exp(-2 * u))
    return x * mp_phi(x)


def mp_relu2(x, p, hp):
    return x * x if x > 0 else mp.mpf(0)


def mp_golu(x, p, hp):
    return x * hp["alpha"] * mp.exp(-hp["beta"] * mp.exp(-hp["gamma"] * x))


def mp_swish(x, p, hp):
    return x * mp_sigmoid(p["beta"] * x)


_POINTWISE = (
    Case(shape=(4, 16)),
    Case(shape=(2, 3, 5, 4), desc="4d", scale=4.0, offset=-1.0),
    Case(shape=(), desc="scalar", offset=0.7),
)


E = math.e
PHI_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # Phi(1) = 0.8413447460685429


def _gelu_tanh(x):
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _pointwise(name, reference, functional, kinks=(), **kwargs):
    return LayerEntry(
        name=name,
        reference=reference,
        cases=_POINTWISE,
        functional=functional,
        layout=ANY,
        kinks=kinks,
        **kwargs,
    )


ENTRIES = (
    _pointwise(
        "relu",
        ref_relu,
        lambda x, m: NF.relu(x),
        kinks=(0.0,),
        points=((-2.0, 0.0), (0.0, 0.0), (2.5, 2.5)),
        numerics=Numerics(lambda x, p, hp: max(x, 0), kink_grads=(0.0,), torch_twin=lambda x, m: F.relu(x)),
    ),
    _pointwise(
        "relu2",
        ref_relu2,
        lambda x, m: NF.relu2(x),
        kinks=(0.0,),
        points=((3.0, 9.0), (-3.0, 0.0), (0.5, 0.25)),
        # C^1: the derivative is 0 on both sides of 0 (only the second derivative jumps)
        numerics=Numerics(mp_relu2, kink_grads=(0.0,)),
    ),
    _pointwise(
        "gelu",
        ref_gelu,
        lambda x, m: NF.gelu(x, m.approximate),
        points=((0.0, 0.0), (1.0, PHI_1), (-1.0, -(1 - PHI_1)), (2.0, 2 * 0.5 * (1 + math.erf(2 / math.sqrt(2))))),
        numerics=Numerics(mp_gelu),
    ),
    _pointwise(
        "gelu_tanh",
        ref_gelu,
        lambda x, m: NF.gelu(x, m.approximate),
        points=((0.0, 0.0), (1.0, _gelu_tanh(1.0)), (-1.0, _gelu_tanh(-1.0))),
        numerics=Numerics(mp_gelu),
    ),
    _pointwise(
        "silu",
        ref_silu,
        lambda x, m: NF.silu(x),
        points=((0.0, 0.0), (1.0, 1 / (1 + 1 / E)), (-1.0, -1 / (1 + E))),
        numerics=Numerics(lambda x, p, hp: x * mp_sigmoid(x)),
    ),
    _pointwise(
        "mish",
        ref_mish,
        lambda x, m: NF.mish(x),
        points=((0.0, 0.0), (1.0, math.tanh(math.log(1 + E))), (-1.0, -math.tanh(math.log(1 + 1 / E)))),
        numerics=Numerics(lambda x, p, hp: x * mp.tanh(mp.log1p(mp.exp(x)))),
    ),
    LayerEntry(
        name="golu",
        reference=ref_golu,
        cases=(
            *_POINTWISE,
            Case(init={"alpha": 1.5, "beta": 0.7, "gamma": 2.0}, shape=(4, 16), scale=3.0, desc="general"),
            Case(shape=(64,), desc="very_negative", input_fn=lambda shape, g: torch.linspace(-200.0, 5.0, 64)),
        ),
        functional=lambda x, m: NF.golu(x, m.alpha, m.beta, m.gamma),
        layout=ANY,
        points=((0.0, 0.0), (1.0, math.exp(-1 / E)), (-1.0, -math.exp(-E))),
        bad_init=({"alpha": 0.0}, {"gamma": -1.0}),
        numerics=Numerics(mp_golu),
    ),
    LayerEntry(
        name="swish",
        reference=ref_swish,
        cases=(
            Case(shape=(4, 16), scale=3.0),
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
            Case(init={"beta_init": 0.0, "learnable": False}, shape=(5, 7), desc="beta0_fixed"),
        ),
        functional=lambda x, m: NF.swish(x, m.beta, m.channel_axis),
        layout=ANY,
        points=((0.0, 0.0), (1.0, 1 / (1 + 1 / E)), (2.0, 2 / (1 + E**-2))),
        numerics=Numerics(mp_swish, settings=(Setting({"beta": 0.0}), Setting({"beta": -1.5}))),
    ),
    LayerEntry(
        name="swiglu",
        reference=ref_swiglu,
        cases=(
            Case(shape=(4, 16)),
            Case(init={"dim": 1}, shape=(2, 6, 3), desc="split_dim1", layout=Layout(min_rank=2, even_axis=1)),
        ),
        functional=lambda x, m: NF.swiglu(x, m.dim),
        layout=SPLIT_LAST,
        points=(((1.0, 2.0), 2 / (1 + 1 / E)), ((0.0, 5.0), 0.0), ((-1.0, -3.0), 3 / (1 + E))),
        numerics=Numerics(lambda x, p, hp: x[0] * mp_sigmoid(x[0]) * x[1]),
    ),
    LayerEntry(
        name="geglu",
        reference=ref_geglu,
        cases=(
            Case(shape=(4, 16)),
            Case(init={"dim": 1}, shape=(2, 6, 3), desc="split_dim1", layout=Layout(min_rank=2, even_axis=1)),
        ),
        functional=lambda x, m: NF.geglu(x, m.dim),
        layout=SPLIT_LAST,
        points=(((1.0, 2.0), 2 * PHI_1), ((0.0, 1.0), 0.0), ((-1.0, 1.0), -(1 - PHI_1))),
        numerics=Numerics(lambda x, p, hp: mp_gelu(x[0], p, {"approximate": "none"}) * x[1]),
    ),
)
