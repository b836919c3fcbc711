"""GPAS (Chen et al., 2025, arXiv:2506.22049; official code dandingsky/GPAS, GPASBlock in
peft_pretraining/modeling_llama.py): y = x - SiLU(alpha) sg(x). The forward is (1 - SiLU(alpha)) x, the input
gradient is the upstream gradient exactly, dL/dalpha = -SiLU'(alpha) <g, x>, alpha = 0 is the identity, and a
GPAS block at alpha = 0 is the plain Pre-LN block. The layer harness (tests/entries/gpas.py) checks ``gpas_block``
against a float64 reference for the pre, sandwich, DeepNorm and LayerNorm-Scaling placements."""

from __future__ import annotations

import math

import pytest
import torch

import normact
import normact.functional as NF
from normact.layers.block.gpas import GPAS
from normact.layers.block.transformer import PLACEMENTS, TransformerBlock

DIM, HEADS = 8, 2


def tokens(b=2, t=5, d=DIM, seed=0, dtype=torch.float64):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _silu(a):
    return a / (1.0 + math.exp(-a))


def _silu_prime(a):
    s = 1.0 / (1.0 + math.exp(-a))
    return s * (1.0 + a * (1.0 - s))


def _gpas(alpha, dtype=torch.float64):
    m = GPAS(dtype=dtype)
    with torch.no_grad():
        m.alpha.fill_(alpha)
    return m


@pytest.mark.parametrize("alpha", [-2.0, -0.4, 0.3, 1.5, 4.0])
def test_forward_is_one_minus_silu_alpha_times_x(alpha):
    x = tokens()
    y = _gpas(alpha)(x)
    # x - s x and (1 - s) x round differently: equal to a few ulps of x
    torch.testing.assert_close(y, (1.0 - _silu(alpha)) * x, rtol=4e-16, atol=4e-16 * x.abs().max().item())


@pytest.mark.parametrize("alpha", [-2.0, 0.0, 0.3, 1.5])
def test_input_gradient_is_the_upstream_gradient_exactly(alpha):
    x = tokens().requires_grad_(True)
    g = tokens(seed=1)
    (gx,) = torch.autograd.grad(_gpas(alpha)(x), x, g)
    assert torch.equal(gx, g)


@pytest.mark.parametrize("alpha", [-2.0, 0.0, 0.3, 1.5])
def test_alpha_gradient_is_minus_silu_prime_times_g_dot_x(alpha):
    m = _gpas(alpha)
    x, g = tokens(), tokens(seed=1)
    (ga,) = torch.autograd.grad(m(x), m.alpha, g)
    expected = -_silu_prime(alpha) * (g * x).sum().item()
    assert ga.item() == pytest.approx(expected, rel=1e-13, abs=1e-14)


def test_alpha_zero_is_the_identity_exactly():
    m = GPAS(dtype=torch.float64)
    assert m.alpha.item() == 0.0
    x = tokens()
    assert torch.equal(m(x), x)
    assert torch.equal(NF.gpas(x, torch.zeros((), dtype=torch.float64)), x)


def test_a_chain_of_gpas_scales_the_activations_not_the_gradients():
    """Ten GPAS at alpha = 1 divide the activations by (1 - SiLU(1))^-10 ~ 3e3, the gradient stays g: a plain
    scaling by the same factor would shrink the gradient by as much (the vanishing gradient GPAS avoids)."""
    layers = torch.nn.Sequential(*[_gpas(1.0) for _ in range(10)])
    x = tokens().requires_grad_(True)
    y = layers(x)
    torch.testing.assert_close(y, (1.0 - _silu(1.0)) ** 10 * x, rtol=1e-14, atol=1e-15)
    g = tokens(seed=1)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_keeps_the_dtype(dtype):
    m = _gpas(0.5, dtype=dtype)
    x = tokens(dtype=dtype)
    y = m(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), (1 - _silu(0.5)) * x.double(), rtol=2e-2, atol=2e-2)


