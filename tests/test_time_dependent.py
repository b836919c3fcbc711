"""DiMR's time-dependent norms TD-LN and TD-RMSNorm (Liu, Zeng, He et al., 2024, arXiv:2406.09416) beyond the
generic harness: plain LayerNorm at initialization for every t, independence of t when the endpoints agree, the
limits t -> +-inf, gradients reaching t, the per-sample loop of the official code, and the shape rules of t."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import normact
from normact.layers.norm.time_dependent import TimeDependentLayerNorm, TimeDependentRMSNorm
from tests.helpers import perturb, randn

NAMES = ["td_layernorm", "td_rmsnorm"]


pytestmark = pytest.mark.usefixtures("float64")


def _normalized(name, x, eps):
    if name == "td_layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    rms = x.norm(dim=-1, keepdim=True) / math.sqrt(x.shape[-1])
    return x / (rms + eps)


@pytest.mark.parametrize("name", NAMES)
def test_at_init_the_output_is_the_plain_norm_for_any_t(name):
    layer = normact.create(name, 16, bias=True)
    x = randn((4, 6, 16))
    want = _normalized(name, x, layer.eps)
    for t in (torch.zeros(4), 10 * randn((4,), seed=3), torch.full((4,), -1e3), torch.tensor(7.0)):
        torch.testing.assert_close(layer(x, t=t), want, atol=1e-12, rtol=1e-12)
    if name == "td_layernorm":
        torch.testing.assert_close(layer(x, t=torch.randn(4)), F.layer_norm(x, (16,), eps=1e-5))


@pytest.mark.parametrize("name", NAMES)
def test_equal_endpoints_make_the_output_independent_of_t(name):
    layer = normact.create(name, 16, bias=True)
    perturb(layer, scale=0.5)
    with torch.no_grad():
        layer.weight1.copy_(layer.weight0)
        layer.bias1.copy_(layer.bias0)
    x = randn((4, 16))
    y0 = layer(x, t=torch.zeros(4))
    for t in (randn((4,), scale=5.0, seed=4), torch.full((4,), 30.0), torch.full((4,), -30.0)):
        torch.testing.assert_close(layer(x, t=t), y0, atol=1e-12, rtol=1e-12)
    # ... and depends on t once they differ (slopes are nonzero)
    with torch.no_grad():
        layer.weight1.add_(0.5)
    assert not torch.allclose(layer(x, t=torch.full((4,), 2.0)), layer(x, t=torch.full((4,), -2.0)))


@pytest.mark.parametrize("name", NAMES)
def test_limits_of_t_select_the_endpoints(name):
    """With slopes w > 0, t -> +inf gives P0 and t -> -inf gives P1 (reversed for w < 0)."""
    layer = normact.create(name, 16, bias=True)
    perturb(layer, scale=0.5)
    with torch.no_grad():
        layer.weight_slope.abs_().add_(0.1)
        layer.bias_slope.abs_().add_(0.1)
    x = randn((2, 3, 16))
    xhat = _normalized(name, x, layer.eps)
    big = torch.tensor([1e3, -1e3])
    torch.testing.assert_close(layer.gamma(big), torch.stack([layer.weight0, layer.weight1]).detach())
    torch.testing.assert_close(layer.beta(big), torch.stack([layer.bias0, layer.bias1]).detach())
    y = layer(x, t=big)
    torch.testing.assert_close(y[0], (xhat[0] * layer.weight0 + layer.bias0).detach())
    torch.testing.assert_close(y[1], (xhat[1] * layer.weight1 + layer.bias1).detach())
    with torch.no_grad():
        layer.weight_slope.neg_()
    torch.testing.assert_close(layer.gamma(big), torch.stack([layer.weight1, layer.weight0]).detach())


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_to_t(name):
    layer = normact.create(name, 16, bias=True)
    x = randn((3, 5, 16))
    t = randn((3,), seed=2).requires_grad_(True)
    (g,) = torch.autograd.grad(layer(x, t=t).pow(2).sum(), t)
    assert torch.equal(g, torch.zeros(3))  # at init the output does not depend on t
    perturb(layer, scale=0.5)
    (g,) = torch.autograd.grad(layer(x, t=t).pow(2).sum(), t)
    assert (g.abs() > 1e-6).all()
    # the analytic derivative: d/dt of sum(y^2) by central differences
    h = 1e-6
    for i in range(3):
        e = torch.zeros(3)
        e[i] = h
        fd = (layer(x, t=t.detach() + e).pow(2).sum() - layer(x, t=t.detach() - e).pow(2).sum()) / (2 * h)
        torch.testing.assert_close(g[i], fd.detach(), atol=1e-6, rtol=1e-6)
    params = [p for p in layer.parameters()]
    assert all(gp is not None for gp in torch.autograd.grad(layer(x, t=t).sum(), params, allow_unused=True))


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_loop_of_the_official_code(name):
    """DiMR applies one parameter set per sample to all its tokens: y[i] = xhat[i] * gamma(t_i) + beta(t_i),
    P(t) = addcmul(P1, sigmoid(t * w + b), P0 - P1) (official tdp_torch)."""
    layer = normact.create(name, 8, bias=True)
    perturb(layer, scale=0.5)
    x = randn((3, 4, 5, 8))
    t = randn((3,), scale=2.0, seed=6)
    y = layer(x, t=t)
    for i in range(3):
        s_w = torch.sigmoid(t[i] * layer.weight_slope + layer.weight_offset)
        s_b = torch.sigmoid(t[i] * layer.bias_slope + layer.bias_offset)
        gamma = torch.addcmul(layer.weight1, s_w, layer.weight0 - layer.weight1)
        beta = torch.addcmul(layer.bias1, s_b, layer.bias0 - layer.bias1)
        torch.testing.assert_close(y[i], (_normalized(name, x[i], layer.eps) * gamma + beta).detach())


@pytest.mark.parametrize("name", NAMES)
def test_t_shapes_broadcast_from_the_left(name):
    layer = normact.create(name, 8, bias=True)
    perturb(layer, scale=0.5)
    x = randn((3, 4, 8))
    t = randn((3,), seed=8)
    per_token = t[:, None].expand(3, 4).contiguous()
    torch.testing.assert_close(layer(x, t=t), layer(x, t=per_token))
    torch.testing.assert_close(layer(x, t=t[:1]), layer(x, t=t[:1].expand(3)))
    torch.testing.assert_close(layer(x, t=t[0]), layer(x, t=t[:1]))
    torch.testing.assert_close(layer(x, t=0.25), layer(x, t=torch.full((3,), 0.25)))
    torch.testing.assert_close(layer(x[0, 0], t=t[0]), layer(x, t=t)[0, 0])  # a 1-D input takes a scalar t


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [(4,), (3, 5), (3, 4, 1), (2,)])
def test_bad_t_shape_raises_naming_the_shape(name, bad):
    layer = normact.create(name, 8)
    with pytest.raises(ValueError, match=re_shape(bad)):
        layer(randn((3, 4, 8)), t=torch.zeros(bad))


def re_shape(shape):
    return "t of shape " + str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("name", NAMES)
def test_t_is_a_required_floating_keyword(name):
    layer = normact.create(name, 8)
    x = randn((3, 8))
    with pytest.raises(TypeError):
        layer(x)
    with pytest.raises(TypeError):
        layer(x, torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point t"):
        layer(x, t=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="tensor"):
        layer(x, t=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"\(N,\) = \(3,\)"):
        layer(x, t=torch.zeros(4))


def test_defaults_and_metadata():
    ln = normact.create("td_layernorm", 16)
    rms = normact.create("td_rmsnorm", 16)
    assert isinstance(ln, TimeDependentLayerNorm) and isinstance(rms, TimeDependentRMSNorm)
    assert ln.eps == 1e-5 and ln.bias0 is not None  # official LayerNorm: eps 1e-5, time-dependent bias
    assert rms.eps == 1e-8 and rms.bias0 is None  # official TDRMSNorm: eps 1e-8 outside the root, no offset
    for layer in (ln, rms):
        assert torch.equal(layer.weight0, torch.ones(16)) and torch.equal(layer.weight1, torch.ones(16))
        assert torch.equal(layer.weight_slope, torch.ones(16)) and torch.equal(layer.weight_offset, torch.zeros(16))
    assert torch.equal(ln.bias0, torch.zeros(16)) and torch.equal(ln.bias_slope, torch.ones(16))
    assert sorted(ln.state_dict()) == sorted(
        f"{p}{s}" for p in ("weight", "bias") for s in ("0", "1", "_slope", "_offset")
    )
    for name in NAMES:
        props = normact.info(name).properties
        assert props.smooth and not props.custom_backward and not props.batch_dependent


def test_low_precision_matches_float32():
    layer = normact.create("td_layernorm", 32)
    perturb(layer, scale=0.5)
    x = randn((4, 6, 32)).float()
    t = randn((4,), seed=9).float()
    y32 = layer.float()(x, t=t)
    for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 6e-2)):
        low = normact.create("td_layernorm", 32, dtype=dtype)
        low.load_state_dict(layer.state_dict())
        y = low(x.to(dtype), t=t.to(dtype))
        assert y.dtype == dtype
        assert (y.float() - y32).abs().max() < tol * y32.abs().max()
