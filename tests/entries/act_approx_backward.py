"""Harness entries of the activations with an exact forward and a deliberately approximate backward: ReGELU2 and
ReSiLU2 (Yang, Shi et al., 2024, arXiv:2406.16282) and HeLU (Kimhi et al., 2024, arXiv:2411.10573).

Each entry has a ``reference_grad``: the paper's backward in float64 (``grad_out`` times the step derivative), which
replaces gradcheck. The references themselves are written in straight-through form, ``f(x).detach() + (s(x) -
s(x).detach())``: the value is the exact forward (``s - s.detach()`` is exactly 0) and autograd through it gives
the paper's derivative ``s'(x)``, so the harness's derivative checks on each side of the listed points compare the
layer's backward with the paper's on both sides of every threshold. For ReGELU2/ReSiLU2 (a smooth forward) the
listed points are the thresholds c_k of the backward's steps; for HeLU they are ReLU's kink and the hysteresis
threshold -alpha. The constants are those of the official code (yyyyychen/LowMemoryBP, lomem/csrc/regelu2_cuda.cu
and resilu2_cuda.cu; idankdev/helu, helu.py), written here again, independently of normact.
"""

from __future__ import annotations

import math

import mpmath as mp
import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics

ANY = Layout(min_rank=0)

# official kernels: ReGELU2_a/_c, ReSiLU2_a/_c
REGELU2 = (
    (-0.04922261145617846, 1.0979632065417297, -0.048740595085551286),
    (-3.1858810036855245, -0.001178821281161997, 3.190832613414926),
)
RESILU2 = (
    (-0.04060357190528599, 1.080925428529668, -0.040321856624382146),
    (-6.3050461001646445, -0.0008684942046214787, 6.325815242089708),
)


def _relu(z):
    return torch.where(z > 0, z, torch.zeros_like(z))


def _surrogate(x, constants):
    """h(x) = sum_k a_k ReLU(x - c_k): the function whose derivative the backward uses."""
    a, c = constants
    return sum(ak * _relu(x - ck) for ak, ck in zip(a, c, strict=True))


def _step(x, constants):
    """h'(x) = sum_k a_k [x > c_k], the step derivative (levels 0, a1, a1 + a2, a1 + a2 + a3)."""
    a, c = constants
    return sum(ak * (x > ck).to(x.dtype) for ak, ck in zip(a, c, strict=True))


def _straight_through(value, s):
    return value.detach() + (s - s.detach())


def _phi(z):
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def ref_regelu2(x, p, hp):
    return _straight_through(x * _phi(x), _surrogate(x, REGELU2))


def ref_resilu2(x, p, hp):
    return _straight_through(x / (1.0 + torch.exp(-x)), _surrogate(x, RESILU2))


def ref_helu(x, p, hp):
    alpha = hp["alpha"]
    s = torch.where(x > -alpha, x, torch.full_like(x, -alpha))  # slope 1 exactly where x > -alpha
    return _straight_through(_relu(x), s)


# mpmath references of the exact forwards (tests/test_numerics.py; the backward is held to reference_grad)


def mp_regelu2(x, p, hp):
    return x * mp.erfc(-x / mp.sqrt(2)) / 2


def mp_resilu2(x, p, hp):
    return x / (1 + mp.exp(-x))


def mp_helu(x, p, hp):
    return max(x, mp.mpf(0))


def grad_regelu2(x, grad_out, p, hp):
    # levels summed in the order a1, a2, a3 from 0 (the float64 partial sums 0, a1, a1 + a2, a1 + a2 + a3)
    return {"input": grad_out * _step(x, REGELU2)}


def grad_resilu2(x, grad_out, p, hp):
    return {"input": grad_out * _step(x, RESILU2)}


def grad_helu(x, grad_out, p, hp):
    return {"input": grad_out * (x > -hp["alpha"]).to(x.dtype)}


def _linspace(lo, hi):
    return lambda shape, g: torch.linspace(lo, hi, math.prod(shape), dtype=torch.float64).reshape(shape)


_CASES = (
    Case(shape=(4, 16)),
    Case(shape=(2, 3, 5, 4), desc="4d", scale=4.0, offset=-1.0),
    Case(shape=(5, 7), desc="odd_numel", scale=5.0),  # 35 codes: the last packed byte is partly padding
    Case(shape=(), desc="scalar", offset=0.7),
    Case(shape=(97,), desc="every_level", input_fn=_linspace(-9.3, 9.1)),  # all four intervals of both layers
)

PHI_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # Phi(1)
E = math.e

ENTRIES = (
    LayerEntry(
        name="regelu2",
        reference=ref_regelu2,
        cases=_CASES,
        functional=lambda x, m: NF.regelu2(x),
        layout=ANY,
        kinks=REGELU2[1],
        reference_grad=grad_regelu2,
        numerics=Numerics(mp_regelu2),
        points=((0.0, 0.0), (1.0, PHI_1), (-1.0, -(1 - PHI_1)), (2.0, 2 * 0.5 * (1 + math.erf(2 / math.sqrt(2))))),
    ),
    LayerEntry(
        name="resilu2",
        reference=ref_resilu2,
        cases=_CASES,
        functional=lambda x, m: NF.resilu2(x),
        layout=ANY,
        kinks=RESILU2[1],
        reference_grad=grad_resilu2,
        numerics=Numerics(mp_resilu2),
        points=((0.0, 0.0), (1.0, 1 / (1 + 1 / E)), (-1.0, -1 / (1 + E)), (-7.0, -7 / (1 + E**7))),
    ),
    LayerEntry(
        name="helu",
        reference=ref_helu,
        cases=(
            Case(shape=(4, 16), scale=0.3),  # many inputs inside the hysteresis band (-0.05, 0]
            Case(shape=(2, 3, 5, 4), desc="4d_alpha0.5", init={"alpha": 0.5}, scale=1.0),
            Case(shape=(6, 5), desc="alpha0_is_relu", init={"alpha": 0.0}),
            Case(shape=(), desc="scalar", offset=0.7),
        ),
        functional=lambda x, m: NF.helu(x, m.alpha),
        layout=ANY,
        kinks=(-0.05, 0.0),
        reference_grad=grad_helu,
        numerics=Numerics(mp_helu),
        points=((-1.0, 0.0), (-0.03, 0.0), (0.0, 0.0), (2.5, 2.5)),
        bad_init=({"alpha": -0.1}, {"alpha": float("nan")}, {"alpha": "0.1"}),
    ),
)