def test_module_contract():
    m = GPAS(init=0.25, dtype=torch.float64)
    assert m.alpha.shape == () and m.alpha.dtype == torch.float64
    with torch.no_grad():
        m.alpha.fill_(3.0)
    m.reset_parameters()
    assert m.alpha.item() == 0.25
    assert "init=0.25" in repr(m)
    assert GPAS(device="meta").alpha.device.type == "meta"
    with pytest.raises(TypeError, match="float"):
        m(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="init"):
        GPAS(init=float("nan"))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = tokens()
    torch.testing.assert_close(compiled(x), m(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# in the transformer block


def _perturbed(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = normact.create(name, DIM, HEADS, dtype=torch.float64, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "gpas" not in n:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def test_gpas_block_at_alpha_zero_is_the_pre_ln_block_exactly():
    gp, pre = _perturbed("gpas_block"), _perturbed("pre_ln_block")
    assert gp.placement == "pre" and gp.attn_gpas is not None and gp.mlp_gpas is not None
    state = {k: v for k, v in gp.state_dict().items() if "gpas" not in k}
    assert all(torch.equal(v, pre.state_dict()[k]) for k, v in state.items())
    x, mask = tokens(), torch.ones(2, 5, dtype=torch.bool)
    mask[1, -2:] = False
    assert torch.equal(gp(x), pre(x))
    assert torch.equal(gp(x, mask), pre(x, mask))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = tokens(seed=3)
    (ga,) = torch.autograd.grad(gp(xa), xa, g)
    (gb,) = torch.autograd.grad(pre(xb), xb, g)
    assert torch.equal(ga, gb)


def test_gpas_after_each_residual_sum_of_the_pre_block():
    """h = G_a(x + A(N(x))), y = G_m(h + M(N(h))), each G with its own alpha (the paper's alpha_l per sub-layer)."""
    m = _perturbed("gpas_block", seed=2)
    with torch.no_grad():
        m.attn_gpas.alpha.fill_(0.8)
        m.mlp_gpas.alpha.fill_(-0.5)
    x = tokens()
    h = (1 - _silu(0.8)) * (x + m.attn(m.attn_norm(x)))
    y = (1 - _silu(-0.5)) * (h + m.mlp(m.mlp_norm(h)))
    torch.testing.assert_close(m(x), y, rtol=1e-13, atol=1e-13)


def test_gpas_on_the_shortcut_for_post_norm_placements():
    """DeepNorm + GPAS (the official deeppost_gpas): N(alpha G(x) + F(x)), the branch sees x unscaled."""
    m = _perturbed("deepnorm_block", seed=4, depth=4, gpas=True)
    with torch.no_grad():
        m.attn_gpas.alpha.fill_(1.2)
        m.mlp_gpas.alpha.fill_(0.4)
    x = tokens()
    h = m.attn_norm(m.alpha * (1 - _silu(1.2)) * x + m.attn(x))
    y = m.mlp_norm(m.alpha * (1 - _silu(0.4)) * h + m.mlp(h))
    torch.testing.assert_close(m(x), y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_gpas_fits_every_placement_and_is_the_identity_at_init(placement):
    torch.manual_seed(5)
    a = TransformerBlock(DIM, HEADS, placement=placement, depth=2, gpas=True, dtype=torch.float64)
    torch.manual_seed(5)
    b = TransformerBlock(DIM, HEADS, placement=placement, depth=2, dtype=torch.float64)
    x = tokens().requires_grad_(True)
    assert torch.equal(a(x), b(x))
    with torch.no_grad():
        a.attn_gpas.alpha.fill_(0.5)
    y = a(x)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and a.attn_gpas.alpha.grad is not None
    assert "gpas=True" in repr(a)


def test_gpas_option_is_checked_and_registered():
    with pytest.raises(TypeError, match="gpas"):
        TransformerBlock(DIM, HEADS, gpas="yes")
    info = normact.info("gpas_block")
    assert info.kind == "block" and info.paper.arxiv == "2506.22049" and info.properties.custom_backward
    assert dict(info.defaults) == {"placement": "pre", "gpas": True}
    m = normact.create("gpas_block", DIM, HEADS)
    assert {k for k in m.state_dict() if "gpas" in k} == {"attn_gpas.alpha", "mlp_gpas.alpha"}
