"""Harness entry of the separable layer normalization of EquiformerV2 (Liao, Wood, Das & Smidt, ICLR 2024,
arXiv:2306.12059; official atomicarchitects/equiformer_v2, nets/equiformer_v2/layer_norm.py,
EquivariantLayerNormArraySphericalHarmonics).

The reference is written here in float64 without calling normact, coefficient by coefficient: degree L occupies
rows L^2 .. L^2 + 2L of dim -2. The inputs are built by ``input_fn`` so that dim -2 always holds (lmax+1)^2
coefficients, also for the random shapes of the property tests (which keep the first case's lmax).
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def ref_separable_layernorm(x, p, hp):
    """Degree 0: LayerNorm over the channels with weight[0], bias. Degrees L >= 1: x / sqrt(s + eps) * weight[L],
    s per sample = mean over channels of (1/lmax) sum_L (1/(2L+1)) sum_m x^2 ('component', balanced degrees),
    of (mean over all L >= 1 coefficients of x^2) without balance, or of (sum over them) for 'norm'."""
    lmax, eps = hp["lmax"], hp["eps"]
    w, b = p.get("weight"), p.get("bias")
    x0 = x[..., 0, :]
    mu = x0.mean(-1, keepdim=True)
    var = ((x0 - mu) ** 2).mean(-1, keepdim=True)
    y0 = (x0 - mu) / torch.sqrt(var + eps)
    if w is not None:
        y0 = y0 * w[0]
    if b is not None:
        y0 = y0 + b
    rows = [y0]
    if lmax > 0:
        per_degree = []  # for each L >= 1: the sum over m of x^2, shape (*, C)
        for degree in range(1, lmax + 1):
            per_degree.append(sum(x[..., degree * degree + m, :] ** 2 for m in range(2 * degree + 1)))
        if hp["normalization"] == "norm":
            s = sum(per_degree)
        elif hp["std_balance_degrees"]:
            s = sum(q / (2 * degree + 1) for degree, q in enumerate(per_degree, start=1)) / lmax
        else:
            s = sum(per_degree) / ((lmax + 1) ** 2 - 1)
        inv = 1.0 / torch.sqrt(s.mean(-1, keepdim=True) + eps)
        for degree in range(1, lmax + 1):
            for m in range(2 * degree + 1):
                row = x[..., degree * degree + m, :] * inv
                rows.append(row * w[degree] if w is not None else row)
    return torch.stack(rows, dim=-2)


def _functional(x, m):
    return NF.separable_layer_norm(x, m.lmax, m.weight, m.bias, m.eps, m.normalization, m.std_balance_degrees)


def _sh_input(lmax, offset=0.0):
    """randn * 1.5 with (lmax+1)^2 rows in dim -2 (whatever size the drawn shape had there), degree 0 shifted by
    ``offset`` (a mean for LayerNorm to remove)."""

    def make(shape, g):
        shape = (*shape[:-2], (lmax + 1) ** 2, shape[-1])
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
        x[..., 0, :] += offset
        return x

    return make


ENTRIES = (
    LayerEntry(
        name="separable_layernorm",
        reference=ref_separable_layernorm,
        cases=(
            Case(init={"num_features": 8, "lmax": 2}, shape=(5, 9, 8), input_fn=_sh_input(2, 0.7), desc="lmax2"),
            Case(
                init={"num_features": 6, "lmax": 3, "eps": 1e-3},
                shape=(2, 3, 16, 6),
                input_fn=_sh_input(3, -1.0),
                desc="lmax3_4d",
            ),
            Case(
                init={"num_features": 5, "lmax": 1, "affine": False},
                shape=(4, 4, 5),
                input_fn=_sh_input(1, 0.5),
                desc="lmax1_no_affine",
            ),
            Case(
                init={"num_features": 4, "lmax": 2, "normalization": "norm"},
                shape=(3, 9, 4),
                input_fn=_sh_input(2, 0.3),
                desc="norm",
            ),
            Case(
                init={"num_features": 4, "lmax": 3, "std_balance_degrees": False},
                shape=(16, 4),
                input_fn=_sh_input(3, 0.3),
                desc="unbalanced_2d",
            ),
            Case(init={"num_features": 6, "lmax": 0}, shape=(3, 1, 6), input_fn=_sh_input(0, 1.0), desc="lmax0"),
            Case(init={"num_features": 7}, shape=(2, 49, 7), input_fn=_sh_input(6, 0.2), desc="default_lmax6"),
        ),
        functional=_functional,
        layout=Layout(feature_arg="num_features", feature_axis=-1, min_rank=2),
        bad_init=({"lmax": -1}, {"lmax": 1.5}, {"normalization": "l2"}),
    ),
)
