"""Separable layer normalization (EquiformerV2, arXiv:2306.12059) beyond the generic harness: rotation
equivariance per degree, degree 0 = torch's LayerNorm, invariance of the L >= 1 part to a per-sample positive
scale, the RMS over degrees it divides by, and the relations between its normalization options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normact

pytestmark = pytest.mark.usefixtures("float64")


def _x(lmax, channels, lead=(5,), seed=0, offset=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((*lead, (lmax + 1) ** 2, channels), generator=g) * 1.5
    x[..., 0, :] += offset
    return x


def _layer(channels, lmax, seed=1, **kwargs):
    layer = normact.create("separable_layernorm", channels, lmax=lmax, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return layer


def _random_orthogonal_blocks(lmax, seed=2):
    """A block-diagonal ((lmax+1)^2, (lmax+1)^2) matrix: a random orthogonal (2L+1) x (2L+1) block per degree
    (rotations and reflections; real Wigner-D matrices are among them), 1 for degree 0."""
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.ones(1, 1)]
    for degree in range(1, lmax + 1):
        q, r = torch.linalg.qr(torch.randn(2 * degree + 1, 2 * degree + 1, generator=g))
        blocks.append(q * torch.sign(torch.diagonal(r)))  # Haar-distributed
    return torch.block_diag(*blocks)


def _apply(d, x):
    """D acting on the coefficient dim (-2) of every channel."""
    return torch.einsum("ij,...jc->...ic", d, x)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"normalization": "norm"}, {"std_balance_degrees": False}, {"affine": False}],
    ids=["component_balanced", "norm", "component", "no_affine"],
)
@pytest.mark.parametrize(("lmax", "lead"), [(1, (4,)), (3, (2, 3)), (6, (3,))])
def test_rotation_equivariance_per_degree(kwargs, lmax, lead):
    layer = _layer(8, lmax, **kwargs)
    x = _x(lmax, 8, lead)
    for seed in range(3):
        d = _random_orthogonal_blocks(lmax, seed)
        torch.testing.assert_close(layer(_apply(d, x)), _apply(d, layer(x)), atol=1e-10, rtol=0)


def test_a_degree_mixing_or_anisotropic_map_is_not_commuted_with():
    """The check above is sharp: a per-component (not per-degree) scaling breaks the commutation."""
    layer = _layer(4, 2)
    x = _x(2, 4)
    d = torch.eye(9)
    d[5, 5] = 3.0  # stretches one component of degree 2
    assert (layer(_apply(d, x)) - _apply(d, layer(x))).abs().max() > 1e-3


@pytest.mark.parametrize("lmax", [0, 2, 6])
def test_degree_zero_is_torch_layernorm(lmax):
    layer = _layer(6, lmax, eps=1e-4)
    ln = nn.LayerNorm(6, eps=1e-4)
    with torch.no_grad():
        ln.weight.copy_(layer.weight[0])
        ln.bias.copy_(layer.bias)
    x = _x(lmax, 6, (4, 2))
    torch.testing.assert_close(layer(x)[..., 0, :], ln(x[..., 0, :]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kwargs", [{}, {"normalization": "norm"}, {"std_balance_degrees": False}])
def test_higher_degrees_are_invariant_to_a_per_sample_positive_scale(kwargs):
    layer = _layer(5, 3, eps=1e-14, **kwargs)
    x = _x(3, 5, (6,))
    s = torch.rand(6, 1, 1, generator=torch.Generator().manual_seed(4)) * 10 + 0.1
    scaled = x.clone()
    scaled[:, 1:, :] *= s
    torch.testing.assert_close(layer(scaled), layer(x), atol=1e-10, rtol=0)
    # the degree-0 part does not enter the L >= 1 normalization either
    shifted = x.clone()
    shifted[:, 0, :] = torch.randn(6, 5, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(layer(shifted)[:, 1:], layer(x)[:, 1:], atol=1e-12, rtol=0)


def test_higher_degrees_divide_by_the_rms_over_degrees_of_per_degree_rms():
    """sigma^2 = mean over L = 1..lmax of (mean over the 2L+1 components and C channels of x^2)."""
    lmax, eps = 3, 1e-5
    layer = _layer(4, lmax, eps=eps)
    x = _x(lmax, 4, (3,))
    per_degree = [x[:, d * d : (d + 1) ** 2, :].square().mean((1, 2)) for d in range(1, lmax + 1)]
    sigma = (torch.stack(per_degree).mean(0) + eps).sqrt().view(-1, 1, 1)
    weight = torch.cat([layer.weight[d : d + 1].expand(2 * d + 1, -1) for d in range(1, lmax + 1)])
    torch.testing.assert_close(layer(x)[:, 1:], x[:, 1:] / sigma * weight)


def test_normalization_options_agree_where_they_must():
    x = _x(2, 4, (3,))
    eps = 1e-14
    balanced = _layer(4, 1, eps=eps)(x[:, :4])
    plain = _layer(4, 1, eps=eps, std_balance_degrees=False)(x[:, :4])
    torch.testing.assert_close(balanced, plain)  # one degree: balancing changes nothing
    component = _layer(4, 2, eps=eps, std_balance_degrees=False)(x)
    norm = _layer(4, 2, eps=eps, normalization="norm")(x)
    torch.testing.assert_close(norm[:, 1:], component[:, 1:] / 8**0.5)  # sum over 8 = 8 x mean
    torch.testing.assert_close(norm[:, 0], component[:, 0])
    different = _layer(4, 2, eps=eps)(x)
    assert (different[:, 1:] - component[:, 1:]).abs().max() > 1e-3  # balancing weighs degrees, not components


def test_default_lmax_and_the_official_parameter_layout():
    layer = normact.create("separable_layernorm", 16)
    assert layer.lmax == 6 and layer.weight.shape == (7, 16) and layer.bias.shape == (16,)
    assert layer(torch.randn(2, 49, 16)).shape == (2, 49, 16)
    assert "lmax=6" in repr(layer)
    with pytest.raises(ValueError, match=r"\(\*, 49, 16\)"):
        layer(torch.randn(2, 16, 16))


def test_low_precision_returns_its_dtype_and_stays_finite():
    layer = normact.create("separable_layernorm", 8, lmax=2)
    for dtype in (torch.float16, torch.bfloat16):
        x = (_x(2, 8, (3,)) * 1e4).to(dtype)
        y = layer.to(dtype)(x)
        assert y.dtype == dtype and torch.isfinite(y).all()
