"""Harness entries of the learnable polynomial-type activations: PolyReLU and PolyNorm (Zhuo et al., 2024,
arXiv:2411.03884; official BryceZhuo/PolyCom), the Hermite, Fourier and tropical activations (Khalfaoui-Hassani
& Kesselheim, 2025, arXiv:2502.01247; official K-H-Ismail/torchortho) and the Chebyshev layer of SL²A-INR
(Heidari et al., 2024, arXiv:2409.10836; official moeinheidari7829/SL2A-INR). References are the formulas in
float64, term by term, with numpy.polynomial for the Hermite and Chebyshev series; written without normact."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import torch
from numpy.polynomial import chebyshev, hermite_e

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics

ANY = Layout(min_rank=0)
LAST_DIM = Layout(min_rank=1)
FEATURES_LAST = Layout(feature_arg="in_features", feature_axis=-1, min_rank=1)

SQRT_E = math.sqrt(math.e)


def _torch(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# -- PolyCom ----------------------------------------------------------------------------------------


def ref_polyrelu(x, p, hp):
    """sum_j weight[j] relu(x)^(r - j) + bias (official order: weight[0] multiplies the highest power)."""
    w, b, r = p["weight"], p["bias"], hp["order"]
    relu = torch.where(x > 0, x, torch.zeros_like(x))
    return sum(w[j] * relu ** (r - j) for j in range(r)) + b[0]


def _rms(z, eps):
    return z / torch.sqrt((z * z).mean(-1, keepdim=True) + eps)


def ref_polynorm(x, p, hp):
    """sum_j weight[j] N(x^(r - j)) + bias, N = z / sqrt(mean(z^2, last dim) + eps)."""
    w, b, r = p["weight"], p["bias"], hp["order"]
    return sum(w[j] * _rms(x ** (r - j), hp["eps"]) for j in range(r)) + b[0]


# PolyNorm's points are evaluated together as one vector x = (1, -1, 2) (the layer normalizes over the last
# dim): mean(x^2) = 2, mean(x^4) = 6, mean(x^6) = 22, so f(x_j) = (x_j^3/sqrt(22+eps) + x_j^2/sqrt(6+eps) +
# x_j/sqrt(2+eps)) / 3 at the initial weights 1/3 and bias 0.
_EPS = 1e-6
_N3, _N2, _N1 = math.sqrt(22 + _EPS), math.sqrt(6 + _EPS), math.sqrt(2 + _EPS)


# -- torchortho --------------------------------------------------------------------------------------


def _factorials(n):
    return np.array([math.factorial(k) for k in range(n + 1)], dtype=np.float64)


def ref_hermite(x, p, hp):
    """sum_k a_k He_k(x) / k! (version 0.1.2) or / sqrt(k!) (0.1.1), by numpy's HermiteE series."""
    a = p["coefficients"].numpy()
    scale = _factorials(a.size - 1)
    if hp["version"] == "0.1.1":
        scale = np.sqrt(scale)
    return _torch(hermite_e.hermeval(x.numpy(), a / scale))


def ref_fourier(x, p, hp):
    """a_0 + sum_k a_k cos(w_k x - phi_k) / k! (0.1.2; without 1/k! for 0.1.1)."""
    a0, a, w, phi = (p[k].numpy() for k in ("fundamental", "coefficients", "frequencies", "phases"))
    if hp["version"] == "0.1.2":
        a = a / _factorials(a.size)[1:]
    xs = x.numpy()[..., None]
    return _torch(a0[0] + (a * np.cos(w * xs - phi)).sum(-1))


def ref_tropical(x, p, hp):
    """g max_k (k x + c_k), g = sqrt(2)/n (0.1.2) or 1 (0.1.1)."""
    c = p["coefficients"]
    n = c.numel() - 1
    gain = math.sqrt(2) / n if hp["version"] == "0.1.2" else 1.0
    lines = torch.stack([k * x + c[k] for k in range(n + 1)], dim=-1)
    return gain * lines.amax(-1)


# Initial values (torchortho 0.1.2): Hermite n = 3, a_0 = sqrt(1 - 1/3!)/sqrt(e), a_k = 1/sqrt(e), basis He_k/k!:
# f(x) = (sqrt(5/6) + x + (x^2 - 1)/2 + (x^3 - 3x)/6) / sqrt(e).
HERMITE_A0 = math.sqrt(5 / 6)
# Fourier n = 5: c = 0.66232645879 (= 1/sqrt(2.279585)), the official constant for 1/sqrt(I_0(2)) (I_0(2) =
# 2.2795853 truncated), a_0 = c sqrt(1 - 1/(5!)^2), w_k = k, phi_k = pi/4.
FOURIER_C = 0.66232645879
FOURIER_A0 = FOURIER_C * math.sqrt(1 - 1 / 120**2)
R2 = math.sqrt(2) / 2
# Tropical n = 5, c_k = 1: f(x) = (sqrt(2)/5) (1 + 5 max(x, 0)).
TROPICAL_G = math.sqrt(2) / 5


