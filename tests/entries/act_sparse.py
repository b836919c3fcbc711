"""Harness entries of the sparsity activations dReLU, FATReLU and top-k: closed forms in float64, written without
calling normact."""

from __future__ import annotations

import mpmath as mp
import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics

ANY = Layout(min_rank=0)
SPLIT_LAST = Layout(min_rank=1, even_axis=-1)


def _relu(z):
    return torch.where(z > 0, z, torch.zeros_like(z))


def ref_drelu(x, p, hp):
    """TurboSparse Eq. 2: ReLU on both the gate and the up projection, multiplied."""
    n = x.shape[hp["dim"]] // 2
    a, b = x.narrow(hp["dim"], 0, n), x.narrow(hp["dim"], n, n)
    return _relu(a) * _relu(b)


def ref_fatrelu(x, p, hp):
    """ProSparse: x where x >= T, else 0."""
    return torch.where(x >= hp["threshold"], x, torch.zeros_like(x))


def ref_topk(x, p, hp):
    """Keep entry i of each last-dim vector when fewer than k entries outrank it, where j outranks i if
    x_j > x_i, or x_j == x_i and j < i (ties by position); the kept entries are max(0, x_i) (x_i without relu).
    Written pairwise (O(d^2)), independently of any sort."""
    d = x.shape[-1]
    xi, xj = x[..., :, None], x[..., None, :]
    before = torch.ones(d, d, dtype=torch.bool).tril(-1)  # [i, j]: j < i
    outranked_by = (xj > xi) | ((xj == xi) & before)
    keep = outranked_by.sum(-1) < hp["k"]
    value = _relu(x) if hp["relu"] else x
    return torch.where(keep, value, torch.zeros_like(x))


def mp_drelu(x, p, hp):
    a, b = x
    return max(a, 0) * max(b, 0)


def mp_fatrelu(x, p, hp):
    return x if x >= hp["threshold"] else mp.mpf(0)


_POINTWISE = (
    Case(shape=(4, 16)),
    Case(shape=(2, 3, 5, 4), desc="4d", scale=4.0, offset=-1.0),
    Case(shape=(), desc="scalar", offset=0.7),
)

# tie-free inputs for top-k (a random permutation of distinct values per row, scaled): the harness's
# gradcheck perturbs every entry at once, which must not reorder the k-th and (k+1)-th entries.


def _distinct(shape, g):
    d = shape[-1]
    ranks = torch.argsort(torch.rand(tuple(shape), generator=g, dtype=torch.float64), dim=-1)
    return (ranks.to(torch.float64) - (d - 1) / 2) * 0.37 + 0.01 * torch.rand(tuple(shape), generator=g)


ENTRIES = (
    LayerEntry(
        name="drelu",
        reference=ref_drelu,
        cases=(
            Case(shape=(4, 16)),
            Case(shape=(2, 3, 8), desc="3d", scale=3.0, offset=0.5),
            Case(init={"dim": 1}, shape=(2, 6, 3), desc="split_dim1", layout=Layout(min_rank=2, even_axis=1)),
        ),
        functional=lambda x, m: NF.drelu(x, m.dim),
        layout=SPLIT_LAST,
        # max(0, a) * max(0, b): zero as soon as either half is <= 0
        points=(((2.0, 3.0), 6.0), ((-2.0, 3.0), 0.0), ((1.5, -4.0), 0.0), ((-1.0, -1.0), 0.0), ((0.5, 0.25), 0.125)),
        # the harness checks the kink of the first half (a = 0, b = 1); tests/test_act_sparse.py the second half's
        kinks=(0.0,),
        bad_init=({"dim": 1.5},),
        numerics=Numerics(mp_drelu, kink_grads=(0.0,), gate=0),
    ),
    LayerEntry(
        name="fatrelu",
        reference=ref_fatrelu,
        cases=(
            *_POINTWISE,
            Case(init={"threshold": 0.5}, shape=(5, 7), desc="threshold_0.5", offset=0.5),
            Case(init={"threshold": 0.0}, shape=(5, 7), desc="threshold_0_is_relu"),
        ),
        functional=lambda x, m: NF.fatrelu(x, m.threshold),
        layout=ANY,
        # f(T) = T and f(T - 1e-6) = 0 with T = 0.01 (the catalog's unit check), plus one value on each side
        points=((0.01, 0.01), (0.01 - 1e-6, 0.0), (2.5, 2.5), (-1.0, 0.0), (0.0, 0.0)),
        # the jump at each case's threshold (0.01 by default, 0.5, and 0 for the ReLU case)
        kinks=(0.0, 0.01, 0.5),
        bad_init=({"threshold": -0.1}, {"threshold": float("nan")}, {"threshold": "0.01"}),
        numerics=Numerics(mp_fatrelu, kink_grads=(0.0, 1.0, 1.0)),
    ),
    LayerEntry(
        name="topk",
        reference=ref_topk,
        cases=(
            Case(init={"k": 4}, shape=(4, 16), input_fn=_distinct),
            Case(init={"k": 1}, shape=(2, 3, 8), desc="k1_3d", input_fn=_distinct),
            Case(init={"k": 3}, shape=(6,), desc="1d", input_fn=_distinct),
            Case(init={"k": 5}, shape=(3, 4), desc="k_ge_d_is_relu"),
            Case(init={"k": 4, "relu": False}, shape=(4, 16), desc="no_relu", input_fn=_distinct),
            Case(init={"k": 3}, shape=(4, 16), desc="default_input"),
        ),
        functional=lambda x, m: NF.topk_activation(x, m.k, m.relu),
        layout=Layout(min_rank=1),
        # Not elementwise: check_points evaluates the layer on the single vector of the points' x values,
        # (3, -1, 1.5, 0.5, -4), with k = 2: the two largest, 3 and 1.5, are kept; 0.5 is positive but zeroed by
        # the top-k; -1 and -4 are zeroed. The values are distinct, so no tie decides the result.
        points=((3.0, 3.0), (-1.0, 0.0), (1.5, 1.5), (0.5, 0.0), (-4.0, 0.0)),
        points_init={"k": 2},
        # ReLU's kink at 0. The top-k boundary (the k-th and (k+1)-th values equal) is a discontinuity of the
        # output, not a fixed input value; the cases' inputs keep it away (distinct values), and the harness's
        # kink check evaluates the 2-vector (-1e-3, 1e-3) with k = 2, i.e. ReLU on each side of 0.
        kinks=(0.0,),
        bad_init=({"k": 0}, {"k": 2.5}, {"k": True}, {"k": 2, "relu": 1}),
    ),
)
