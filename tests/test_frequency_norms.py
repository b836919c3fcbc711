"""PCNorm, CCNorm and SCNorm (Lee, Bae & Kim, CVPR 2023, arXiv:2303.02328) beyond the generic harness: the
spectral properties that define them (output phase = input phase, output amplitude = |F(BN(x))|, real output),
the identity configuration, the closed forms they reduce to (BatchNorm with a re-signed map mean; a mix of
InstanceNorm and identity), CCNorm's two limits (PCNorm and BatchNorm) at the default temperature, torch
BatchNorm2d parity of the running statistics, and finite gradients at zero amplitudes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normact
from tests.entries.frequency import _maps as tiered_maps
from tests.helpers import randn

pytestmark = pytest.mark.usefixtures("float64")


def _x(shape, scale=1.5, offset=0.0, seed=0):
    return randn(shape, scale, offset, seed)


def _maps(shape, seed=0):
    """Map means of one sign per channel in three tiers (see tests/entries/frequency.py): with N >= 3 some lie
    between 0 and the batch mean, where PCNorm differs from BatchNorm."""
    return tiered_maps(shape, torch.Generator().manual_seed(seed))


def _phasor(z):
    return z / z.abs()


def _torch_bn(x, layer):
    """torch's BatchNorm2d without affine, with the layer's (pre-forward) running statistics and mode."""
    rm = None if layer.running_mean is None else layer.running_mean.clone()
    rv = None if layer.running_var is None else layer.running_var.clone()
    return F.batch_norm(x, rm, rv, None, None, layer.training or rm is None, 0.0, layer.eps)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 6, 4), (3, 2, 5, 7), (5, 2, 1, 1)])
def test_pcnorm_keeps_the_input_phase_and_takes_the_bn_amplitude(train, shape):
    layer = normact.create("pcnorm", shape[1]).train(train)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    x = _maps(shape)
    bn = _torch_bn(x, layer)
    y = layer(x)  # weight 1, bias 0: the composed map itself
    assert y.dtype == x.dtype and not y.is_complex()
    fy, fx, fbn = torch.fft.fft2(y), torch.fft.fft2(x), torch.fft.fft2(bn)
    torch.testing.assert_close(fy.abs(), fbn.abs(), atol=1e-10, rtol=1e-10)
    nonzero = fy.abs() > 1e-8 * fy.abs().amax()
    assert nonzero.any()
    torch.testing.assert_close(_phasor(fy)[nonzero], _phasor(fx)[nonzero], atol=1e-10, rtol=0)
    if train:  # not vacuous: BN's own phase differs (at the zero frequency of the maps between 0 and mu)
        assert (_phasor(fbn) - _phasor(fx)).abs().amax() > 1.0


def test_the_composed_spectrum_is_that_of_a_real_map():
    x = _maps((3, 2, 5, 6))
    bn = F.batch_norm(x, None, None, training=True)
    full = torch.fft.ifft2(torch.fft.fft2(bn).abs() * _phasor(torch.fft.fft2(x)))
    assert full.imag.abs().max() < 1e-12
    layer = normact.create("pcnorm", 2, affine=False)
    torch.testing.assert_close(layer(x), full.real, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["pcnorm", "ccnorm"])
def test_identity_when_bn_is_the_identity(name):
    layer = normact.create(name, 3, eps=1e-5).eval()
    with torch.no_grad():
        layer.running_mean.zero_()
        layer.running_var.fill_(1 - layer.eps)  # sqrt(running_var + eps) = 1
        if name == "ccnorm":
            layer.mix_logit.fill_(-0.3)
    for x in (_x((2, 3, 5, 4), offset=1.0), _maps((2, 3, 3, 3)), _x((2, 3, 1, 1))):
        torch.testing.assert_close(layer(x), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("train", [True, False])
def test_pcnorm_is_batchnorm_with_re_signed_map_means(train):
    """Only the zero frequency differs from BN: each map's mean m becomes sign(m) |m - mu| / sigma."""
    layer = normact.create("pcnorm", 3, affine=False).train(train)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([3.0, -3.0, 1.0]))
        layer.running_var.copy_(torch.tensor([0.8, 1.5, 1.0]))
    x = _maps((5, 3, 4, 3), seed=3)
    bn = _torch_bn(x, layer)
    if train:
        mu, sigma = x.mean((0, 2, 3)), (x.var((0, 2, 3), correction=0) + layer.eps).sqrt()
    else:
        mu, sigma = layer.running_mean.clone(), (layer.running_var + layer.eps).sqrt()
    m = x.mean((2, 3), keepdim=True)
    new_mean = torch.sign(m) * (m - mu.view(1, -1, 1, 1)).abs() / sigma.view(1, -1, 1, 1)
    expected = bn - bn.mean((2, 3), keepdim=True) + new_mean
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=1e-12)
    assert (expected - bn).abs().amax() > 0.5  # the re-signed means are not BN's


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_and_eval_match_torch_batchnorm2d(momentum):
    layer = normact.create("pcnorm", 4, momentum=momentum)
    bn = nn.BatchNorm2d(4, momentum=momentum)
    bn.load_state_dict(layer.state_dict())  # torch's parameter and buffer names
    for step in range(3):
        x = _x((4, 4, 3, 5), offset=0.5 + step, seed=step)
        layer(x), bn(x)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer, name), getattr(bn, name))
    layer.eval(), bn.eval()
    x = _x((2, 4, 3, 5), offset=2.0, seed=9)  # positive map means: PCNorm = BN in eval as well
    assert (x.mean((2, 3)) > layer.running_mean).all()
    torch.testing.assert_close(layer(x), bn(x))