# -- SL²A-INR ------------------------------------------------------------------------------------------


def ref_sl2a(x, p, hp):
    """y_o = sum_i chebval(tanh(x_i), c[i, o, :]) (numpy's Chebyshev series, Clenshaw's algorithm)."""
    c = p["coefficients"].numpy()
    t = np.tanh(x.numpy())
    out = np.zeros((*t.shape[:-1], c.shape[1]))
    for i in range(c.shape[0]):
        for o in range(c.shape[1]):
            out[..., o] += chebyshev.chebval(t[..., i], c[i, o])
    return _torch(out)


# -- mpmath references (tests/test_numerics.py): the same formulas at 40 digits ------------------------


def mp_polyrelu(x, p, hp):
    w, r = p["weight"], hp["order"]
    relu = max(x, mp.mpf(0))
    return sum(w[j] * relu ** (r - j) for j in range(r)) + p["bias"][0]


def mp_hermite(x, p, hp):
    """sum_k a_k He_k(x) / c_k, He_{k+1} = x He_k - k He_{k-1}, c_k = k! (0.1.2) or sqrt(k!) (0.1.1)."""
    a = p["coefficients"]
    he = [mp.mpf(1), x]
    while len(he) < len(a):
        k = len(he) - 1
        he.append(x * he[k] - k * he[k - 1])
    scale = [mp.factorial(k) if hp["version"] == "0.1.2" else mp.sqrt(mp.factorial(k)) for k in range(len(a))]
    return sum(a[k] * he[k] / scale[k] for k in range(len(a)))


def mp_fourier(x, p, hp):
    """a_0 + sum_k a_k cos(w_k x - phi_k) / k! (0.1.2; without 1/k! for 0.1.1)."""
    a, w, phi = p["coefficients"], p["frequencies"], p["phases"]
    scale = [mp.factorial(k + 1) if hp["version"] == "0.1.2" else 1 for k in range(len(a))]
    return p["fundamental"][0] + sum(a[k] / scale[k] * mp.cos(w[k] * x - phi[k]) for k in range(len(a)))


def mp_tropical(x, p, hp):
    c = p["coefficients"]
    n = len(c) - 1
    gain = mp.sqrt(2) / n if hp["version"] == "0.1.2" else 1
    return gain * max(k * x + c[k] for k in range(n + 1))


def _saturating(shape, g):
    """Inputs deep in tanh's saturation (|x| up to 40), where tanh rounds to +-1."""
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 15.0


_POINTWISE = (
    Case(shape=(4, 16)),
    Case(shape=(2, 3, 5, 4), desc="4d", scale=4.0, offset=-1.0),
    Case(shape=(), desc="scalar", offset=0.7),
)

