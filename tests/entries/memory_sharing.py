"""Harness entries of the memory-sharing norms MS-LN and MS-RMSNorm (Yang, Shi et al., 2024, arXiv:2406.16282).

Their forward is LayerNorm/RMSNorm and their backward is the exact gradient (computed from the saved output),
so the references are the plain formulas and the gradients go through gradcheck (no ``reference_grad``).
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import affine, last_dims

LAST_DIM = Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1)


def ref_ms_layernorm(x, p, hp):
    """(x - mean) / sqrt(biased var + eps), times weight plus bias when the affine is on."""
    dims = last_dims(hp["normalized_shape"])
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    return affine((x - mu) / torch.sqrt(var + hp["eps"]), p)


def ref_ms_rmsnorm(x, p, hp):
    """x / sqrt(mean(x^2) + eps) (times weight), eps inside the root (machine epsilon when None)."""
    dims = last_dims(hp["normalized_shape"])
    eps = hp["eps"] if hp["eps"] is not None else torch.finfo(torch.float64).eps
    return affine(x / torch.sqrt((x * x).mean(dims, keepdim=True) + eps), p)


ENTRIES = [
    LayerEntry(
        name="ms_layernorm",
        reference=ref_ms_layernorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(init={"normalized_shape": 16, "elementwise_affine": True}, shape=(2, 3, 16), desc="affine"),
            Case(
                init={"normalized_shape": 16, "elementwise_affine": True, "bias": False, "eps": 1e-3},
                shape=(3, 16),
                desc="affine_no_bias",
                offset=-1.0,
            ),
            Case(init={"normalized_shape": (3, 8)}, shape=(2, 5, 3, 8), desc="2d_shape", offset=-1.0),
        ),
        functional=lambda x, m: NF.ms_layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps),
        layout=LAST_DIM,
    ),
    LayerEntry(
        name="ms_rmsnorm",
        reference=ref_ms_rmsnorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5),
            Case(
                init={"normalized_shape": 16, "elementwise_affine": True, "eps": 1e-6},
                shape=(2, 3, 16),
                desc="affine",
            ),
            Case(init={"normalized_shape": (2, 8), "eps": None}, shape=(3, 2, 8), desc="eps_none_2d"),
        ),
        functional=lambda x, m: NF.ms_rms_norm(x, m.normalized_shape, m.weight, m.eps),
        layout=LAST_DIM,
    ),
]
