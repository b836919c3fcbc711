"""Harness entries of DiMR's time-dependent norms TD-LN and TD-RMSNorm (Liu, Zeng, He et al., 2024,
arXiv:2406.09416). The time ``t`` is a conditioning input (``Case.cond_fn``): one time per sample, shape (N,),
unless a case says otherwise; it is differentiated by gradcheck like the input."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import last_dims

LAST_DIM = Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1)


def t_per_sample(shape, g):
    """t ~ 2 N(0, 1) of shape (N,) (a scalar for a 1-D input, which has no batch dim)."""
    return {"t": 2.0 * torch.randn(tuple(shape[:1]) if len(shape) > 1 else (), generator=g, dtype=torch.float64)}


def t_per_token(shape, g):
    """One time per (sample, token): shape (N, L) for an (N, L, C) input."""
    return {"t": 2.0 * torch.randn(tuple(shape[:2]), generator=g, dtype=torch.float64)}


def t_shared(shape, g):
    """One time for the whole batch, shape (1,)."""
    return {"t": 2.0 * torch.randn((1,), generator=g, dtype=torch.float64)}


def _interpolated(p, prefix, t, rank):
    """P(t) = s P0 + (1 - s) P1, s = 1 / (1 + exp(-(w t + b))), t aligned with the input's first dims."""
    tv = t.reshape(tuple(t.shape) + (1,) * (rank - t.dim()))
    s = 1.0 / (1.0 + torch.exp(-(p[f"{prefix}_slope"] * tv + p[f"{prefix}_offset"])))
    return s * p[f"{prefix}0"] + (1.0 - s) * p[f"{prefix}1"]


def _time_affine(y, p, t):
    out = y * _interpolated(p, "weight", t, y.dim())
    if p.get("bias0") is not None:
        out = out + _interpolated(p, "bias", t, y.dim())
    return out


def ref_td_layernorm(x, p, hp, *, t):
    """(x - mean) / sqrt(biased var + eps) * gamma(t) + beta(t)."""
    dims = last_dims(hp["normalized_shape"])
    mu = x.mean(dims, keepdim=True)
    var = ((x - mu) ** 2).mean(dims, keepdim=True)
    return _time_affine((x - mu) / torch.sqrt(var + hp["eps"]), p, t)


def ref_td_rmsnorm(x, p, hp, *, t):
    """x / (||x||_2 / sqrt(d) + eps) * gamma(t) (+ beta(t)), eps outside the root."""
    dims = last_dims(hp["normalized_shape"])
    d = math.prod(x.shape[i] for i in dims)
    rms = torch.sqrt((x * x).sum(dims, keepdim=True)) / math.sqrt(d)
    return _time_affine(x / (rms + hp["eps"]), p, t)


def _params(m):
    return (m.weight0, m.weight1, m.weight_slope, m.weight_offset, m.bias0, m.bias1, m.bias_slope, m.bias_offset)


ENTRIES = [
    LayerEntry(
        name="td_layernorm",
        reference=ref_td_layernorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5, cond_fn=t_per_sample),
            Case(init={"normalized_shape": 16}, shape=(3, 5, 16), desc="tokens", cond_fn=t_per_sample),
            Case(init={"normalized_shape": 16}, shape=(2, 5, 16), desc="per_token_t", cond_fn=t_per_token),
            Case(
                init={"normalized_shape": 16, "bias": False, "eps": 1e-3},
                shape=(3, 16),
                desc="no_bias",
                offset=-1.0,
                cond_fn=t_shared,
            ),
            Case(init={"normalized_shape": (3, 8)}, shape=(2, 4, 3, 8), desc="2d_shape", cond_fn=t_per_sample),
        ),
        functional=lambda x, m, t: NF.td_layer_norm(x, t, m.normalized_shape, *_params(m), eps=m.eps),
        layout=LAST_DIM,
    ),
    LayerEntry(
        name="td_rmsnorm",
        reference=ref_td_rmsnorm,
        cases=(
            Case(init={"normalized_shape": 16}, shape=(4, 16), offset=0.5, cond_fn=t_per_sample),
            Case(
                init={"normalized_shape": 16, "bias": True, "eps": 1e-5},
                shape=(2, 3, 16),
                desc="bias",
                cond_fn=t_per_sample,
            ),
            Case(init={"normalized_shape": (2, 8)}, shape=(2, 3, 2, 8), desc="per_token_t", cond_fn=t_per_token),
        ),
        functional=lambda x, m, t: NF.td_rms_norm(x, t, m.normalized_shape, *_params(m), eps=m.eps),
        layout=LAST_DIM,
    ),
]
