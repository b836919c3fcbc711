"""Harness entries of the last-dimension RMS variants: simple_rmsnorm, partial_rmsnorm, crmsnorm, fixnorm.

References are the papers' formulas in float64, written here without calling normact; only the
``functional=`` callables use normact.functional.
"""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import affine

LAST_DIM = Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1)


def _shape(normalized_shape) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _dims(normalized_shape) -> tuple[int, ...]:
    return tuple(range(-len(_shape(normalized_shape)), 0))


# ----------------------------------------------------------------------------- references


def ref_simple_rmsnorm(x, p, hp):
    """TransNormerLLM's SRMSNorm as in the authors' torch code: x / sqrt(mean(x^2) + eps), no gain."""
    dims = _dims(hp["normalized_shape"])
    return x / torch.sqrt((x * x).mean(dims, keepdim=True) + hp["eps"])


def ref_partial_rmsnorm(x, p, hp):
    """pRMSNorm: RMS of the first k = ceil(p d) normalized elements, eps outside the root, then g (and b)."""
    shape = _shape(hp["normalized_shape"])
    n, d = len(shape), math.prod(shape)
    k = max(1, math.ceil(round(hp["p"] * d, 9)))
    rows = x.reshape(*x.shape[: x.dim() - n], d)
    rms = torch.sqrt((rows[..., :k] ** 2).sum(-1) / k)
    rms = rms.reshape(*rms.shape, *([1] * n))
    return affine(x / (rms + hp["eps"]), p)


def ref_crmsnorm(x, p, hp):
    """CRMSNorm from its definition: rebuild the zero-mean (d+1)-vector z = (x, -sum x), RMS-normalize it
    (eps inside the root) and keep the first d coordinates."""
    shape = _shape(hp["normalized_shape"])
    n, d = len(shape), math.prod(shape)
    rows = x.reshape(*x.shape[: x.dim() - n], d)
    z = torch.cat([rows, -rows.sum(-1, keepdim=True)], dim=-1)
    zn = z / torch.sqrt((z * z).mean(-1, keepdim=True) + hp["eps"])
    return affine(zn[..., :d].reshape(x.shape), p)


def ref_fixnorm(x, p, hp):
    """g * x / max(||x||_2, eps) with the fixed length g."""
    dims = _dims(hp["normalized_shape"])
    norm = torch.sqrt((x * x).sum(dims, keepdim=True))
    return hp["length"] * x / torch.clamp(norm, min=hp["eps"])


# ----------------------------------------------------------------------------- entries

ENTRIES = (
    LayerEntry(
        name="simple_rmsnorm",
        reference=ref_simple_rmsnorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(init={"normalized_shape": (3, 8), "eps": 1e-3}, shape=(2, 5, 3, 8), desc="2d_shape", offset=-1.0),
        ),
        functional=lambda x, m: NF.simple_rms_norm(x, m.normalized_shape, m.eps),
        layout=LAST_DIM,
    ),
    LayerEntry(
        name="partial_rmsnorm",
        reference=ref_partial_rmsnorm,
        cases=(
            # k = 4 of 16 (the first case also seeds the hypothesis shape tests).
            Case(init={"normalized_shape": 16, "p": 0.25}, shape=(4, 16), offset=0.5),
            Case(init={"normalized_shape": 64}, shape=(2, 3, 64), desc="paper_p"),  # p = 6.25%: k = 4 of 64
            Case(init={"normalized_shape": 16, "p": 1.0, "bias": True, "eps": 1e-5}, shape=(3, 16), desc="full_bias"),
            Case(
                init={"normalized_shape": (2, 8), "p": 0.3, "elementwise_affine": False},
                shape=(3, 2, 8),
                desc="2d_no_affine",  # k = ceil(4.8) = 5 of 16, across the first row
                offset=-0.5,
            ),
        ),
        functional=lambda x, m: NF.partial_rms_norm(x, m.normalized_shape, m.p, m.weight, m.bias, m.eps),
        layout=LAST_DIM,
        bad_init=({"p": 0.0}, {"p": -0.25}, {"p": 1.5}, {"p": float("nan")}),
    ),
    LayerEntry(
        name="crmsnorm",
        reference=ref_crmsnorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(init={"normalized_shape": (3, 8), "bias": False}, shape=(2, 5, 3, 8), desc="2d_no_bias", offset=-1.0),
            Case(
                init={"normalized_shape": 16, "elementwise_affine": False, "eps": 1e-3},
                shape=(2, 3, 16),
                desc="no_affine",
            ),
        ),
        functional=lambda x, m: NF.crms_norm(x, m.normalized_shape, m.weight, m.bias, m.eps),
        layout=LAST_DIM,
    ),
    LayerEntry(
        name="fixnorm",
        reference=ref_fixnorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(
                init={"normalized_shape": (2, 8), "length": 4.0, "eps": 1e-5},
                shape=(3, 2, 8),
                desc="length_4",
                offset=-1.0,
            ),
        ),
        functional=lambda x, m: NF.fix_norm(x, m.normalized_shape, m.length, m.eps),
        layout=LAST_DIM,
        bad_init=({"length": 0.0}, {"length": -1.0}, {"length": float("inf")}),
    ),
)