@pytest.mark.parametrize("train", [True, False])
def test_ccnorm_limits_are_batchnorm_and_pcnorm_at_the_default_temperature(train):
    x = _maps((4, 3, 5, 4), seed=5)
    cc = normact.create("ccnorm", 3)
    assert cc.temperature == 1e-6 and cc.mix_logit.item() == 0.0
    pc, bn = normact.create("pcnorm", 3), nn.BatchNorm2d(3)
    with torch.no_grad():
        for m in (cc, pc, bn):
            m.weight.copy_(torch.tensor([1.5, 0.5, -1.0]))
            m.bias.copy_(torch.tensor([0.2, -0.1, 0.3]))
    for m in (cc, pc, bn):
        m.train(train)
    with torch.no_grad():
        cc.mix_logit.fill_(1e-3)  # lambda = sigmoid(1000) = 1: BN's own phase
    torch.testing.assert_close(cc(x), bn(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(cc, name), getattr(bn, name))
    with torch.no_grad():
        cc.mix_logit.fill_(-1e-3)  # lambda = 0: the input's phase
        cc.load_state_dict({**cc.state_dict(), **{k: v for k, v in pc.state_dict().items() if "running" in k}})
    torch.testing.assert_close(cc(x), pc(x))


def test_ccnorm_initial_mix_is_one_half_and_moves_only_the_zero_frequency():
    x = _maps((4, 3, 5, 4), seed=6)
    cc, pc = normact.create("ccnorm", 3, affine=False), normact.create("pcnorm", 3, affine=False)
    y, y_pc = cc(x), pc(x)
    # away from the zero frequency every spectrum coefficient equals PCNorm's
    fy, fpc = torch.fft.fft2(y), torch.fft.fft2(y_pc)
    torch.testing.assert_close(fy[..., 1:, :], fpc[..., 1:, :], atol=1e-10, rtol=0)
    torch.testing.assert_close(fy[..., 0, 1:], fpc[..., 0, 1:], atol=1e-10, rtol=0)
    # at the zero frequency: |m - mu| / sigma with the sign of m - mu / 2
    mu = x.mean((0, 2, 3), keepdim=True)
    sigma = (x.var((0, 2, 3), correction=0, keepdim=True) + cc.eps).sqrt()
    m = x.mean((2, 3), keepdim=True)
    expected = torch.sign(m - mu / 2) * (m - mu).abs() / sigma
    torch.testing.assert_close(y.mean((2, 3), keepdim=True), expected)
    # not vacuous: some maps lie between mu / 2 and mu (differ from BN) and some between 0 and mu / 2 (from PCNorm)
    assert (torch.sign(m - mu / 2) != torch.sign(m - mu)).any() and (torch.sign(m - mu / 2) != torch.sign(m)).any()


def test_scnorm_is_a_mix_of_instance_norm_and_identity():
    x = _x((3, 4, 5, 6), offset=0.7)
    layer = normact.create("scnorm", 4)
    with torch.no_grad():
        layer.mix_logit.fill_(0.05)
        layer.weight.copy_(torch.tensor([1.0, 2.0, -0.5, 0.3]))
        layer.bias.copy_(torch.tensor([0.1, 0.0, -0.2, 0.4]))
    lam = torch.sigmoid(torch.tensor(0.05 / 0.1))
    inorm = F.instance_norm(x, eps=layer.eps)
    expected = (lam * inorm + (1 - lam) * x) * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    y = normact.create("scnorm", 4, affine=False)(x)  # the input's phase is kept
    fy, fx = torch.fft.fft2(y), torch.fft.fft2(x)
    torch.testing.assert_close(_phasor(fy), _phasor(fx), atol=1e-10, rtol=0)


def test_scnorm_limits_are_instancenorm_and_identity():
    x = _x((2, 3, 4, 5), offset=-0.4)
    layer = normact.create("scnorm", 3, temperature=1e-6)
    inorm = nn.InstanceNorm2d(3, affine=True)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        inorm.load_state_dict({"weight": layer.weight, "bias": layer.bias})
        layer.mix_logit.fill_(1e-3)
    torch.testing.assert_close(layer(x), inorm(x))
    with torch.no_grad():
        layer.mix_logit.fill_(-1e-3)
    torch.testing.assert_close(layer(x), x * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1))


def test_scnorm_is_the_same_in_training_and_evaluation():
    x = _x((2, 3, 4, 4), offset=0.5)
    layer = normact.create("scnorm", 3)
    y = layer(x)
    torch.testing.assert_close(layer.eval()(x), y)
    torch.testing.assert_close(layer(x[:1]), y[:1])  # no batch dependence


@pytest.mark.parametrize("name", ["pcnorm", "ccnorm", "scnorm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_amplitudes_give_finite_gradients(name, dtype):
    """Zero-mean maps (zero DC), an all-zero map and a map constant along one axis (a zero row of the spectrum)."""
    x = _x((3, 2, 4, 4))
    x = x - x.mean((2, 3), keepdim=True)
    x[1, 0] = 0.0
    x[2, 1] = torch.arange(4.0).view(1, 4).expand(4, 4)
    layer = normact.create(name, 2, **({"temperature": 1.0} if name == "ccnorm" else {})).to(dtype)
    xg = x.to(dtype).requires_grad_(True)
    y = layer(xg)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(xg.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("name", ["pcnorm", "ccnorm", "scnorm"])
def test_other_ranks_are_rejected_naming_the_layout(name):
    layer = normact.create(name, 4)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(3, 5, 5, 5))
