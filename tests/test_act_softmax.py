"""Softmax, log-softmax and softmin against torch.nn, and their identities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normact


@pytest.mark.parametrize(
    ("name", "torch_cls"), [("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax), ("softmin", nn.Softmin)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_matches_torch(name, torch_cls, dtype, dim):
    x = (torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4).to(dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = normact.create(name, dim=dim)(xa), torch_cls(dim=dim)(xb)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)


def test_softmax_sums_to_one_and_is_shift_invariant():
    x = torch.randn(4, 9, dtype=torch.float64)
    layer = normact.create("softmax")
    torch.testing.assert_close(layer(x).sum(-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(layer(x + 1000.0), layer(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_inputs_stay_finite(dtype):
    x = (torch.randn(2, 8) * 1e4).to(dtype)
    for name in ("softmax", "log_softmax", "softmin"):
        y = normact.create(name)(x)
        assert y.dtype == dtype and torch.isfinite(y).all()


def test_bad_dim_names_the_shape():
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        normact.create("softmax", dim=2)(torch.randn(2, 3))
    with pytest.raises(TypeError):
        normact.create("softmax", dim=1.0)
