"""Cross mini-Batch Normalization, CmBN (YOLOv4, arXiv:2004.10934) beyond the generic harness: accum_steps=1 is
torch's BatchNorm2d, the last of equal mini-batches sees the statistics of the whole batch, the pooling
restarts every accum_steps calls, and the accumulating path (which the harness cannot re-run, see
tests/entries/cross_batch.py) against the reference, gradients included, eager and compiled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normact
from normact.testing.checks import snapshot
from tests.entries.cross_batch import ref_cmbn
from tests.helpers import perturb_bn, randn

pytestmark = pytest.mark.usefixtures("float64")


def _perturbed(c, **kwargs):
    return perturb_bn(normact.create("cmbn", c, **kwargs))


def _hp(layer, training=True):
    return {
        "eps": layer.eps,
        "momentum": layer.momentum,
        "accum_steps": layer.accum_steps,
        "training": training,
    }


@pytest.mark.parametrize("momentum", [0.1, None])
def test_one_accumulation_step_is_batchnorm2d(momentum):
    cmbn = _perturbed(4, accum_steps=1, momentum=momentum)
    bn = nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(cmbn.weight)
        bn.bias.copy_(cmbn.bias)
        bn.running_mean.copy_(cmbn.running_mean)
        bn.running_var.copy_(cmbn.running_var)
    for step in range(3):
        x = randn((5, 4, 3, 3), seed=step, offset=step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = cmbn(xa), bn(xb)
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(cmbn.weight.grad, bn.weight.grad)
    torch.testing.assert_close(cmbn.bias.grad, bn.bias.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(cmbn, name), getattr(bn, name))
    cmbn.eval(), bn.eval()
    x = randn((2, 4, 3, 3), seed=9)
    torch.testing.assert_close(cmbn(x), bn(x))


@pytest.mark.parametrize(("shape", "steps"), [((3, 4, 2, 2), 4), ((4, 6), 3), ((2, 5, 7), 2)])
def test_last_of_equal_minibatches_has_the_statistics_of_the_whole_batch(shape, steps):
    layer = _perturbed(shape[1], accum_steps=steps)
    parts = [randn(shape, seed=s, offset=s - 1.0) for s in range(steps)]
    for part in parts[:-1]:
        layer(part)
    y_last = layer(parts[-1])
    whole = torch.cat(parts)
    dims = (0, *range(2, whole.dim()))
    torch.testing.assert_close(layer.accum_mean, whole.mean(dims))
    torch.testing.assert_close(layer.accum_var, whole.var(dims, correction=0))
    assert int(layer.accum_count) == whole.numel() // shape[1]
    # the output of the last mini-batch is BatchNorm (batch statistics of the concatenation) of that part
    bn = nn.BatchNorm1d(shape[1]) if whole.dim() < 4 else nn.BatchNorm2d(shape[1])
    with torch.no_grad():
        bn.weight.copy_(layer.weight)
        bn.bias.copy_(layer.bias)
    torch.testing.assert_close(y_last, bn(whole)[-shape[0] :])


def test_accumulation_restarts_every_accum_steps():
    steps = 3
    layer = _perturbed(4, accum_steps=steps)
    reference = _perturbed(4, accum_steps=1)  # a first mini-batch every call: BatchNorm statistics
    seen = []
    for call in range(2 * steps + 1):
        x = randn((4, 4, 2, 2), seed=call, offset=call)
        seen.append(int(layer.accum_step))
        y = layer(x)
        if call % steps == 0:  # a new optimizer batch: the earlier mini-batches are forgotten
            torch.testing.assert_close(y, reference(x))
            torch.testing.assert_close(layer.accum_mean, x.mean((0, 2, 3)))
            assert int(layer.accum_count) == x.numel() // 4
        else:
            reference(x)
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    layer(randn((4, 4, 2, 2), seed=20))
    layer.reset_accumulation()
    assert int(layer.accum_step) == 0 and int(layer.accum_count) == 0
    x = randn((4, 4, 2, 2), seed=21)
    torch.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize("sizes", [(4, 4, 4), (2, 5, 3, 6)])
def test_accumulating_path_matches_the_reference_with_gradients(sizes):
    """Unequal mini-batch sizes too (pooled by count). The gradient is the autograd gradient of the paper's
    pooled statistics with the earlier mini-batches' sums as constants."""
    layer = _perturbed(3, accum_steps=len(sizes) - 1, momentum=0.2)  # the last call starts a new batch
    hp = _hp(layer)
    for i, n in enumerate(sizes):
        x = randn((n, 3, 2, 3), seed=i, offset=2.0 * i)
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(50 + i))
        params = snapshot(layer)
        layer.zero_grad()
        xa = x.clone().requires_grad_()
        y = layer(xa)
        y.backward(g)
        xr = x.clone().requires_grad_()
        w = params["weight"].clone().requires_grad_()
        b = params["bias"].clone().requires_grad_()
        want, buffers = ref_cmbn(xr, {**params, "weight": w, "bias": b}, hp)
        torch.testing.assert_close(y, want)
        for name, value in buffers.items():
            torch.testing.assert_close(getattr(layer, name), value.to(getattr(layer, name).dtype), msg=name)
        gx, gw, gb = torch.autograd.grad(want, [xr, w, b], g)
        torch.testing.assert_close(xa.grad, gx)
        torch.testing.assert_close(layer.weight.grad, gw)
        torch.testing.assert_close(layer.bias.grad, gb)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_accumulating_path_under_torch_compile(backend):
    """The pooled moments the forward reads are updated by the same forward: compiled gradients must still
    use the values before the update (see normact.functional.online.read_state)."""
    eager = _perturbed(4, accum_steps=3)
    compiled_module = normact.create("cmbn", 4, accum_steps=3)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, backend=backend, fullgraph=True)
    try:
        for call in range(4):
            x = randn((3, 4, 2, 2), seed=call, offset=call)
            xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
            ye, yc = eager(xe), compiled(xc)
            torch.testing.assert_close(yc, ye)
            ye.square().sum().backward()
            yc.square().sum().backward()
            torch.testing.assert_close(xc.grad, xe.grad)
        for name, value in eager.state_dict().items():
            torch.testing.assert_close(compiled_module.state_dict()[name], value, msg=name)
    finally:
        torch._dynamo.reset()


def test_pooled_statistics_stay_accurate_far_from_zero_in_float32():
    """The pooled moments are kept as (count, mean, centered second moment): no E[x^2] - E[x]^2 cancellation
    for inputs with a large offset."""
    layer = normact.create("cmbn", 3, accum_steps=3, dtype=torch.float32)
    parts = [(randn((4, 3, 4, 4), seed=s, scale=1.0, offset=1e4)).float() for s in range(3)]
    for part in parts:
        layer(part)
    whole = torch.cat(parts).double()
    torch.testing.assert_close(layer.accum_var.double(), whole.var((0, 2, 3), correction=0), rtol=1e-4, atol=0)


def test_rejects_bad_arguments_and_input():
    with pytest.raises(ValueError, match="accum_steps"):
        normact.create("cmbn", 4, accum_steps=0)
    with pytest.raises(TypeError, match="accum_steps"):
        normact.create("cmbn", 4, accum_steps=1.5)
    layer = normact.create("cmbn", 4, accum_steps=1)
    with pytest.raises(ValueError, match="more than 1 value"):
        layer(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(2, 5, 3, 3))
    # with accumulation a one-value mini-batch is allowed (the pooled statistics cover the earlier ones)
    layer = normact.create("cmbn", 4, accum_steps=2)
    layer(torch.randn(3, 4))
    assert torch.isfinite(layer(torch.randn(1, 4))).all()
