"""Drop-in parity with torch.nn: same outputs, running statistics and state-dict keys as torch's layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normact


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=True)
    assert not missing and not unexpected


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layernorm(dtype):
    ref = _randomize(nn.LayerNorm((3, 8), eps=1e-4, dtype=dtype))
    ours = normact.create("layernorm", (3, 8), eps=1e-4, dtype=dtype)
    _copy_params(ref, ours)
    x = torch.randn(4, 5, 3, 8, dtype=dtype)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rmsnorm(eps):
    ref = _randomize(nn.RMSNorm(16, eps=eps))
    ours = normact.create("rmsnorm", 16, eps=eps)
    _copy_params(ref, ours)
    x = torch.randn(4, 7, 16)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize(
    ("name", "torch_cls", "shape"),
    [("batchnorm1d", nn.BatchNorm1d, (8, 5, 3)), ("batchnorm2d", nn.BatchNorm2d, (4, 5, 3, 3))],
)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_training_then_eval(name, torch_cls, shape, momentum):
    torch.manual_seed(0)
    ref = _randomize(torch_cls(5, momentum=momentum, dtype=torch.float64))
    ours = normact.create(name, 5, momentum=momentum, dtype=torch.float64)
    _copy_params(ref, ours)
    for _ in range(3):
        x = torch.randn(shape, dtype=torch.float64) * 2 + 1
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x))
    assert set(ours.state_dict()) == set(ref.state_dict())


def test_batchnorm_without_running_stats():
    ref = nn.BatchNorm2d(3, track_running_stats=False).eval()
    ours = normact.create("batchnorm2d", 3, track_running_stats=False).eval()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(ours(x), ref(x))


def test_groupnorm_channels_first_argument_order():
    ref = _randomize(nn.GroupNorm(4, 8))  # torch: (num_groups, num_channels)
    ours = normact.create("groupnorm", 8, num_groups=4)  # normact: channels first
    _copy_params(ref, ours)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("affine", [False, True])
def test_instancenorm(affine):
    ref = nn.InstanceNorm2d(4, affine=affine)
    if affine:
        _randomize(ref)
    ours = normact.create("instancenorm2d", 4, affine=affine)
    _copy_params(ref, ours)
    x = torch.randn(3, 4, 6, 6)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("relu", F.relu),
        ("gelu", F.gelu),
        ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
        ("silu", F.silu),
        ("mish", F.mish),
        ("swiglu", lambda x: F.silu(x[..., :8]) * x[..., 8:]),
        ("geglu", lambda x: F.gelu(x[..., :8]) * x[..., 8:]),
    ],
)
def test_activations_match_torch(name, fn):
    x = torch.randn(4, 16) * 3
    torch.testing.assert_close(normact.create(name)(x), fn(x))


def test_dyt_state_dict_keys_match_the_official_dynamic_tanh():
    # The official DynamicTanh stores alpha (shape (1,)), weight and bias.
    assert {k: tuple(v.shape) for k, v in normact.create("dyt", 8).state_dict().items()} == {
        "alpha": (1,),
        "weight": (8,),
        "bias": (8,),
    }
