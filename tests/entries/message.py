"""Harness entry of MsgNorm (DeeperGCN, Li, Xiong, Thabet & Ghanem, 2020, arXiv:2006.07739).

The reference is the paper's normalized message s * ||h||_2 * m / ||m||_2 (generalized to the p-norm of PyG's
MessageNorm, whose semantics the layer follows: the residual sum with h is the caller's), in float64,
written here without calling normact. The messages are a conditioning input of the shape of x.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def _pnorm(t, p):
    return t.abs().pow(p).sum(-1, keepdim=True).pow(1.0 / p)


def ref_msg_norm(x, params, hp, *, msg):
    """y = s * ||x||_p * m / max(||m||_p, eps), norms per node over the last dimension."""
    s = params["scale"].reshape(())
    m_norm = torch.clamp(_pnorm(msg, hp["p"]), min=hp["eps"])
    return s * _pnorm(x, hp["p"]) * msg / m_norm


def _messages(shape, g):
    return {"msg": torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 1.5 + 0.3}


def _functional(x, m, *, msg):
    return NF.msg_norm(x, msg, m.scale, m.p, m.eps)


ENTRIES = (
    LayerEntry(
        name="msg_norm",
        reference=ref_msg_norm,
        cases=(
            Case(init={"num_features": 8}, shape=(6, 8), offset=0.5, cond_fn=_messages),
            Case(init={"num_features": 8, "learn_scale": False}, shape=(5, 8), cond_fn=_messages, desc="fixed"),
            Case(init={"num_features": 6, "p": 3.0}, shape=(2, 4, 6), offset=-0.5, cond_fn=_messages, desc="p3"),
            Case(init={"num_features": 5, "p": 1.0}, shape=(7, 5), offset=1.0, cond_fn=_messages, desc="p1"),
            Case(
                init={"num_features": None},
                shape=(3, 7),
                cond_fn=_messages,
                desc="any_width",
                train=False,
                layout=Layout(min_rank=1),
            ),
        ),
        functional=_functional,
        layout=Layout(feature_arg="num_features", feature_axis=-1, min_rank=1),
        bad_init=({"p": 0.0}, {"p": -1.0}, {"p": float("inf")}),
    ),
)
