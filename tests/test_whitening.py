"""Group whitening and GDWCT beyond the generic harness: exact ZCA gives identity covariance per group,
coloring with a given square root of a covariance gives that covariance (and the style mean), groups never
mix, the d = 1 limit is instance normalization, the regularizers, and the stable eigendecomposition backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF
from tests.helpers import randn

pytestmark = pytest.mark.usefixtures("float64")


def _mixed(shape, seed=0):
    """Correlated channels: a random mixing of independent ones (group covariances far from I)."""
    c = shape[1]
    z = randn(shape, seed=seed)
    mix = torch.eye(c) + 0.8 * randn((c, c), seed=seed + 1, scale=1.0, offset=0.0)
    return torch.einsum("ij,nj...->ni...", mix, z) + 2.0


def _group_cov(y, groups):
    n, c = y.shape[:2]
    yg = y.reshape(n, groups, c // groups, -1)
    yc = yg - yg.mean(-1, keepdim=True)
    return yc @ yc.transpose(-1, -2) / yg.shape[-1], yg.mean(-1)


@pytest.mark.parametrize(("c", "groups", "shape"), [(8, 2, (3, 8, 6, 6)), (12, 3, (2, 12, 40)), (6, 1, (2, 6, 5, 5))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_zca_gives_identity_covariance_per_group(c, groups, shape, dtype):
    layer = normact.create("group_whitening", c, num_groups=groups, dtype=dtype)
    x = _mixed(shape).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    cov, mean = _group_cov(y.double(), groups)
    d = c // groups
    torch.testing.assert_close(cov, torch.eye(d).expand_as(cov), atol=1e-4, rtol=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)


def test_zca_is_the_symmetric_whitening_closest_to_the_input():
    """ZCA (not PCA or Cholesky): the whitening matrix is symmetric positive definite."""
    x = _mixed((1, 4, 50))
    y = NF.group_whitening(x, 1, eps=1e-12)
    xc = (x - x.mean(-1, keepdim=True))[0]
    w = torch.linalg.lstsq(xc.T, y[0].T).solution.T  # y = W xc
    torch.testing.assert_close(w, w.T, atol=1e-8, rtol=0)
    assert (torch.linalg.eigvalsh(w) > 0).all()


def test_one_channel_groups_are_instance_norm():
    x = randn((3, 5, 4, 4))
    layer = normact.create("group_whitening", 5, num_groups=5, eps=1e-3)
    torch.testing.assert_close(layer(x), F.instance_norm(x, eps=1e-3))


def _gdwct_with_coloring(c, groups, sqrt_cov, style_mean, whitening="zca", style_dim=4):
    """A GDWCT layer whose MLPs output constants: the coloring MLP M_g = U diag(sqrt(lambda)) (row-major), so
    that U D U^T = Sigma^(1/2); the mean MLP the given style mean."""
    layer = normact.create(
        "group_whitening_coloring", c, num_groups=groups, style_dim=style_dim, mlp_dim=4, whitening=whitening,
        blend=False,
    )  # fmt: skip
    evals, u = torch.linalg.eigh(sqrt_cov @ sqrt_cov)
    m = u @ torch.diag(evals.sqrt())  # columns U_b sqrt(lambda_b): column norms sqrt(lambda_b)
    with torch.no_grad():
        layer.ct_weights[-1].zero_()
        layer.ct_biases[-1].copy_(m.reshape(-1))
        layer.mu_weights[-1].zero_()
        layer.mu_biases[-1].copy_(style_mean)
    return layer


@pytest.mark.parametrize("shape", [(2, 8, 8, 8), (3, 8, 50)])
def test_coloring_with_a_covariance_square_root_gives_that_covariance(shape):
    c, groups = 8, 2
    a = randn((4, 4), seed=5, scale=1.0, offset=0.0)
    sigma_s = a @ a.T + 0.5 * torch.eye(4)
    evals, u = torch.linalg.eigh(sigma_s)
    sqrt_cov = u @ torch.diag(evals.sqrt()) @ u.T
    style_mean = randn((c,), seed=6)
    layer = _gdwct_with_coloring(c, groups, sqrt_cov, style_mean)
    x = _mixed(shape)
    y = layer(x, randn((shape[0], 4), seed=7))
    cov, mean = _group_cov(y, groups)
    torch.testing.assert_close(cov, sigma_s.expand_as(cov), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean, style_mean.reshape(1, groups, -1).expand_as(mean))
    # an orthonormal U: the coloring regularizer vanishes
    assert layer.coloring_regularizer(randn((3, 4), seed=8)).item() < 1e-12


def test_centering_mode_with_identity_coloring_only_shifts_the_mean():
    layer = _gdwct_with_coloring(8, 4, torch.eye(2), torch.zeros(8), whitening="center")
    x = randn((2, 8, 5, 5))
    y = layer(x, randn((2, 4), seed=1))
    torch.testing.assert_close(y, x - x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize("whitening", ["center", "zca"])
@pytest.mark.parametrize("blend", [True, False])
def test_gdwct_groups_do_not_mix(whitening, blend):
    layer = normact.create(
        "group_whitening_coloring", 8, num_groups=2, style_dim=6, mlp_dim=8, whitening=whitening, blend=blend
    )
    x, style = randn((2, 8, 5, 5)), randn((2, 6), seed=1)
    x2 = x.clone()
    x2[:, :4] = randn((2, 4, 5, 5), seed=2)  # perturb group 0 only
    y, y2 = layer(x, style), layer(x2, style)
    assert torch.equal(y[:, 4:], y2[:, 4:])
    assert not torch.allclose(y[:, :4], y2[:, :4])
    # the style chunk of group 0 drives only group 0's coloring (the mean MLP sees the whole code)
    layer_no_mean = normact.create(
        "group_whitening_coloring", 8, num_groups=2, style_dim=6, mlp_dim=8, whitening=whitening, blend=blend
    )
    with torch.no_grad():
        layer_no_mean.mu_weights[-1].zero_()
    style2 = style.clone()
    style2[:, :3] += 1.0
    y, y2 = layer_no_mean(x, style), layer_no_mean(x, style2)
    assert torch.equal(y[:, 4:], y2[:, 4:])
    assert not torch.allclose(y[:, :4], y2[:, :4])


def test_group_whitening_groups_do_not_mix():
    layer = normact.create("group_whitening", 9, num_groups=3)
    x = randn((2, 9, 4, 4))
    x2 = x.clone()
    x2[:, 3:6] = randn((2, 3, 4, 4), seed=3)
    y, y2 = layer(x), layer(x2)
    assert torch.equal(y[:, :3], y2[:, :3]) and torch.equal(y[:, 6:], y2[:, 6:])
    assert not torch.allclose(y[:, 3:6], y2[:, 3:6])


def test_whitening_regularizer_is_the_mean_absolute_deviation_of_the_covariance_from_identity():
    layer = normact.create("group_whitening_coloring", 8, num_groups=2, mlp_dim=4)
    x = _mixed((2, 8, 6, 6))
    xg = x.reshape(2, 2, 4, -1)
    xc = xg - xg.mean(-1, keepdim=True)
    cov = xc @ xc.transpose(-1, -2) / (xg.shape[-1] - 1) + layer.eps * torch.eye(4)
    expected = (cov - torch.eye(4)).abs().mean()
    torch.testing.assert_close(layer.whitening_regularizer(x), expected)
    # exactly whitened content (unbiased covariance I) has a regularizer ~ eps
    white = NF.group_whitening(x, 2, eps=1e-12) * ((xg.shape[-1] - 1) / xg.shape[-1]) ** 0.5
    assert layer.whitening_regularizer(white).item() < 1e-4


def test_coloring_regularizer_matches_its_definition_and_has_gradients():
    layer = normact.create("group_whitening_coloring", 8, num_groups=2, style_dim=6, mlp_dim=8)
    style = randn((3, 6))
    h = style.reshape(3, 2, 3)
    for i in range(5):
        h = h @ layer.ct_weights[i].T + layer.ct_biases[i]
        h = F.leaky_relu(h, 0.01) if i < 4 else h
    m = h.reshape(3, 2, 4, 4)
    u = m / m.norm(dim=-2, keepdim=True)
    expected = (u.transpose(-1, -2) @ u - torch.eye(4)).abs().mean()
    reg = layer.coloring_regularizer(style)
    torch.testing.assert_close(reg, expected)
    reg.backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in layer.ct_weights)


def test_inverse_sqrt_backward_is_exact_and_finite_for_repeated_eigenvalues():
    a = randn((3, 4, 7), offset=0.0).requires_grad_()

    def ours(t):
        return NF.symmetric_inverse_sqrt(t @ t.transpose(-1, -2) / 7, 1e-3)

    def autograd_eigh(t):
        evals, u = torch.linalg.eigh(t @ t.transpose(-1, -2) / 7)
        return u @ torch.diag_embed((evals + 1e-3).rsqrt()) @ u.transpose(-1, -2)

    g = randn((3, 4, 4), seed=1)
    (ga,) = torch.autograd.grad((ours(a) * g).sum(), a)
    (gb,) = torch.autograd.grad((autograd_eigh(a) * g).sum(), a)
    torch.testing.assert_close(ga, gb)
    assert torch.autograd.gradgradcheck(ours, (a,))
    # constant input (all eigenvalues equal) and fewer positions than channels (repeated zero eigenvalues)
    for x in (torch.full((2, 6, 4, 4), 3.0), randn((2, 6, 2))):
        x = x.requires_grad_()
        y = NF.group_whitening(x, 1)
        (gx,) = torch.autograd.grad((y * randn(y.shape, seed=4)).sum(), x)
        assert torch.isfinite(y).all() and torch.isfinite(gx).all()


def test_style_code_of_the_wrong_size_is_rejected():
    layer = normact.create("group_whitening_coloring", 8, num_groups=2, style_dim=6, mlp_dim=4)
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        layer(randn((2, 8, 3, 3)), randn((2, 5)))
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        layer(randn((2, 8, 3, 3)), randn((3, 6)))
