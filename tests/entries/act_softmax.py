"""Harness entries of the softmax activations (closed forms in float64, written without calling normact).
They mix the entries along ``dim``: the exact points are evaluated jointly on the vector of their inputs."""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def _shifted(x, dim):
    return x - x.max(dim, keepdim=True).values  # exact: softmax is shift-invariant


def ref_softmax(x, p, hp):
    e = torch.exp(_shifted(x, hp["dim"]))
    return e / e.sum(hp["dim"], keepdim=True)


def ref_log_softmax(x, p, hp):
    z = _shifted(x, hp["dim"])
    return z - torch.log(torch.exp(z).sum(hp["dim"], keepdim=True))


def ref_softmin(x, p, hp):
    return ref_softmax(-x, p, hp)


_CASES = (
    Case(shape=(4, 16), scale=3.0),
    Case(init={"dim": 1}, shape=(2, 5, 3), desc="dim1"),
    Case(shape=(7,), desc="vector", offset=40.0),  # large offset: the shift must be exact
)
_LAYOUT = Layout(min_rank=1)
LN2, LN3 = math.log(2), math.log(3)


def _entry(name, reference, functional, points):

    return LayerEntry(
        name=name,
        reference=reference,
        cases=_CASES,
        functional=functional,
        layout=_LAYOUT,
        points=points,
        bad_init=({"dim": 1.5}, {"dim": "last"}),
    )


ENTRIES = (
    # exp(0), exp(ln 2), exp(ln 3) = 1, 2, 3: the probabilities 1/6, 2/6, 3/6
    _entry("softmax", ref_softmax, lambda x, m: NF.softmax(x, m.dim), ((0.0, 1 / 6), (LN2, 2 / 6), (LN3, 3 / 6))),
    _entry(
        "log_softmax",
        ref_log_softmax,
        lambda x, m: NF.log_softmax(x, m.dim),
        ((0.0, math.log(1 / 6)), (LN2, math.log(2 / 6)), (LN3, math.log(3 / 6))),
    ),
    _entry("softmin", ref_softmin, lambda x, m: NF.softmin(x, m.dim), ((0.0, 1 / 6), (-LN2, 2 / 6), (-LN3, 3 / 6))),
)
