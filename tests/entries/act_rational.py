"""Harness entries of the rational and smoothed activations: the safe Padé Activation Unit (Molina, Schramowski
& Kersting, 2020, arXiv:1907.06732; official ml-research/pau) and the Smooth Activation Unit (Biswas et al.,
2021, arXiv:2109.13210). References are the closed forms in float64 (powers summed term by term; erf from
scipy.special), written without calling normact."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import torch
from scipy import special

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics

ANY = Layout(min_rank=0)

# The official init table (ml-research/pau, pau/cuda/python_imp/Pade.py, "pade_optimized_leakyrelu"):
# numerator a_0..a_5, denominator b_1..b_4.
LEAKY_A = (3.35583603e-02, 5.05000375e-01, 1.65343934e00, 2.01001052e00, 9.31901999e-01, 1.52424124e-01)
LEAKY_B = (3.30847488e-06, 3.98021568e00, 5.12471206e-07, 3.01830109e-01)


def _pade(x, a, b, version="A"):
    """P(x)/Q(x) with P = sum_j a_j x^j and Q = 1 + sum_k |b_k| |x|^k (A) or 1 + |sum_k b_k x^k| (B)."""
    num = sum(a_j * x**j for j, a_j in enumerate(a))
    if version == "A":
        den = 1 + sum(abs(b_k) * abs(x) ** (k + 1) for k, b_k in enumerate(b))
    else:
        den = 1 + abs(sum(b_k * x ** (k + 1) for k, b_k in enumerate(b)))
    return num / den


def ref_pau(x, p, hp):
    a, b = p["numerator"], p["denominator"]
    return _pade(x, [a[j] for j in range(a.numel())], [b[k] for k in range(b.numel())], hp["version"])


def _sau(x, alpha, n):
    """The Leaky ReLU (slope alpha) convolved with N(0, 1/n^2), in closed form, numpy float64."""
    return (1 + alpha) / 2 * x + (1 - alpha) / 2 * (
        x * special.erf(n * x / math.sqrt(2)) + math.sqrt(2 / math.pi) / n * np.exp(-((n * x) ** 2) / 2)
    )


def ref_sau(x, p, hp):
    alpha = p["alpha"]
    if alpha.dim() > 0:
        axis = hp["channel_axis"] % x.dim()
        alpha = alpha.reshape((-1,) + (1,) * (x.dim() - axis - 1))
    xs, al = x.detach().numpy(), alpha.detach().numpy()
    return torch.from_numpy(np.asarray(_sau(xs, al, hp["n"]), dtype=np.float64))


# mpmath references (tests/test_numerics.py): the same formulas at 40 digits


def mp_pau(x, p, hp):
    a, b = p["numerator"], p["denominator"]
    num = sum(a_j * x**j for j, a_j in enumerate(a))
    if hp["version"] == "A":
        den = 1 + sum(abs(b_k) * abs(x) ** (k + 1) for k, b_k in enumerate(b))
    else:
        den = 1 + abs(sum(b_k * x ** (k + 1) for k, b_k in enumerate(b)))
    return num / den


def mp_sau(x, p, hp):
    """The paper's closed form, alpha x + (1 - alpha) (x Phi(n x) + phi(n x) / n) with Phi by erfc: its
    1 + erf(n x / sqrt 2) would lose even at 40 digits the alpha = 0 tail, ~ phi(n x) / (n x)^2 below 1e-40 x."""
    alpha, n = p["alpha"], mp.mpf(hp["n"])
    smooth_relu = x * mp.erfc(-n * x / mp.sqrt(2)) / 2 + mp.exp(-((n * x) ** 2) / 2) / (n * mp.sqrt(2 * mp.pi))
    return alpha * x + (1 - alpha) * smooth_relu


def _leaky_fit(x):
    return _pade(x, LEAKY_A, LEAKY_B)


# SAU with n = 1 (sigma = 1) and alpha = 0.15: the Gaussian part E|x - Z| at x = 0 and x = +-1
ALPHA = 0.15
E_ABS_0 = math.sqrt(2 / math.pi)
E_ABS_1 = math.erf(1 / math.sqrt(2)) + math.sqrt(2 / math.pi) * math.exp(-0.5)

ENTRIES = (
    LayerEntry(
        name="pau",
        reference=ref_pau,
        cases=(
            Case(shape=(4, 16)),
            Case(shape=(2, 3, 5, 4), desc="4d", scale=2.5, offset=-0.5),
            Case(shape=(), desc="scalar", offset=0.7),
            Case(init={"version": "B"}, shape=(4, 16), desc="version_b"),
            Case(init={"init": "sigmoid"}, shape=(3, 7), scale=2.0, desc="sigmoid_init"),
            Case(init={"init": "softplus", "version": "B"}, shape=(3, 7), desc="softplus_init_b"),
        ),
        functional=lambda x, m: NF.pau(x, m.numerator, m.denominator, m.version),
        layout=ANY,
        # |b_1||x| + |b_3||x|^3 (version A), |sum_k b_k x^k| (version B) are not differentiable at 0
        kinks=(0.0,),
        points=(
            (0.0, LEAKY_A[0]),
            (1.0, sum(LEAKY_A) / (1 + sum(LEAKY_B))),
            (-1.0, sum(a * (-1) ** j for j, a in enumerate(LEAKY_A)) / (1 + sum(LEAKY_B))),
            (
                2.0,
                sum(a * 2**j for j, a in enumerate(LEAKY_A))
                / (1 + sum(b * 2 ** (k + 1) for k, b in enumerate(LEAKY_B))),
            ),
        ),
        bad_init=({"init": "relu"}, {"version": "C"}),
        # |x| differentiated as 0 at 0 (torch.abs's convention): the derivative there is P'(0) / Q(0) = a_1.
        # ulps: the fit's numerator terms cancel at its dip near x = -0.6 (sum_j |a_j x^j| / Q = 0.63 against
        # |f| + |x f'| = 6.3e-4 at x = -0.625): Horner's 0.08 eps there is 125 units of the mixed condition
        numerics=Numerics(mp_pau, kink_grads=(LEAKY_A[1],), ulps=128.0),
    ),
    LayerEntry(
        name="sau",
        reference=ref_sau,
        cases=(
            Case(shape=(4, 16)),  # the paper's n = 20000: Leaky ReLU rounded within ~1e-4 of 0
            Case(init={"n": 1.0}, shape=(2, 3, 5, 4), desc="n1_4d", scale=3.0, offset=-0.5),
            Case(init={"n": 4.0, "alpha_init": -0.3}, shape=(), desc="n4_scalar", offset=0.2),
            Case(
                init={"dim": 16, "n": 2.0},
                shape=(4, 16),
                desc="per_channel",
                layout=Layout(feature_arg="dim", feature_axis=-1, min_rank=1),
            ),
            Case(
                init={"dim": 3, "channel_axis": 1, "n": 0.5},
                shape=(2, 3, 4, 4),
                desc="per_channel_nchw",
                layout=Layout(feature_arg="dim", feature_axis=1, min_rank=2),
            ),
        ),
        functional=lambda x, m: NF.sau(x, m.alpha, m.n, m.channel_axis),
        layout=ANY,
        points_init={"n": 1.0},
        points=(
            (0.0, (1 - ALPHA) / 2 * E_ABS_0),
            (1.0, (1 + ALPHA) / 2 + (1 - ALPHA) / 2 * E_ABS_1),
            (-1.0, -(1 + ALPHA) / 2 + (1 - ALPHA) / 2 * E_ABS_1),
        ),
        bad_init=({"n": 0.0}, {"n": -1.0}, {"alpha_init": float("inf")}, {"dim": 0}),
        numerics=Numerics(mp_sau),
    ),
)
