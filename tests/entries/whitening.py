"""Harness entries of group-wise ZCA whitening and GDWCT's group-wise whitening-and-coloring transformation
(Cho, Choi, Park, Shin & Choo, CVPR 2019, arXiv:1812.09912; official WonwoongCho/GDWCT model.py).

References are float64 formulas written here without calling normact: per sample and group of d = C/G
channels, the spatial mean, the biased covariance over the positions and its inverse square root by an
eigendecomposition; the coloring matrix M D^-1 M^T (= U D U^T with U = M D^-1, D the column norms of the
d x d matrix M that the shared MLP predicts from the group's chunk of the style code), the style mean from
the second MLP, and the blend alpha * (colored + mean) + (1 - alpha) * x.
"""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def _groups(c, hp):
    return hp["num_groups"] or math.gcd(c, 8)


def _inv_sqrt(sigma, eps):
    evals, u = torch.linalg.eigh(sigma)
    return u @ torch.diag_embed(1.0 / torch.sqrt(evals.clamp(min=0) + eps)) @ u.transpose(-1, -2)


def _centered_groups(x, g):
    n, c = x.shape[:2]
    xg = x.reshape(n, g, c // g, -1)
    return xg - xg.mean(-1, keepdim=True)


def _zca(xc, eps):
    sigma = xc @ xc.transpose(-1, -2) / xc.shape[-1]
    return _inv_sqrt(sigma, eps) @ xc


def ref_group_whitening(x, p, hp):
    """(Sigma_g + eps I)^(-1/2) (x_g - mu_g) per sample and group, Sigma_g the biased covariance over the
    positions; then weight * . + bias per channel."""
    g = _groups(x.shape[1], hp)
    y = _zca(_centered_groups(x, g), hp["eps"]).reshape(x.shape)
    view = (1, -1) + (1,) * (x.dim() - 2)
    if p.get("weight") is not None:
        y = y * p["weight"].reshape(view) + p["bias"].reshape(view)
    return y


def _mlp(h, p, prefix, n_layers):
    for i in range(n_layers):
        h = h @ p[f"{prefix}_weights.{i}"].T + p[f"{prefix}_biases.{i}"]
        if i < n_layers - 1:
            h = torch.where(h > 0, h, 0.01 * h)
    return h


def ref_gdwct(x, p, hp, *, style):
    """c = x_g - mu_g (or its ZCA whitening); M_g = MLP_CT(style chunk g) as a d x d matrix (row-major);
    D_g = column norms, U_g = M_g / D_g, coloring U_g D_g U_g^T; y = alpha (U D U^T c + MLP_mu(style)) +
    (1 - alpha) x."""
    n, c = x.shape[:2]
    g = _groups(c, hp)
    d = c // g
    xc = _centered_groups(x, g)
    if hp["whitening"] == "zca":
        xc = _zca(xc, hp["eps"])
    m = _mlp(style.reshape(n, g, -1), p, "ct", 5).reshape(n, g, d, d)
    col = torch.sqrt((m**2).sum(-2))  # (n, g, d): the norm of column b of M
    u = m / col.unsqueeze(-2)
    coloring = u @ torch.diag_embed(col) @ u.transpose(-1, -2)
    mu = _mlp(style, p, "mu", 3).reshape((n, c) + (1,) * (x.dim() - 2))
    y = (coloring @ xc).reshape(x.shape) + mu
    if p.get("alpha") is not None:
        a = p["alpha"].reshape(())
        y = a * y + (1 - a) * x
    return y


# ----------------------------------------------------------------------------- functional calls


def _gw_functional(x, m):
    return NF.group_whitening(x, m.num_groups, m.weight, m.bias, m.eps)


def _gdwct_functional(x, m, *, style):
    return NF.group_whitening_coloring(
        x, style, m.num_groups, list(m.ct_weights), list(m.ct_biases), list(m.mu_weights), list(m.mu_biases),
        m.alpha, m.eps, m.whitening,
    )  # fmt: skip


def _style(dim=None):
    """Style codes (N, dim); dim None: as many as the input's channels (style_dim=None)."""

    def make(shape, g):
        return {"style": torch.randn((shape[0], dim or shape[1]), generator=g, dtype=torch.float64)}

    return make


# ----------------------------------------------------------------------------- entries

ENTRIES = (
    LayerEntry(
        name="group_whitening",
        reference=ref_group_whitening,
        cases=(
            Case(init={"num_features": 8, "num_groups": 2}, shape=(4, 8, 5, 5), offset=0.5),
            Case(
                init={"num_features": 6, "num_groups": 3, "affine": False, "eps": 1e-3},
                shape=(3, 6, 10),
                offset=-0.5,
                desc="3d_no_affine",
            ),
            Case(init={"num_features": 8}, shape=(2, 8, 4, 4), offset=1.0, desc="default_groups_d1"),
            Case(init={"num_features": 12, "num_groups": 2}, shape=(2, 12, 4, 5), desc="d6"),
        ),
        functional=_gw_functional,
        layout=Layout(
            feature_arg="num_features",
            feature_axis=1,
            ranks=(3, 4),
            init_for=lambda f: ({"num_features": 2 * f, "num_groups": f}, 2 * f),
        ),
        bad_init=({"num_groups": 5}, {"num_groups": 0}),
    ),
    LayerEntry(
        name="group_whitening_coloring",
        reference=ref_gdwct,
        cases=(
            Case(
                init={"num_features": 8, "num_groups": 2, "mlp_dim": 8},
                shape=(3, 8, 4, 4),
                offset=0.5,
                cond_fn=_style(),
            ),
            Case(
                init={"num_features": 8, "num_groups": 2, "style_dim": 4, "mlp_dim": 6, "whitening": "zca"},
                shape=(2, 8, 5, 5),
                offset=-0.5,
                cond_fn=_style(4),
                desc="zca",
            ),
            Case(
                init={"num_features": 6, "num_groups": 3, "style_dim": 9, "mlp_dim": 5, "blend": False},
                shape=(2, 6, 7),
                cond_fn=_style(9),
                desc="3d_no_blend",
            ),
            Case(
                init={"num_features": 4, "style_dim": 8, "mlp_dim": 4, "eps": 1e-3},
                shape=(2, 4, 3, 3),
                offset=1.0,
                cond_fn=_style(8),
                desc="default_groups_d1",
                train=False,
            ),
        ),
        functional=_gdwct_functional,
        layout=Layout(
            feature_arg="num_features",
            feature_axis=1,
            ranks=(3, 4),
            init_for=lambda f: ({"num_features": 2 * f, "num_groups": f}, 2 * f),
        ),
        bad_init=({"num_groups": 5}, {"style_dim": 7}, {"mlp_dim": 0}, {"whitening": "pca"}),
    ),
)
