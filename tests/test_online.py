"""Online Normalization (Chiley et al., 2019, arXiv:1905.05894) beyond the generic harness: hand-computed
recurrences of a 3-sample stream (forward and the backward accumulators), convergence of the streams on a
stationary input, eval as an affine map, a batch equal to the same samples streamed one at a time, the
accumulators carried across steps, gradcheck where the backward is exact, and the memory saved for backward."""

from __future__ import annotations

import math

import pytest
import torch

import normact
from normact.functional.online import linear_scan
from normact.testing.checks import snapshot
from tests.entries.online import ref_online_norm, ref_online_norm_grad
from tests.helpers import perturb

pytestmark = pytest.mark.usefixtures("float64")


def _hp(layer, training=True):
    return {
        "alpha_fwd": layer.alpha_fwd,
        "alpha_bkw": layer.alpha_bkw,
        "eps": layer.eps,
        "layer_scaling": layer.layer_scaling,
        "training": training,
    }


def _perturb(layer, seed=1):
    perturb(layer, seed, add=("running_mean", "error_1", "error_y"), mul=("running_var",))


def test_three_sample_stream_matches_hand_computed_recurrences():
    """alpha_f = alpha_b = 0.5, streams from (0, 1), accumulators from 0, one channel with two positions:
    samples [1, 3], [0, 2], [5, 5] have means 2, 1, 5 and variances 1, 1, 0."""
    eps = 1e-5
    layer = normact.create("online_norm", 1, alpha_fwd=0.5, alpha_bkw=0.5, eps=eps, affine=False)
    x = torch.tensor([[[1.0, 3.0]], [[0.0, 2.0]], [[5.0, 5.0]]], requires_grad=True)
    y = layer(x)
    # t=0: mu, var = 0, 1 -> mu = 0.5*0 + 0.5*2 = 1; var = 0.5*1 + 0.5*1 + 0.25*(2 - 0)^2 = 2
    # t=1: mu, var = 1, 2 -> mu = 0.5*1 + 0.5*1 = 1; var = 0.5*2 + 0.5*1 + 0.25*(1 - 1)^2 = 1.5
    # t=2: mu, var = 1, 1.5 -> mu = 0.5*1 + 0.5*5 = 3; var = 0.5*1.5 + 0.5*0 + 0.25*(5 - 1)^2 = 4.75
    s0, s1, s2 = math.sqrt(1 + eps), math.sqrt(2 + eps), math.sqrt(1.5 + eps)
    expected = torch.tensor([[[1 / s0, 3 / s0]], [[-1 / s1, 1 / s1]], [[4 / s2, 4 / s2]]])
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(layer.running_mean, torch.tensor([3.0]))
    torch.testing.assert_close(layer.running_var, torch.tensor([4.75]))
    # Backward, k = 1 - alpha_b = 0.5, incoming gradient g:
    g = torch.tensor([[[1.0, 0.0]], [[2.0, -1.0]], [[0.5, 0.5]]])
    y.backward(g)
    yv = expected[:, 0]
    # t=0: e_y = 0, e_1 = 0: x' = g0; e_y = mean(x' y0); x'' = x'/s0; e_1 = mean(x'')
    x1 = g[0, 0]
    ey = (x1 * yv[0]).mean()
    x2_0 = x1 / s0
    e1 = x2_0.mean()
    # t=1
    x1 = g[1, 0] - 0.5 * ey * yv[1]
    ey = ey + (x1 * yv[1]).mean()
    x2_1 = x1 / s1 - 0.5 * e1
    e1 = e1 + x2_1.mean()
    # t=2
    x1 = g[2, 0] - 0.5 * ey * yv[2]
    ey = ey + (x1 * yv[2]).mean()
    x2_2 = x1 / s2 - 0.5 * e1
    e1 = e1 + x2_2.mean()
    torch.testing.assert_close(x.grad, torch.stack([x2_0, x2_1, x2_2])[:, None])
    torch.testing.assert_close(layer.error_y, ey.reshape(1))
    torch.testing.assert_close(layer.error_1, e1.reshape(1))


