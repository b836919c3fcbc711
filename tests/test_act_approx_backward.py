"""ReGELU2, ReSiLU2 (Yang, Shi et al., 2024, arXiv:2406.16282) and HeLU (Kimhi et al., 2024, arXiv:2411.10573)
beyond the generic harness: the forward is bitwise the exact activation's (normact's GELU, torch's SiLU and ReLU)
in every dtype; the backward's levels, thresholds and their strict comparison are the official kernels'; the
memory claim (bytes saved for backward, measured with saved_tensors_hooks) against the plain torch activation; the
2-bit packing; second derivatives; and CUDA when available."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normact
import normact.functional as NF
from normact.functional import act_approx_backward as impl

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TORCH = {"regelu2": (nn.GELU, F.gelu), "resilu2": (nn.SiLU, F.silu)}  # the plain torch activations

# the official CUDA kernels, yyyyychen/LowMemoryBP lomem/csrc/regelu2_cuda.cu and resilu2_cuda.cu
OFFICIAL = {
    "regelu2": (
        (-0.04922261145617846, 1.0979632065417297, -0.048740595085551286),
        (-3.1858810036855245, -0.001178821281161997, 3.190832613414926),
    ),
    "resilu2": (
        (-0.04060357190528599, 1.080925428529668, -0.040321856624382146),
        (-6.3050461001646445, -0.0008684942046214787, 6.325815242089708),
    ),
}


def _x(shape, scale=4.0, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def _grad(module, x, grad_out=None):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y) if grad_out is None else grad_out)
    return y, g


def test_module_constants_are_the_official_kernels():
    assert OFFICIAL["regelu2"] == (impl.REGELU2_A, impl.REGELU2_C)
    assert OFFICIAL["resilu2"] == (impl.RESILU2_A, impl.RESILU2_C)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["regelu2", "resilu2"])
def test_forward_is_bitwise_the_exact_activation(name, dtype, device):
    """ReSiLU2's forward is torch's SiLU, ReGELU2's normact's GELU (the erfc form, accurate in the negative tail
    where torch's 1 + erf cancels), which agrees with torch's to rounding where that does not cancel."""
    x = _x((33, 17), dtype=dtype, device=device)
    y = normact.create(name)(x)
    assert y.dtype == dtype
    if name == "resilu2":
        assert torch.equal(y, F.silu(x)) and torch.equal(y, nn.SiLU()(x))
        return
    assert torch.equal(y, NF.gelu(x)) and torch.equal(y, normact.create("gelu")(x))
    moderate = x > -3
    tol = {torch.float64: 1e-15, torch.float32: 1e-6}.get(dtype, 1e-2)
    torch.testing.assert_close(y[moderate], F.gelu(x)[moderate], atol=tol, rtol=tol)


def test_regelu2_forward_keeps_relative_accuracy_in_the_negative_tail():
    """x Phi(x) at x = -5, -7, -9 in float32 (float64 reference): torch's 1 + erf form is 7% off, then 0. The
    relative condition number is about x^2 (81 at -9): rtol 1e-5 is about 80 float32 ulps."""
    x = torch.tensor([-5.0, -7.0, -9.0])
    want = x.double() * torch.special.erfc(-x.double() / math.sqrt(2)) / 2
    y = normact.create("regelu2")(x)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=0)
    assert (y < 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_helu_forward_is_bitwise_relu(dtype, device):
    x = _x((33, 17), dtype=dtype, device=device)
    for alpha in (0.0, 0.05, 1.0):
        assert torch.equal(normact.create("helu", alpha=alpha)(x), nn.ReLU()(x))


@pytest.mark.parametrize("name", ["regelu2", "resilu2"])
def test_backward_levels_are_the_partial_sums_and_end_at_exactly_one(name):
    """The derivative is piecewise constant with levels 0, a1, a1 + a2, a1 + a2 + a3 on the four intervals cut by
    c1 < c2 < c3; the last level is exactly 1 (float64, and float32 after rounding)."""
    a, c = OFFICIAL[name]
    levels = (0.0, a[0], a[0] + a[1], a[0] + a[1] + a[2])
    assert levels[3] == 1.0
    assert c[0] < c[1] < c[2]
    inner = [(c[0] + c[1]) / 2, (c[1] + c[2]) / 2]
    x = torch.tensor(
        [c[0] - 5, c[0] - 1e-9, inner[0], c[1] + 1e-9, inner[1], c[2] + 1e-9, c[2] + 7], dtype=torch.float64
    )
    _, g = _grad(normact.create(name), x)
    assert g.tolist() == [levels[0], levels[0], levels[1], levels[2], levels[2], levels[3], levels[3]]
    _, g32 = _grad(normact.create(name), x.float())
    assert g32[-1].item() == 1.0 and g32[0].item() == 0.0


def test_regelu2_levels_are_the_papers_rounded_values():
    _, g = _grad(normact.create("regelu2"), torch.tensor([-4.0, -1.0, 1.0, 4.0], dtype=torch.float64))
    assert g.tolist() == pytest.approx([0.0, -0.04922, 1.04874, 1.0], abs=5e-6)
    _, g = _grad(normact.create("resilu2"), torch.tensor([-7.0, -1.0, 1.0, 7.0], dtype=torch.float64))
    assert g.tolist() == pytest.approx([0.0, -0.04060, 1.04032, 1.0], abs=5e-6)


@pytest.mark.parametrize("name", ["regelu2", "resilu2"])
def test_thresholds_are_strict_as_in_the_official_flag(name):
    """flag = (x > c1) + (x > c2) + (x > c3): an input equal to a threshold takes the level below it."""
    a, c = OFFICIAL[name]
    _, g = _grad(normact.create(name), torch.tensor(c, dtype=torch.float64))
    assert g.tolist() == [0.0, a[0], a[0] + a[1]]


@pytest.mark.parametrize("name", ["regelu2", "resilu2"])
def test_backward_is_grad_out_times_the_step_derivative(name):
    """Random inputs and upstream gradients in float64 (exact) and float32/bfloat16 (one rounding)."""
    a, c = OFFICIAL[name]
    x = _x((16, 40), scale=5.0)
    grad_out = _x((16, 40), scale=1.0, seed=1)
    step = sum(ak * (x > ck).double() for ak, ck in zip(a, c, strict=True))
    _, g = _grad(normact.create(name), x, grad_out)
    torch.testing.assert_close(g, grad_out * step, rtol=0, atol=1e-15)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        _, g = _grad(normact.create(name), x.to(dtype), grad_out.to(dtype))
        assert g.dtype == dtype
        want = grad_out.to(dtype).double() * sum(
            ak * (x.to(dtype).double() > ck).double() for ak, ck in zip(a, c, strict=True)
        )
        torch.testing.assert_close(g.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize(("name", "bound"), [("regelu2", 0.16), ("resilu2", 0.26)])
def test_backward_is_the_derivative_of_a_relu_sum_close_to_the_forward(name, bound):
    """The approximation is real (the exact GELU/SiLU derivative is not what comes back), and it is the
    derivative of h(x) = sum_k a_k ReLU(x - c_k), a function within ``bound`` of the forward everywhere and equal
    to it in both tails (sum_k a_k c_k = 0, so h(x) = x beyond c3 and 0 below c1)."""
    torch_module, torch_fn = TORCH[name]
    a, c = OFFICIAL[name]
    x = _x((4000,), scale=2.0)
    _, g = _grad(normact.create(name), x)
    _, exact = _grad(torch_module(), x)
    assert (g - exact).abs().max() > 0.1
    assert abs(sum(ak * ck for ak, ck in zip(a, c, strict=True))) < 1e-15
    grid = torch.linspace(-30.0, 30.0, 600_001, dtype=torch.float64)
    h = sum(ak * torch.relu(grid - ck) for ak, ck in zip(a, c, strict=True))
    gap = (h - torch_fn(grid)).abs()
    assert gap.max() < bound
    assert gap[grid.abs() > 25].max() < 1e-9


@pytest.mark.parametrize("numel", [0, 1, 2, 3, 4, 5, 8, 13, 1001])
def test_two_bit_packing_round_trips(numel):
    g = torch.Generator().manual_seed(numel)
    code = torch.randint(0, 4, (numel,), generator=g, dtype=torch.uint8)
    packed = impl._pack2(code)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 4)
    assert torch.equal(impl._unpack2(packed, torch.Size([numel])), code)
    shaped = code.reshape(-1, 1) if numel else code.reshape(0, 3)
    assert torch.equal(impl._unpack2(impl._pack2(shaped), shaped.shape), shaped)


def _saved_bytes(module, x):
    """Bytes of the distinct storages autograd saves for the backward of ``module(x)`` (and their dtypes)."""
    storages: dict[int, tuple[int, torch.dtype]] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype)
        return t

    x = x.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    y.sum().backward()  # what was saved suffices
    assert torch.isfinite(x.grad).all()
    return sum(n for n, _ in storages.values()), {d for _, d in storages.values()}, x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["regelu2", "resilu2"])
def test_saves_two_bits_per_element(name, device):
    """float32: torch saves the 4-byte input per element, ReGELU2/ReSiLU2 a quarter byte (ratio 1/16 <= 1/4);
    bfloat16: ratio 1/8 (the paper's "x8 for 16-bit types")."""
    torch_module, _ = TORCH[name]
    n = 64 * 257  # not a multiple of 4 * 64: the padding byte counts
    for dtype, ratio in ((torch.float32, 1 / 16), (torch.bfloat16, 1 / 8)):
        x = _x((64, 257), dtype=dtype, device=device)
        ours, dtypes, _ = _saved_bytes(normact.create(name), x)
        theirs, _, _ = _saved_bytes(torch_module(), x)
        assert theirs >= n * x.element_size()
        assert dtypes == {torch.uint8} and ours == math.ceil(n / 4)
        assert ours / theirs <= 1 / 4
        assert ours / theirs == pytest.approx(ratio, rel=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_helu_saves_a_one_byte_mask_not_the_input(device):
    x = _x((64, 257), dtype=torch.float32, device=device)
    ours, dtypes, _ = _saved_bytes(normact.create("helu"), x)
    theirs, _, _ = _saved_bytes(nn.ReLU(), x)
    assert dtypes == {torch.bool} and ours == x.numel()
    assert ours / theirs <= 1 / 4


@pytest.mark.parametrize("name", ["regelu2", "resilu2", "helu"])
def test_input_storage_is_not_kept(name):
    saved = []
    x = _x((8, 9), dtype=torch.float32).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.untyped_storage().data_ptr()) or t, lambda t: t
    ):
        y = normact.create(name)(x)
    assert x.untyped_storage().data_ptr() not in saved
    assert y.untyped_storage().data_ptr() not in saved


def test_helu_gradient_is_the_hysteresis_mask():
    """alpha = 0.05 (official default): the gradient is 1 at x = -0.03 and 0 at x = -0.06; 1 for x > 0."""
    x = torch.tensor([-0.06, -0.05, -0.049, -0.03, 0.0, 0.02, 3.0], dtype=torch.float64)
    _, g = _grad(normact.create("helu"), x)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    grad_out = _x((7,), scale=1.0, seed=3)
    _, g = _grad(normact.create("helu", alpha=0.5), x, grad_out)
    assert torch.equal(g, grad_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_helu_with_alpha_zero_is_relu_including_at_zero(dtype):
    x = _x((20, 30), dtype=dtype)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, 1e-30]).to(dtype)
    grad_out = _x((20, 30), scale=1.0, seed=2, dtype=dtype)
    y, g = _grad(normact.create("helu", alpha=0.0), x, grad_out)
    y_ref, g_ref = _grad(nn.ReLU(), x, grad_out)
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)


