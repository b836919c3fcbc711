"""normact's GDN / IGDN / simplified GDN against CompressAI's (compressai.layers.GDN, GDN1) with the same
weights: forward and gradients, including parameters below the reparametrization's lower bound (where
both use the custom pass-through gradient). CompressAI's checkpoints load into normact unchanged."""

from __future__ import annotations

import pytest
import torch

compressai_layers = pytest.importorskip("compressai.layers")

import normact  # noqa: E402


def _pair(name, c, inverse):
    ours = normact.create(name, c, dtype=torch.float64)
    theirs_cls = compressai_layers.GDN1 if name == "gdn_simplified" else compressai_layers.GDN
    theirs = theirs_cls(c, inverse=inverse).double()
    return ours, theirs


@pytest.mark.parametrize("name", ["gdn", "igdn", "gdn_simplified"])
@pytest.mark.parametrize("below_bound", [False, True], ids=["inside", "below_bound"])
def test_matches_compressai(name, below_bound):
    torch.manual_seed(0)
    c = 5
    ours, theirs = _pair(name, c, inverse=(name == "igdn"))
    with torch.no_grad():
        theirs.beta.add_(0.3 * torch.randn(c, dtype=torch.float64))
        theirs.gamma.add_(0.3 * torch.randn(c, c, dtype=torch.float64))
        if not below_bound:
            theirs.beta.abs_().add_(0.05)
            theirs.gamma.abs_().add_(0.05)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(3, c, 6, 4, dtype=torch.float64) * 2
    xo, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yo, yt = ours(xo), theirs(xt)
    torch.testing.assert_close(yo, yt, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(yo)
    go = torch.autograd.grad(yo, [xo, ours.beta, ours.gamma], w)
    gt = torch.autograd.grad(yt, [xt, theirs.beta, theirs.gamma], w)
    for a, b, what in zip(go, gt, ("x", "beta", "gamma"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=what)


def test_same_initial_state():
    ours, theirs = normact.create("gdn", 7), compressai_layers.GDN(7)  # both float32
    theirs_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs_state[key], rtol=1.2e-7, atol=0)  # sqrt rounding: 1 ulp


def test_float32():
    torch.manual_seed(1)
    ours = normact.create("igdn", 8)
    theirs = compressai_layers.GDN(8, inverse=True)
    with torch.no_grad():
        theirs.gamma.add_(0.1 * torch.rand(8, 8))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x), rtol=2e-6, atol=1e-6)
