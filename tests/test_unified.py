"""Identities of Unified Normalization (unified_norm) beyond the generic harness: the first training iteration,
the geometric-mean smoothing (AM-GM), the outlier filtration, folding into a preceding Linear in eval, pad-mask
independence, the compensated backward and its buffers over several steps, the exact path under plain
gradcheck, gradient accumulation, resumption from a state dict, and compile parity across the thresholds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normact
from normact.testing.checks import snapshot
from tests.entries.unified import forward_state, pad_mask_fn, reference_backward
from tests.helpers import randn

pytestmark = pytest.mark.usefixtures("float64")


def _hp(layer):
    return {
        "eps": layer.eps,
        "momentum": layer.momentum,
        "warmup_iters": layer.warmup_iters,
        "window_size": layer.window_size,
        "outlier_filtration": layer.outlier_filtration,
        "gradient_compensation": layer.gradient_compensation,
        "training": layer.training,
    }


def _mean_square(x, pad_mask=None):
    flat = x.reshape(-1, x.shape[-1])
    if pad_mask is not None:
        flat = flat[~pad_mask.reshape(-1)]
    return (flat**2).mean(0)


@pytest.mark.parametrize("shape", [(16, 5), (4, 6, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_first_iteration_normalizes_by_the_batch_mean_square(shape, masked):
    layer = normact.create("unified_norm", 5)
    x = randn(shape)
    mask = pad_mask_fn(shape, torch.Generator().manual_seed(3))["pad_mask"] if masked else None
    y = layer(x, pad_mask=mask)
    torch.testing.assert_close(y * torch.sqrt(_mean_square(x, mask) + layer.eps), x)
    assert int(layer.num_batches_tracked) == 1
    torch.testing.assert_close(layer.x2_window[-1], _mean_square(x, mask))
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * _mean_square(x, mask))  # official momentum 0.9


def test_the_smoothed_statistic_is_the_geometric_mean_and_at_most_the_arithmetic_mean():
    layer = normact.create("unified_norm", 5, window_size=4, warmup_iters=0)
    for step in range(8):
        x = randn((6, 4, 5), scale=1.0 + 0.3 * step, seed=step)
        y = layer(x)
        window = layer.x2_window
        geometric = torch.exp(torch.log(window).mean(0))
        arithmetic = window.mean(0)
        assert (geometric <= arithmetic + 1e-12).all()
        used = (x / y).square().mean((0, 1)) - layer.eps  # y = x / sqrt(var + eps)
        if step + 1 <= 4:  # t <= window: the batch statistic
            torch.testing.assert_close(used, _mean_square(x), rtol=1e-9, atol=1e-9)
        else:
            torch.testing.assert_close(used, geometric, rtol=1e-9, atol=1e-9)
            assert (used < arithmetic).all()  # the inputs' scale grows, so the window is not constant


def _warmed(outlier_filtration=True, steps=6, channels=4):
    layer = normact.create("unified_norm", channels, warmup_iters=0, outlier_filtration=outlier_filtration)
    for step in range(steps):
        layer(randn((8, 8, channels), seed=10 + step))
    return layer


def test_outlier_filtration_skips_an_outlier_batch():
    layer = _warmed()
    assert int(layer.num_skipped) == 0  # stationary batches are kept
    before = copy.deepcopy(layer)
    outlier = randn((8, 8, 4), scale=15.0, seed=99)
    x2 = _mean_square(outlier)
    window = before.x2_window
    candidate = torch.cat([window[1:], x2[None]])
    gap = candidate.mean(0) - torch.exp(torch.log(candidate).mean(0))
    assert (gap > 4 * torch.sqrt(window).var()).any()  # the rule of the official code triggers
    y = layer(outlier)
    assert int(layer.num_skipped) == 1
    # the window receives the running statistic, not the outlier's
    torch.testing.assert_close(layer.x2_window[-1], before.running_var)
    torch.testing.assert_close(layer.x2_window[:-1], window[1:])
    # the outlier batch is normalized by its own statistic, not the smoothed one
    torch.testing.assert_close(y, outlier / torch.sqrt(x2 + layer.eps))
    # without the filtration the same batch enters the window and is smoothed
    plain = _warmed(outlier_filtration=False)
    y_plain = plain(outlier)
    torch.testing.assert_close(plain.x2_window[-1], x2)
    assert not torch.allclose(y_plain, y)


def test_a_regular_batch_is_not_skipped():
    layer = _warmed()
    x = randn((8, 8, 4), seed=50)
    layer(x)
    assert int(layer.num_skipped) == 0
    torch.testing.assert_close(layer.x2_window[-1], _mean_square(x))


def test_eval_folds_into_the_preceding_linear_exactly():
    torch.manual_seed(0)
    linear = nn.Linear(7, 5)
    layer = normact.create("unified_norm", 5, warmup_iters=0)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    for step in range(6):
        layer(linear(randn((4, 3, 7), seed=step)).detach())
    layer.eval()
    x = randn((4, 3, 7), seed=20)
    expected = layer(linear(x))
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
    folded = nn.Linear(7, 5)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * scale[:, None])
        folded.bias.copy_(linear.bias * scale + layer.bias)
    torch.testing.assert_close(folded(x), expected, rtol=1e-12, atol=1e-12)
    # eval is a per-channel affine map: the batch does not matter
    torch.testing.assert_close(layer(linear(x[:1])), expected[:1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compensation", [True, False])
def test_padded_values_do_not_change_the_other_outputs(compensation):
    shape = (4, 6, 5)
    mask = pad_mask_fn(shape, torch.Generator().manual_seed(1))["pad_mask"]
    x = randn(shape)
    x_other = torch.where(mask[..., None], randn(shape, scale=50.0, seed=7), x)
    a = normact.create("unified_norm", 5, warmup_iters=0, gradient_compensation=compensation)
    for step in range(5):  # into the smoothed regime
        a(randn(shape, seed=30 + step), pad_mask=mask)
    b = copy.deepcopy(a)
    ya, yb = a(x, pad_mask=mask), b(x_other, pad_mask=mask)
    torch.testing.assert_close(ya[~mask], yb[~mask], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ya[mask], yb[mask])
    for (name, buf_a), buf_b in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(buf_a, buf_b, msg=name)


@pytest.mark.parametrize(
    ("kwargs", "masked"),
    [
        ({"warmup_iters": 0}, False),
        ({"warmup_iters": 0, "window_size": (3, 2), "momentum": 0.3}, True),
        ({"warmup_iters": 3, "window_size": 2}, True),
        ({"warmup_iters": 0, "outlier_filtration": True}, False),
        ({"warmup_iters": 0, "affine": False}, True),
    ],
)
def test_compensated_backward_and_its_buffers_follow_the_official_equations(kwargs, masked):
    layer = normact.create("unified_norm", 5, **kwargs)
    if layer.weight is not None:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
    hp = _hp(layer)
    for step in range(7):  # through t <= W, the warm-up and the windowed regime
        shape = (6, 3, 5)
        x = randn(shape, scale=1.0 + 0.5 * (step % 3), seed=step)
        mask = pad_mask_fn(shape, torch.Generator().manual_seed(step))["pad_mask"] if masked else None
        g = randn(shape, scale=1.0, offset=0.0, seed=100 + step)
        params = snapshot(layer)
        xg = x.clone().requires_grad_(True)
        y = layer(xg, pad_mask=mask)
        expected_y, _, _ = forward_state(x, params, hp, mask)
        torch.testing.assert_close(y, expected_y)
        y.backward(g)
        grads, buffers = reference_backward(x, g, params, hp, mask)
        torch.testing.assert_close(xg.grad, grads["input"])
        for name in ("weight", "bias"):
            if name in grads:
                torch.testing.assert_close(getattr(layer, name).grad, grads[name])
                getattr(layer, name).grad = None
        for name, want in buffers.items():
            torch.testing.assert_close(getattr(layer, name), want, msg=name)


def test_the_ratio_r_scales_the_backward_after_1000_iterations():
    layer = normact.create("unified_norm", 4, warmup_iters=0)
    x = randn((6, 3, 4))
    g = randn((6, 3, 4), scale=1.0, offset=0.0, seed=5)
    with torch.no_grad():
        layer.running_var.fill_(0.01)  # far below the batch statistic: r clamped at 5 once active
        layer.x2_window.fill_(2.5)
    results = {}
    for iteration in (999, 1000):  # t = 1000 (r = 1) and t = 1001 (r active)
        trial = copy.deepcopy(layer)
        trial.num_batches_tracked.fill_(iteration)
        params, hp = snapshot(trial), _hp(trial)
        xg = x.clone().requires_grad_(True)
        trial(xg).backward(g)
        _, state, _ = forward_state(x, params, hp)
        results[iteration] = state["r"]
        torch.testing.assert_close(xg.grad, reference_backward(x, g, params, hp)[0]["input"])
    torch.testing.assert_close(results[999], torch.ones(4))
    torch.testing.assert_close(results[1000], torch.full((4,), 5.0))


def test_compensation_is_not_the_exact_gradient_but_window_1_is():
    x = randn((5, 3, 4))
    g = randn((5, 3, 4), scale=1.0, offset=0.0, seed=2)
    grads = {}
    for name, kwargs in (("compensated", {}), ("exact", {"gradient_compensation": False}), ("w1", {"window_size": 1})):
        layer = normact.create("unified_norm", 4, **kwargs)
        xg = x.clone().requires_grad_(True)
        layer(xg).backward(g)
        grads[name] = xg.grad
    assert not torch.allclose(grads["compensated"], grads["exact"])
    torch.testing.assert_close(grads["w1"], grads["exact"])


def _stateless(layer, **kwargs):
    """The layer as a pure function of its inputs: every call starts from the same buffers."""
    state = copy.deepcopy(layer.state_dict())

    def fn(x, *params):
        layer.load_state_dict(state)
        names = [n for n, _ in layer.named_parameters()]
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x,), kwargs)

    return fn


@pytest.mark.parametrize(
    ("kwargs", "masked"),
    [
        ({"warmup_iters": 0, "gradient_compensation": False}, True),  # geometric mean, x2 differentiated
        ({"gradient_compensation": False}, False),  # warm-up: the batch statistic
        ({"warmup_iters": 0, "window_size": 1}, True),  # every batch skipped: the custom backward is exact
    ],
)
def test_exact_paths_pass_plain_gradcheck(kwargs, masked):
    layer = normact.create("unified_norm", 4, **kwargs)
    shape = (4, 3, 4)
    for step in range(5):
        layer(randn(shape, seed=40 + step))
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    mask = pad_mask_fn(shape, torch.Generator().manual_seed(4))["pad_mask"] if masked else None
    fn = _stateless(layer, pad_mask=mask)
    inputs = (randn(shape).requires_grad_(True), *[p.detach().clone().requires_grad_(True) for p in layer.parameters()])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_two_forward_passes_then_one_backward_pass():
    layer = normact.create("unified_norm", 4, warmup_iters=0)
    a, b = randn((3, 2, 4)).requires_grad_(True), randn((3, 2, 4), seed=1).requires_grad_(True)
    (layer(a).sum() + layer(b).sum()).backward()
    assert a.grad is not None and b.grad is not None
    assert int(layer.num_batches_tracked) == 2


def test_training_resumes_from_a_state_dict():
    kwargs = {"warmup_iters": 2, "window_size": 3, "outlier_filtration": True}
    a = normact.create("unified_norm", 4, **kwargs)
    for step in range(5):
        x = randn((4, 3, 4), seed=step).requires_grad_(True)
        a(x).backward(randn((4, 3, 4), offset=0.0, seed=60 + step))
    b = normact.create("unified_norm", 4, **kwargs)
    b.load_state_dict(a.state_dict())
    assert {"x2_window", "gz_window", "ema_gz", "num_batches_tracked", "num_skipped"} <= set(a.state_dict())
    for step in range(5, 8):
        x = randn((4, 3, 4), seed=step)
        g = randn((4, 3, 4), offset=0.0, seed=60 + step)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = a(xa), b(xb)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
    for (name, buf_a), buf_b in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(buf_a, buf_b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_size": 2, "warmup_iters": 0},
        {"window_size": 2, "warmup_iters": 3, "outlier_filtration": True},
        {"window_size": 2, "warmup_iters": 0, "gradient_compensation": False},
    ],
)
def test_compile_parity_over_steps_that_cross_the_thresholds(kwargs):
    """Several steps through t <= W, the warm-up and the smoothed regime (a single-step check cannot see a
    backward that reads buffers after the forward updated them)."""
    torch._dynamo.reset()
    eager = normact.create("unified_norm", 4, **kwargs)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True)
    mask = pad_mask_fn((6, 3, 4), torch.Generator().manual_seed(0))["pad_mask"]
    for step in range(6):
        x = randn((6, 3, 4), scale=1.0 + step, seed=step)
        g = randn((6, 3, 4), offset=0.0, seed=20 + step)
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ye, yc = eager(xe, pad_mask=mask), compiled(xc, pad_mask=mask)
        ye.backward(g)
        yc.backward(g)
        torch.testing.assert_close(yc, ye)
        torch.testing.assert_close(xc.grad, xe.grad)
    for (name, buf_e), buf_c in zip(eager.named_buffers(), compiled_module.buffers(), strict=True):
        torch.testing.assert_close(buf_c, buf_e, msg=name)
    torch._dynamo.reset()


def test_bad_pad_masks_are_rejected():
    layer = normact.create("unified_norm", 4)
    x = randn((3, 5, 4))
    with pytest.raises(TypeError, match=r"pad_mask must be a bool tensor of shape \(3, 5\)"):
        layer(x, pad_mask=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"pad_mask must have shape \(3, 5\)"):
        layer(x, pad_mask=torch.zeros(3, 4, dtype=torch.bool))


def test_low_precision_buffers_and_outputs():
    layer = normact.create("unified_norm", 4, warmup_iters=0).to(torch.bfloat16)
    for step in range(6):
        x = randn((8, 3, 4), seed=step).to(torch.bfloat16).requires_grad_(True)
        y = layer(x)
        y.float().sum().backward()
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert layer.running_var.dtype == torch.bfloat16 and torch.isfinite(layer.x2_window).all()