@pytest.mark.parametrize("name", ["regelu2", "resilu2", "helu"])
def test_second_derivative(name):
    """The backward is linear in the upstream gradient (d/d grad_out = the step level) and piecewise constant in x
    (d/dx = 0): double backward works and gives exactly that."""
    x = _x((50,), scale=3.0).requires_grad_(True)
    y = normact.create(name)(x)
    grad_out = torch.ones_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, grad_out, create_graph=True)
    gg_x, gg_out = torch.autograd.grad(g.sum(), [x, grad_out], allow_unused=True)
    assert gg_x is None or torch.equal(gg_x, torch.zeros_like(x))
    assert torch.equal(gg_out, g.detach())


@pytest.mark.parametrize("name", ["regelu2", "resilu2", "helu"])
def test_functional_matches_module_and_rejects_bad_input(name):
    fn = getattr(NF, name)
    x = _x((5, 6))
    assert torch.equal(fn(x), normact.create(name)(x))
    with pytest.raises(TypeError, match="float"):
        fn(torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError):
        fn([1.0, 2.0])
    if name == "helu":
        with pytest.raises(ValueError, match="alpha"):
            NF.helu(x, -0.1)


@pytest.mark.parametrize("name", ["regelu2", "resilu2", "helu"])
def test_registry_properties(name):
    p = normact.info(name).properties
    assert p.custom_backward and not p.batch_dependent and not p.stateful and not p.gated
    assert p.bounded_below
    assert p.smooth == (name != "helu") and p.monotonic == (name == "helu") and p.self_gated == (name != "helu")


@pytest.mark.parametrize("name", ["regelu2", "resilu2"])
def test_gaussian_moments_are_those_of_the_exact_forward(name):
    torch_name = {"regelu2": "gelu", "resilu2": "silu"}[name]
    assert normact.gaussian_moments(name) == normact.gaussian_moments(torch_name)


@pytest.mark.parametrize("name", ["regelu2", "resilu2", "helu"])
def test_compiled_backward_matches_eager(name):
    """Dynamo + AOTAutograd capture the custom Function (fullgraph) with the same output and gradient."""
    torch._dynamo.reset()
    module = normact.create(name)
    compiled = torch.compile(normact.create(name), backend="aot_eager", fullgraph=True)
    x = _x((7, 9), dtype=torch.float32)
    y, g = _grad(module, x)
    yc, gc = _grad(compiled, x)
    assert torch.equal(y, yc) and torch.equal(g, gc)
    torch._dynamo.reset()
