"""MS-LN and MS-RMSNorm (Yang, Shi et al., 2024, arXiv:2406.16282) beyond the generic harness: torch parity of
outputs and of every gradient, the memory claim (one activation fewer saved in Linear -> norm -> Linear, measured
with saved_tensors_hooks), proof that the input is not saved, low-precision gradients, second derivatives, and
the exact folding of the affine into the following linear layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normact
from normact.layers.norm.memory_sharing import MSLayerNorm, MSRMSNorm, merge_affine_into
from tests.helpers import perturb, randn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _grads(module, x, grad_out):
    x = x.clone().requires_grad_(True)
    y = module(x)
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(y, [x, *params], grad_out)
    return y, grads


# ------------------------------------------------------------------------------------------ torch parity

PARITY = [
    ("ms_layernorm", lambda s, **kw: nn.LayerNorm(s, **kw), {}, (4, 16), 16),
    ("ms_layernorm", lambda s, **kw: nn.LayerNorm(s, **kw), {"elementwise_affine": True}, (2, 5, 16), 16),
    ("ms_layernorm", lambda s, **kw: nn.LayerNorm(s, **kw), {"elementwise_affine": True, "bias": False}, (3, 16), 16),
    (
        "ms_layernorm",
        lambda s, **kw: nn.LayerNorm(s, **kw),
        {"elementwise_affine": True, "eps": 1e-3},
        (2, 3, 8),
        (3, 8),
    ),
    ("ms_rmsnorm", lambda s, **kw: nn.RMSNorm(s, **kw), {"eps": 1e-5}, (4, 16), 16),
    ("ms_rmsnorm", lambda s, **kw: nn.RMSNorm(s, **kw), {"elementwise_affine": True, "eps": 1e-5}, (2, 5, 16), 16),
    ("ms_rmsnorm", lambda s, **kw: nn.RMSNorm(s, **kw), {"elementwise_affine": True, "eps": None}, (3, 2, 8), (2, 8)),
]


@pytest.mark.parametrize(("name", "torch_cls", "kwargs", "shape", "normalized_shape"), PARITY)
def test_outputs_and_all_gradients_equal_torch(name, torch_cls, kwargs, shape, normalized_shape):
    """float64: output, input gradient and parameter gradients equal torch.nn.LayerNorm/RMSNorm to 1e-10."""
    ours = normact.create(name, normalized_shape, dtype=torch.float64, **kwargs)
    theirs = torch_cls(normalized_shape, dtype=torch.float64, **{"elementwise_affine": False, **kwargs})
    perturb(ours)
    theirs.load_state_dict(ours.state_dict())  # torch's keys, both ways
    x = randn(shape)
    grad_out = randn(shape, scale=1.0, offset=0.0, seed=2)
    ya, ga = _grads(ours, x, grad_out)
    yb, gb = _grads(theirs, x, grad_out)
    torch.testing.assert_close(ya, yb, atol=1e-10, rtol=1e-10)
    assert len(ga) == len(gb)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["ms_layernorm", "ms_rmsnorm"])
def test_second_derivatives_equal_torch(name):
    """Double backward (the saved output and 1/sigma are outputs of the autograd function, so their own
    dependence on x is differentiated) equals torch's."""
    torch_norm = nn.LayerNorm(8, dtype=torch.float64) if name == "ms_layernorm" else nn.RMSNorm(8, eps=1e-5)
    torch_norm = torch_norm.double()
    ours = normact.create(name, 8, elementwise_affine=True, dtype=torch.float64)
    perturb(ours)
    torch_norm.load_state_dict(ours.state_dict())
    x = randn((3, 8))
    v = randn((3, 8), seed=3, offset=0.0)
    hv = []
    for module in (ours, torch_norm):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((module(xr) ** 3).sum(), xr, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), xr)
        hv.append(h)
    torch.testing.assert_close(hv[0], hv[1], atol=1e-10, rtol=1e-10)


# ------------------------------------------------------------------------------------------ memory


def _saved_bytes(module, x):
    """Bytes saved for backward by ``module(x)``: unique storages (by data_ptr) of every saved tensor."""
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    return sum(storages.values()), y


