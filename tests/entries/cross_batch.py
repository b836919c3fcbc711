"""Harness entry of Cross mini-Batch Normalization, CmBN (YOLOv4, Bochkovskiy, Wang & Liao, 2020,
arXiv:2004.10934, Section 3.3 and Figure 4).

The reference pools the raw sums of x and x^2 of the earlier mini-batches of the optimizer batch (as held by
the layer's accumulators) with the current one, literally the paper's E[x], E[x^2] statistics, in float64.

The harness re-runs the forward several times on one module (gradcheck, compile parity), and CmBN's
forward depends on how many mini-batches came before it: with accum_steps > 1 successive calls are
different functions. The training cases therefore use accum_steps=1 (every call is the first mini-batch:
BatchNorm), and accum_steps > 1 appears in eval cases (where the accumulation is not used); the
accumulating path is checked against this reference in tests/test_cross_batch.py.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import affine, channel_view, module_factor, reduce_dims, running_update


def ref_cmbn(x, p, hp):
    """Training at mini-batch t = accum_step + 1: mu = (S1_prev + sum x) / (n_prev + n),
    var = (S2_prev + sum x^2) / (n_prev + n) - mu^2, where S1_prev = n_prev * accum_mean and
    S2_prev = n_prev * (accum_var + accum_mean^2) are the sums over mini-batches 1..t-1 (none when t = 1);
    y = (x - mu) / sqrt(var + eps) * w + b; running statistics lerped with momentum towards mu and the
    unbiased var. Eval: BatchNorm with the running statistics."""
    view, dims, eps = channel_view(x), reduce_dims(x), hp["eps"]
    if not hp["training"]:
        return affine((x - p["running_mean"].reshape(view)) / torch.sqrt(p["running_var"].reshape(view) + eps), p, view)
    step = int(p["accum_step"])
    n_prev = float(p["accum_count"]) if step > 0 else 0.0
    s1 = n_prev * p["accum_mean"] if step > 0 else torch.zeros(x.shape[1], dtype=x.dtype)
    s2 = n_prev * (p["accum_var"] + p["accum_mean"] ** 2) if step > 0 else torch.zeros(x.shape[1], dtype=x.dtype)
    n = n_prev + x.numel() / x.shape[1]
    mu = (s1 + x.sum(dims)) / n
    var = (s2 + (x**2).sum(dims)) / n - mu**2
    y = affine((x - mu.reshape(view)) / torch.sqrt(var.reshape(view) + eps), p, view)
    buffers = {
        **running_update(p, hp, mu, var * n / (n - 1)),
        "accum_mean": mu,
        "accum_var": var,
        "accum_count": torch.tensor(round(n)),
        "accum_step": torch.tensor((step + 1) % hp["accum_steps"]),
    }
    return y, buffers


def _functional(x, m):
    factor = module_factor(m)
    return NF.cross_minibatch_norm(
        x, m.running_mean, m.running_var, m.accum_mean, m.accum_var, m.accum_count, m.accum_step, m.weight,
        m.bias, m.training, factor, m.eps, m.accum_steps,
    )  # fmt: skip


ENTRIES = (
    LayerEntry(
        name="cmbn",
        reference=ref_cmbn,
        cases=(
            Case(init={"num_features": 6, "accum_steps": 1}, shape=(4, 6, 3, 3), offset=0.5, desc="s1"),
            Case(
                init={"num_features": 5, "accum_steps": 1, "momentum": None, "affine": False},
                shape=(6, 5),
                offset=-1.0,
                desc="s1_2d_cumulative_no_affine",
            ),
            Case(init={"num_features": 4, "accum_steps": 1, "eps": 1e-3}, shape=(3, 4, 7), offset=2.0, desc="s1_3d"),
            Case(init={"num_features": 6, "accum_steps": 3}, shape=(4, 6, 3, 3), offset=0.5, train=False, desc="eval"),
            Case(
                init={"num_features": 5, "accum_steps": 2, "affine": False},
                shape=(3, 5),
                train=False,
                desc="eval_2d_no_affine",
            ),
        ),
        functional=_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(2, 3, 4), min_batch=2),
        bad_init=({"accum_steps": 0}, {"accum_steps": 2.5}, {"momentum": 1.5}, {"momentum": -0.1}),
    ),
)

DISTRIBUTED_CASES = [
    ("cmbn", (8, 4, 3, 3), {"accum_steps": 2}, None),  # step 2 pools both mini-batches
    ("cmbn", (8, 5), {"accum_steps": 3, "momentum": None, "affine": False}, None),
    ("cmbn", (8, 4, 5), {"accum_steps": 1}, None),
]