def test_long_stationary_stream_converges_to_the_distribution():
    torch.manual_seed(0)
    mean, std = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, 3.0, 1.0])
    layer = normact.create("online_norm", 3, alpha_fwd=0.999)
    with torch.no_grad():
        for _ in range(60):
            layer(torch.randn(128, 3, 2, 2) * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1))
    # 7680 samples, 7.7 time constants of the 1000-sample window: the initial (0, 1) has decayed to e^-7.7
    torch.testing.assert_close(layer.running_mean, mean, atol=0.05 * std.max().item(), rtol=0)
    torch.testing.assert_close(layer.running_var, std**2, rtol=0.1, atol=0)
    # and the outputs of the same distribution are then standardized
    layer.eval()
    y = layer(torch.randn(4096, 3, 2, 2) * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1))
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=0.1, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3), atol=0.1, rtol=0)


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 6), (2, 4, 3, 3)])
def test_eval_is_the_affine_map_of_the_frozen_streams(shape):
    layer = normact.create("online_norm", 4)
    _perturb(layer)
    layer.eval()
    before = snapshot(layer)
    x1, x2 = torch.randn(shape) * 2 + 1, torch.randn(shape) - 3
    f = layer
    for a in (0.3, 2.0, -1.5):
        torch.testing.assert_close(f(a * x1 + (1 - a) * x2), a * f(x1) + (1 - a) * f(x2))
    view = (1, -1) + (1,) * (len(shape) - 2)
    want = (x1 - before["running_mean"].view(view)) / (before["running_var"].view(view) + layer.eps).sqrt()
    torch.testing.assert_close(f(x1), want * before["weight"].view(view) + before["bias"].view(view))
    for name, value in snapshot(layer).items():
        assert torch.equal(value, before[name]), f"{name} changed in eval"
    # plain autograd in eval: the exact gradient
    torch.autograd.gradcheck(lambda t: layer(t), (x1.clone().requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("layer_scaling", [False, True])
def test_training_steps_match_the_reference_with_accumulators_carried(layer_scaling):
    layer = normact.create("online_norm", 3, alpha_fwd=0.8, alpha_bkw=0.9, layer_scaling=layer_scaling)
    _perturb(layer)
    hp = _hp(layer)
    for step in range(3):
        g = torch.Generator().manual_seed(10 + step)
        x = torch.randn(4, 3, 2, 3, generator=g) + step
        grad_out = torch.randn(4, 3, 2, 3, generator=g)
        params = snapshot(layer)
        xg = x.clone().requires_grad_()
        y = layer(xg)
        want, buffers = ref_online_norm(x, params, hp)
        torch.testing.assert_close(y, want)
        for name, value in buffers.items():
            torch.testing.assert_close(getattr(layer, name), value)
        layer.zero_grad()
        y.backward(grad_out)
        grads = ref_online_norm_grad(x, grad_out, params, hp)
        torch.testing.assert_close(xg.grad, grads["input"])
        torch.testing.assert_close(layer.weight.grad, grads["weight"])
        torch.testing.assert_close(layer.bias.grad, grads["bias"])
        # the accumulators after the backward: the reference's recurrences, run again to their end
        k = 1 - hp["alpha_bkw"]
        ey, e1 = params["error_y"].clone(), params["error_1"].clone()
        centers, variances = params["running_mean"].clone(), params["running_var"].clone()
        # the gradient reaching the normalized output: through the affine (and layer scaling), exactly
        yl = _normalized_output(x, params, hp).requires_grad_()
        (gy,) = torch.autograd.grad(_affine_ls(yl, params, hp), yl, grad_out)
        yn = _normalized_output(x, params, hp)
        for t in range(x.shape[0]):
            m, v = x[t].mean((1, 2)), x[t].var((1, 2), correction=0)
            sigma = (variances + hp["eps"]).sqrt()
            x1 = gy[t].reshape(3, -1) - k * ey[:, None] * yn[t].reshape(3, -1)
            ey = ey + (x1 * yn[t].reshape(3, -1)).mean(-1)
            e1 = e1 + (x1 / sigma[:, None] - k * e1[:, None]).mean(-1)
            variances = hp["alpha_fwd"] * variances + (1 - hp["alpha_fwd"]) * v
            variances = variances + hp["alpha_fwd"] * (1 - hp["alpha_fwd"]) * (m - centers) ** 2
            centers = hp["alpha_fwd"] * centers + (1 - hp["alpha_fwd"]) * m
        torch.testing.assert_close(layer.error_y, ey)
        torch.testing.assert_close(layer.error_1, e1)


def _normalized_output(x, p, hp):
    """(x_t - mu_{t-1}) / sqrt(var_{t-1} + eps), streams run sample by sample (for the accumulator check)."""
    a, mu, var = hp["alpha_fwd"], p["running_mean"].clone(), p["running_var"].clone()
    out = []
    for t in range(x.shape[0]):
        out.append((x[t] - mu.view(-1, 1, 1)) / (var.view(-1, 1, 1) + hp["eps"]).sqrt())
        m, v = x[t].mean((1, 2)), x[t].var((1, 2), correction=0)
        var = a * var + (1 - a) * v + a * (1 - a) * (m - mu) ** 2
        mu = a * mu + (1 - a) * m
    return torch.stack(out)


def _affine_ls(y, p, hp):
    z = y * p["weight"].view(1, -1, 1, 1) + p["bias"].view(1, -1, 1, 1)
    return z / ((z**2).mean((1, 2, 3), keepdim=True) + hp["eps"]).sqrt() if hp["layer_scaling"] else z


def test_a_batch_is_its_samples_streamed_one_at_a_time():
    batched = normact.create("online_norm", 4, alpha_fwd=0.7, alpha_bkw=0.8)
    _perturb(batched)
    single = normact.create("online_norm", 4, alpha_fwd=0.7, alpha_bkw=0.8)
    single.load_state_dict(batched.state_dict())
    x = torch.randn(6, 4, 3) * 2 + 1
    g = torch.randn(6, 4, 3)
    xb = x.clone().requires_grad_()
    yb = batched(xb)
    yb.backward(g)
    ys, gs = [], []
    for t in range(6):
        xt = x[t : t + 1].clone().requires_grad_()
        yt = single(xt)
        yt.backward(g[t : t + 1])
        ys.append(yt.detach())
        gs.append(xt.grad)
    torch.testing.assert_close(yb, torch.cat(ys))
    torch.testing.assert_close(xb.grad, torch.cat(gs))
    for name, value in batched.state_dict().items():
        torch.testing.assert_close(single.state_dict()[name], value, msg=name)
    torch.testing.assert_close(single.weight.grad, batched.weight.grad)


def test_two_forwards_before_one_backward():
    """The accumulators are state, not saved tensors: a second graph's backward after the first has updated
    them is accepted."""
    layer = normact.create("online_norm", 3)
    x = torch.randn(4, 3, 5, requires_grad=True)
    loss = layer(x).square().sum() + layer(x + 1).square().sum()
    loss.backward()
    assert torch.isfinite(x.grad).all() and layer.error_1.abs().sum() > 0


def test_no_exact_mode_claimed_but_alpha_bkw_1_on_one_sample_is_the_true_gradient():
    """The paper's backward is exact in no setting the paper names. With alpha_bkw = 1 the control terms
    vanish (statistics treated as constants), which is the true derivative for a single sample: its
    normalization uses only the streams of earlier batches. gradcheck holds there, and fails for N > 1."""
    layer = normact.create("online_norm", 3, alpha_fwd=0.6, alpha_bkw=1.0)
    _perturb(layer)
    buffers = {k: v.clone() for k, v in layer.named_buffers()}

    def fresh(t):  # every gradcheck call from the same streams and accumulators
        with torch.no_grad():
            for k, v in layer.named_buffers():
                v.copy_(buffers[k])
        return layer(t)

    x1 = (torch.randn(1, 3, 2, 2) + 1).requires_grad_()
    assert torch.autograd.gradcheck(fresh, (x1,), fast_mode=True)
    x2 = (torch.randn(3, 3, 2, 2) + 1).requires_grad_()
    with pytest.raises(RuntimeError, match=r"(?i)jacobian"):
        torch.autograd.gradcheck(fresh, (x2,), fast_mode=True)


def _saved_bytes(fn, x):
    """Bytes of distinct storages autograd keeps for the backward of fn(x)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


def test_backward_keeps_one_activation_sized_tensor():
    """The paper claims no per-layer memory saving; its memory argument is that no batch is needed (networks
    whose activation memory rules out batching train at batch size 1, see test_a_batch_is_its_samples_streamed
    _one_at_a_time). What the layer keeps for its backward is measured here: the normalized output and the
    per-sample scales (as the official kernel saves ``out, scale``), one activation-sized tensor; plain
    autograd through the same streaming forward (the exact gradient) keeps at least two."""
    layer = normact.create("online_norm", 16, alpha_fwd=0.9)
    x = torch.randn(8, 16, 16, 16, requires_grad=True)
    act = x.numel() * x.element_size()
    custom = _saved_bytes(layer, x)

    def plain(t):
        a, eps = layer.alpha_fwd, layer.eps
        mu, var = layer.running_mean.clone(), layer.running_var.clone()
        out = []
        for i in range(t.shape[0]):
            out.append((t[i] - mu.view(-1, 1, 1)) / (var.view(-1, 1, 1) + eps).sqrt())
            m = t[i].mean((1, 2))
            v = (t[i] - m.view(-1, 1, 1)).square().mean((1, 2))
            var = a * var + (1 - a) * v + a * (1 - a) * (m - mu) ** 2
            mu = a * mu + (1 - a) * m
        return torch.stack(out) * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)

    baseline = _saved_bytes(plain, x)
    assert act <= custom < act * 1.05
    assert baseline >= 2 * act


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 8, 17])
def test_linear_scan_equals_the_sequential_recurrence(steps):
    g = torch.Generator().manual_seed(steps)
    a = torch.randn(steps, 4, generator=g)  # negative and large coefficients too
    b = torch.randn(steps, 4, generator=g)
    init = torch.randn(4, generator=g)
    s, want = init, []
    for t in range(steps):
        s = a[t] * s + b[t]
        want.append(s)
    torch.testing.assert_close(linear_scan(a, b, init), torch.stack(want))
    s, want = init, []
    for t in range(steps):
        s = 0.9 * s + b[t]
        want.append(s)
    torch.testing.assert_close(linear_scan(0.9, b, init), torch.stack(want))


def test_rejects_bad_arguments_and_input():
    with pytest.raises(ValueError, match="alpha_fwd"):
        normact.create("online_norm", 4, alpha_fwd=1.5)
    with pytest.raises(ValueError, match="alpha_bkw"):
        normact.create("online_norm", 4, alpha_bkw=-0.5)
    layer = normact.create("online_norm", 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        layer(torch.randn(2, 5))
    with pytest.raises(ValueError, match="at least one sample"):
        layer(torch.randn(0, 4))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_training_steps_under_torch_compile(backend):
    """Outputs, input and parameter gradients and every buffer over three steps, eager against compiled; the
    streams the forward reads are updated by the same forward (see normact.functional.online.read_state)."""
    eager = normact.create("online_norm", 4, alpha_fwd=0.5, alpha_bkw=0.7, layer_scaling=True)
    _perturb(eager)
    module = normact.create("online_norm", 4, alpha_fwd=0.5, alpha_bkw=0.7, layer_scaling=True)
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    try:
        for step in range(3):
            x = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(step)) * (1 + step) + step
            xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
            ye, yc = eager(xe), compiled(xc)
            torch.testing.assert_close(yc, ye)
            ye.square().sum().backward()
            yc.square().sum().backward()
            torch.testing.assert_close(xc.grad, xe.grad)
            torch.testing.assert_close(module.weight.grad, eager.weight.grad)
            for name, value in eager.state_dict().items():
                torch.testing.assert_close(module.state_dict()[name], value, msg=name)
    finally:
        torch._dynamo.reset()