def _block(norm, c, dtype, device):
    return nn.Sequential(nn.Linear(c, c), norm, nn.Linear(c, c)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ms_layernorm_saves_one_activation_less_than_layernorm(dtype, device):
    """Linear -> norm -> Linear: MS-LN saves one activation tensor less than torch.nn.LayerNorm (its input);
    the rest of the difference is LayerNorm's per-row mean and its affine (rows * 4 + 2 C elements)."""
    n, c = 512, 64
    x = randn((8, n // 8, c), dtype=dtype).to(device).requires_grad_(True)
    activation = n * c * x.element_size()
    ms_bytes, y_ms = _saved_bytes(_block(MSLayerNorm(c), c, dtype, device), x)
    ln_bytes, _ = _saved_bytes(_block(nn.LayerNorm(c), c, dtype, device), x)
    ratio = (ln_bytes - ms_bytes) / activation
    assert 0.95 <= ratio <= 1.1, f"LayerNorm saves {ln_bytes} B, MS-LN {ms_bytes} B: {ratio:.3f} activations apart"
    assert ms_bytes / ln_bytes < 0.8
    y_ms.float().sum().backward()  # the saved tensors suffice for the backward
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ms_rmsnorm_saves_at_least_one_activation_less_than_rmsnorm(dtype, device):
    """torch.nn.RMSNorm saves its input (and, depending on the kernel, float32 intermediates): MS-RMSNorm saves
    at least one activation less, and in the block only the two linear inputs (one shared with the norm), the
    two weights and 1/rms."""
    n, c = 512, 64
    x = randn((8, n // 8, c), dtype=dtype).to(device).requires_grad_(True)
    activation = n * c * x.element_size()
    ms_bytes, _ = _saved_bytes(_block(MSRMSNorm(c), c, dtype, device), x)
    rms_bytes, _ = _saved_bytes(_block(nn.RMSNorm(c, eps=1e-5, elementwise_affine=False), c, dtype, device), x)
    assert (rms_bytes - ms_bytes) / activation >= 0.95
    expected = 2 * activation + 2 * c * c * x.element_size() + n * 4  # x, shared output, W1, W2, rstd (float32)
    assert ms_bytes == expected


def test_affine_breaks_sharing_and_merging_restores_it():
    """With elementwise_affine=True the block saves about as much as with torch.nn.LayerNorm (documented: no gain);
    after merge_affine_into(next linear) it saves one activation less, with the same outputs."""
    n, c = 512, 64
    x = randn((n, c), dtype=torch.float32).requires_grad_(True)
    activation = n * c * 4
    norm = MSLayerNorm(c, elementwise_affine=True)
    perturb(norm)
    block = _block(norm, c, torch.float32, "cpu")
    ln_bytes, _ = _saved_bytes(_block(nn.LayerNorm(c), c, torch.float32, "cpu"), x)
    affine_bytes, y_affine = _saved_bytes(block, x)
    assert abs(ln_bytes - affine_bytes) / activation < 0.1
    merge_affine_into(norm, block[2])
    assert norm.weight is None and norm.bias is None and not norm.elementwise_affine
    merged_bytes, y_merged = _saved_bytes(block, x)
    assert 0.95 <= (ln_bytes - merged_bytes) / activation <= 1.1
    torch.testing.assert_close(y_merged, y_affine, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["ms_layernorm", "ms_rmsnorm"])
def test_backward_does_not_read_the_input(name):
    """The input is not saved: changing it in place after the forward leaves the gradient exact (torch's norms
    save it and refuse), and the norm's saved activation is its own output."""
    x = randn((4, 16))
    grad_out = randn((4, 16), seed=5, offset=0.0)
    ms = normact.create(name, 16, dtype=torch.float64)
    reference = nn.LayerNorm(16, elementwise_affine=False) if name == "ms_layernorm" else nn.RMSNorm(16, eps=1e-5)
    reference = reference.double()
    leaf = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(reference(leaf), leaf, grad_out)

    leaf = x.clone().requires_grad_(True)
    h = leaf * 1.0  # a non-leaf we may modify in place
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ms(h)
    assert h.untyped_storage().data_ptr() not in saved
    assert y.untyped_storage().data_ptr() in saved
    with torch.no_grad():
        h.mul_(-3.0).add_(100.0)
    (got,) = torch.autograd.grad(y, leaf, grad_out)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)

    h = x.clone().requires_grad_(True) * 1.0
    y = reference(h)
    with torch.no_grad():
        h.add_(1.0)
    with pytest.raises(RuntimeError, match="inplace"):
        y.backward(grad_out)


# ------------------------------------------------------------------------------------------ low precision


@pytest.mark.parametrize("name", ["ms_layernorm", "ms_rmsnorm"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_low_precision_gradients_close_to_float32(name, dtype, tol):
    """float16/bfloat16 input and parameter gradients (computed from the rounded saved output and the float32
    1/sigma) are close to the float32 ones, also for |x| ~ 1e4, relative to the gradient's scale."""
    for scale, offset in ((1.5, 0.5), (3e3, 1e4)):
        x32 = randn((6, 64), scale=scale, offset=offset, dtype=torch.float32).to(dtype).float()
        grad_out = randn((6, 64), seed=7, offset=0.0, dtype=torch.float32)
        ref = normact.create(name, 64, elementwise_affine=True)
        perturb(ref)
        low = normact.create(name, 64, elementwise_affine=True)
        low.load_state_dict(ref.state_dict())
        low = low.to(dtype)
        _, g32 = _grads(ref, x32, grad_out)
        y16, g16 = _grads(low, x32.to(dtype), grad_out.to(dtype))
        assert y16.dtype == dtype
        for a, b in zip(g16, g32, strict=True):
            assert a.dtype == dtype
            err = (a.float() - b).abs().max() / b.abs().max()
            assert err < tol, f"{name} {dtype} scale {scale}: relative gradient error {err:.2e}"


# ------------------------------------------------------------------------------------------ merging the affine


def test_merge_affine_into_several_linears_is_exact():
    """LN -> (q, k, v) with gamma/beta folded into each: same outputs (float64); a bias-free linear gets a bias."""
    torch.manual_seed(0)
    c = 12
    norm = MSLayerNorm(c, elementwise_affine=True, dtype=torch.float64)
    perturb(norm)
    linears = [nn.Linear(c, 5, dtype=torch.float64), nn.Linear(c, 7, bias=False, dtype=torch.float64)]
    x = randn((3, 4, c))
    before = [lin(norm(x)) for lin in linears]
    returned = norm.merge_affine_into(*linears)
    assert returned is norm and norm.weight is None and norm.bias is None
    assert "weight" not in norm.state_dict() and linears[1].bias is not None
    after = [lin(norm(x)) for lin in linears]
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_merge_affine_from_a_pretrained_torch_layernorm_and_rmsnorm():
    """The recipe of the docstring: load a torch.nn.LayerNorm/RMSNorm state dict, merge into the next linear."""
    for torch_norm, ms in (
        (nn.LayerNorm((2, 4), dtype=torch.float64), MSLayerNorm((2, 4), elementwise_affine=True, dtype=torch.float64)),
        (nn.RMSNorm(8, eps=1e-5, dtype=torch.float64), MSRMSNorm(8, elementwise_affine=True, dtype=torch.float64)),
    ):
        perturb(torch_norm)
        lin = nn.Linear(8, 3, dtype=torch.float64)
        x = randn((5, 2, 4)) if isinstance(torch_norm, nn.LayerNorm) else randn((5, 8))
        want = lin(torch_norm(x).reshape(5, 8))
        ms.load_state_dict(torch_norm.state_dict())
        ms.merge_affine_into(lin)
        torch.testing.assert_close(lin(ms(x).reshape(5, 8)), want, atol=1e-12, rtol=1e-12)


def test_merge_affine_into_rejects_bad_targets():
    norm = MSLayerNorm(8, elementwise_affine=True)
    with pytest.raises(ValueError, match="at least one"):
        norm.merge_affine_into()
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        norm.merge_affine_into(nn.Conv1d(8, 8, 1))
    with pytest.raises(ValueError, match="in_features=9"):
        norm.merge_affine_into(nn.Linear(9, 3))
    assert norm.weight is not None  # nothing merged on error


def test_registry_metadata_and_defaults():
    for name, cls in (("ms_layernorm", MSLayerNorm), ("ms_rmsnorm", MSRMSNorm)):
        info = normact.info(name)
        assert info.cls is cls
        assert info.properties.custom_backward and info.properties.smooth
        assert not info.properties.batch_dependent
        layer = normact.create(name, 16)
        assert layer.weight is None and layer.eps == 1e-5  # the paper's / official affine-free layer
    with pytest.raises(ValueError, match="normalized_shape"):
        MSLayerNorm(8)(torch.randn(2, 9))