ENTRIES = (
    LayerEntry(
        name="polyrelu",
        reference=ref_polyrelu,
        cases=(
            *_POINTWISE,
            Case(init={"order": 1}, shape=(3, 7), desc="order1"),
            Case(init={"order": 5}, shape=(3, 7), desc="order5"),
        ),
        functional=lambda x, m: NF.polyrelu(x, m.weight, m.bias),
        layout=ANY,
        kinks=(0.0,),
        points=(
            (2.0, (2**3 + 2**2 + 2) / 3),
            (1.0, 1.0),
            (0.5, (0.5**3 + 0.5**2 + 0.5) / 3),
            (-1.5, 0.0),
        ),
        bad_init=({"order": 0}, {"order": 2.5}),
        # ReLU's derivative at 0 is torch.relu's, 0 (the left piece)
        numerics=Numerics(mp_polyrelu, kink_grads=(0.0,)),
    ),
    LayerEntry(
        name="polynorm",
        reference=ref_polynorm,
        cases=(
            Case(shape=(4, 16)),
            Case(shape=(2, 3, 5, 8), desc="4d", scale=3.0, offset=0.5),
            Case(shape=(7,), desc="vector"),
            Case(init={"order": 2, "eps": 1e-3}, shape=(3, 5), desc="order2_eps"),
            Case(init={"order": 5}, shape=(2, 6), desc="order5"),
            Case(shape=(6, 1), desc="width1"),
        ),
        functional=lambda x, m: NF.polynorm(x, m.weight, m.bias, m.eps),
        layout=LAST_DIM,
        points=(
            (1.0, (1 / _N3 + 1 / _N2 + 1 / _N1) / 3),
            (-1.0, (-1 / _N3 + 1 / _N2 - 1 / _N1) / 3),
            (2.0, (8 / _N3 + 4 / _N2 + 2 / _N1) / 3),
        ),
        bad_init=({"order": 0}, {"eps": 0.0}),
    ),
    LayerEntry(
        name="hermite_act",
        reference=ref_hermite,
        cases=(
            *_POINTWISE,
            Case(init={"version": "0.1.1"}, shape=(4, 16), desc="v011"),
            Case(init={"degree": 6, "version": "0.1.1"}, shape=(3, 7), desc="deg6_v011"),
            Case(init={"degree": 8}, shape=(3, 7), desc="deg8"),
            Case(init={"degree": 1}, shape=(5,), desc="deg1"),
        ),
        functional=lambda x, m: NF.hermite_act(x, m.coefficients, m.normalization),
        layout=ANY,
        points=(
            (0.0, (HERMITE_A0 - 1 / 2) / SQRT_E),
            (1.0, (HERMITE_A0 + 1 + 0 + (1 - 3) / 6) / SQRT_E),
            (-1.0, (HERMITE_A0 - 1 + 0 + (-1 + 3) / 6) / SQRT_E),
            (2.0, (HERMITE_A0 + 2 + 3 / 2 + (8 - 6) / 6) / SQRT_E),
        ),
        bad_init=({"degree": 0}, {"version": "0.2"}),
        numerics=Numerics(mp_hermite),
    ),
    LayerEntry(
        name="fourier_act",
        reference=ref_fourier,
        cases=(
            *_POINTWISE,
            Case(init={"version": "0.1.1"}, shape=(4, 16), desc="v011"),
            Case(init={"degree": 3, "version": "0.1.1"}, shape=(3, 7), scale=3.0, desc="deg3_v011"),
            Case(init={"degree": 1}, shape=(5,), desc="deg1"),
        ),
        functional=lambda x, m: NF.fourier_act(
            x, m.fundamental, m.coefficients, m.frequencies, m.phases, m.normalization
        ),
        layout=ANY,
        points=(
            (0.0, FOURIER_A0 + FOURIER_C * R2 * (1 + 1 / 2 + 1 / 6 + 1 / 24 + 1 / 120)),
            (math.pi / 4, FOURIER_A0 + FOURIER_C * (1 + R2 / 2 + 0 / 6 - R2 / 24 - 1 / 120)),
            (math.pi / 2, FOURIER_A0 + FOURIER_C * R2 * (1 - 1 / 2 - 1 / 6 + 1 / 24 + 1 / 120)),
        ),
        bad_init=({"degree": 0}, {"version": "0.1.0"}),
        numerics=Numerics(mp_fourier),
    ),
    LayerEntry(
        name="tropical_act",
        reference=ref_tropical,
        cases=(
            *_POINTWISE,
            Case(init={"version": "0.1.1", "degree": 2}, shape=(4, 16), desc="deg2_v011"),
            Case(init={"degree": 1}, shape=(5,), desc="deg1"),
        ),
        functional=lambda x, m: NF.tropical_act(x, m.coefficients, m.gain),
        layout=ANY,
        # every line k x + 1 passes through (0, 1) at the initial coefficients
        kinks=(0.0,),
        points=((-1.0, TROPICAL_G), (0.0, TROPICAL_G), (0.5, 3.5 * TROPICAL_G), (1.0, 6 * TROPICAL_G)),
        bad_init=({"degree": 0}, {"version": "latest"}),
        # where lines tie the lowest-degree one counts (torchortho's max(-1) returns the first maximum): slope 0
        numerics=Numerics(mp_tropical, kink_grads=(0.0,)),
    ),
    LayerEntry(
        name="sl2a_chebyshev",
        reference=ref_sl2a,
        cases=(
            Case(init={"in_features": 16}, shape=(4, 16)),
            Case(init={"in_features": 3, "out_features": 5, "degree": 8}, shape=(2, 4, 3), scale=2.5, desc="3to5"),
            Case(
                init={"in_features": 4, "out_features": 2, "degree": 12, "init": "normal"},
                shape=(6, 4),
                input_fn=_saturating,
                desc="saturated_normal_init",
            ),
            Case(init={"in_features": 2, "degree": 5, "init": "kaiming_uniform"}, shape=(2,), desc="vector"),
            Case(init={"in_features": 3, "out_features": 4, "degree": 0, "init": "uniform"}, shape=(5, 3), desc="deg0"),
        ),
        functional=lambda x, m: NF.sl2a_chebyshev(x, m.coefficients),
        layout=FEATURES_LAST,
        # float32: T_k(cos t) = cos(k t) turns the rounding of the angle t = arccos(tanh x) (about 2e-7) into
        # up to k * 2e-7 = 5e-5 per term at degree 256, summed over in_features * 257 terms (observed 4.4e-4 on
        # 16 * 257 terms); the conditioning of the series itself, not of the implementation.
        tolerances={torch.float32: (2e-3, 2e-3)},
        points_init={"init": "identity"},
        points=((0.0, 0.0), (1.0, math.tanh(1.0)), (-2.0, math.tanh(-2.0))),
        bad_init=({"degree": -1}, {"init": "zeros"}, {"out_features": 0}),
    ),
)
