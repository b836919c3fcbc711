"""Harness entry of SimBa's residual block (Lee et al., 2024, arXiv:2410.09754). The float64 reference writes the
block out: LayerNorm over the last dim, two dense layers with a ReLU between, the identity shortcut (no normact,
no torch norm modules)."""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def _linear(x, w, b):
    y = torch.einsum("...i,oi->...o", x, w)
    return y if b is None else y + b


def ref_simba_block(x, p, hp):
    """x + W2 ReLU(W1 LN(x) + b1) + b2."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    h = (x - mu) / torch.sqrt(var + hp["eps"]) * p["norm.weight"] + p["norm.bias"]
    h = _linear(h, p["mlp.fc1.weight"], p.get("mlp.fc1.bias")).clamp_min(0.0)
    return x + _linear(h, p["mlp.fc2.weight"], p.get("mlp.fc2.bias"))


# widths 4..24 in the property tests: a LayerNorm over one or two features is ill-conditioned in bfloat16 (see
# tests/entries/block.py)
LAYOUT = Layout(feature_arg="dim", feature_axis=-1, min_rank=1, init_for=lambda f: ({"dim": 4 * f}, 4 * f))
# a norm and two dense layers, each rounded in low precision, against one rounding for a single layer
TOLERANCES = {torch.bfloat16: (1e-1, 6e-2), torch.float16: (3e-2, 2e-2)}

ENTRIES = [
    LayerEntry(
        name="simba_block",
        reference=ref_simba_block,
        cases=(
            Case(init={"dim": 8}, shape=(4, 8)),
            Case(init={"dim": 6}, shape=(2, 3, 6), offset=1.0, desc="tokens"),
            Case(init={"dim": 8, "mlp_ratio": 2, "bias": False, "eps": 1e-3}, shape=(3, 8), desc="no_bias_ratio2"),
        ),
        functional=lambda x, m: NF.simba_block(
            x,
            m.norm.weight,
            m.norm.bias,
            m.mlp.fc1.weight,
            m.mlp.fc1.bias,
            m.mlp.fc2.weight,
            m.mlp.fc2.bias,
            m.eps,
        ),
        layout=LAYOUT,
        tolerances=TOLERANCES,
        bad_init=({"mlp_ratio": 0.0}, {"mlp_ratio": -1.0}),
    ),
]
