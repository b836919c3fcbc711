"""Harness entries of GDN, inverse GDN and simplified GDN (Ballé et al. 2015; Johnston et al. 2019).

The reference maps the stored (reparametrized) parameters to their effective values and evaluates the
formula in float64 with an explicit sum over channels; it never calls normact.
"""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def _effective(p, minimum, offset):
    """max(p, sqrt(minimum + offset^2))^2 - offset^2."""
    return torch.clamp(p, min=math.sqrt(minimum + offset**2)) ** 2 - offset**2


def ref_gdn(x, p, hp):
    """y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2) (inverse: times; simplified: |x_j|, no root)."""
    beta = _effective(p["beta"], hp["beta_min"], hp["reparam_offset"])
    gamma = _effective(p["gamma"], 0.0, hp["reparam_offset"])
    c = x.shape[1]
    pooled = x.abs() if hp["simplified"] else x**2
    norm = torch.stack([beta[i] + sum(gamma[i, j] * pooled[:, j] for j in range(c)) for i in range(c)], dim=1)
    if not hp["simplified"]:
        norm = torch.sqrt(norm)
    return x * norm if hp["inverse"] else x / norm


def _perturb(module, gen):
    """Move the stored parameters away from their init but keep them 0.05 above the reparametrization's
    lower bound, where the custom bound gradient equals the true derivative (gradcheck checks the latter;
    the bound itself is tested in tests/test_gdn.py)."""
    with torch.no_grad():
        for p in (module.beta, module.gamma):
            noise = 0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
            p.copy_((p + noise).abs() + 0.05)


def _functional(x, m):
    return NF.generalized_divisive_norm(x, m.beta, m.gamma, m.inverse, m.simplified, m.beta_min, m.reparam_offset)


_LAYOUT = Layout(feature_arg="num_features", feature_axis=1, min_rank=2)
_BAD = ({"beta_min": 0.0}, {"beta_min": -1.0}, {"gamma_init": -0.1}, {"reparam_offset": 0.0})

ENTRIES = (
    LayerEntry(
        name="gdn",
        reference=ref_gdn,
        cases=(
            Case(init={"num_features": 6}, shape=(2, 6, 4, 3), offset=0.5),
            Case(init={"num_features": 5}, shape=(3, 5), desc="2d", scale=3.0),
            Case(
                init={"num_features": 4, "beta_min": 1e-3, "gamma_init": 0.5, "reparam_offset": 2.0**-10},
                shape=(2, 4, 7),
                desc="hparams",
            ),
        ),
        functional=_functional,
        layout=_LAYOUT,
        bad_init=_BAD,
        perturb=_perturb,
    ),
    # The IGDN output grows like |x|^2 (|x| = 1e4 gives ~1e7 with gamma ~ 0.1): beyond float16's range
    # (65504), so the |x| = 1e4 inputs are not checked for the inverse forms (an overflow of the exact value,
    # not of an intermediate: the pooled sum itself is computed in float32).
    LayerEntry(
        name="igdn",
        reference=ref_gdn,
        cases=(
            Case(init={"num_features": 6}, shape=(2, 6, 4, 3), offset=0.5),
            Case(init={"num_features": 3, "simplified": True}, shape=(2, 3, 5), desc="simplified"),
        ),
        functional=_functional,
        layout=_LAYOUT,
        bad_init=_BAD,
        perturb=_perturb,
        large_input=False,
        kinks=(0.0,),
    ),
    LayerEntry(
        name="gdn_simplified",
        reference=ref_gdn,
        cases=(
            Case(init={"num_features": 6}, shape=(2, 6, 4, 3), offset=0.5),
            Case(init={"num_features": 4, "gamma_init": 0.3}, shape=(3, 4), desc="2d", scale=3.0),
        ),
        functional=_functional,
        layout=_LAYOUT,
        bad_init=_BAD,
        perturb=_perturb,
        kinks=(0.0,),
    ),
)
