"""WideNet's shared block with individual norms (Xue et al., 2021, "Go Wider Instead of Deeper",
arXiv:2107.11817): the parameter count is the shared block plus L - 1 more copies of its norms (L x 2 LayerNorms x 2d
for a Pre-LN block), with every layer's norms equal the stack is the block applied L times (ALBERT's recurrence),
and each layer's norms act on that layer only."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import normact
from normact.layers.block.shared import SharedBlockStack, norm_submodules

DIM, HEADS = 8, 2


def tokens(b=2, t=5, d=DIM, seed=0):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def perturb(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def block(name="pre_ln_block", seed=0, **kwargs):
    torch.manual_seed(seed)
    return normact.create(name, DIM, HEADS, dtype=torch.float64, **kwargs)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("depth", [1, 2, 6])
def test_parameter_count_is_the_shared_block_plus_l_copies_of_its_norms(depth):
    b = block()
    norms = norm_submodules(b)
    assert norms == ("attn_norm", "mlp_norm")
    norm_params = sum(count(b.get_submodule(n)) for n in norms)
    assert norm_params == 2 * 2 * DIM  # two LayerNorms, gain and bias
    stack = SharedBlockStack(b, depth)
    assert count(stack) == (count(b) - norm_params) + depth * 2 * 2 * DIM
    assert len({id(p) for p in stack.parameters()}) == len(list(stack.parameters()))  # nothing counted twice
    assert len(stack.state_dict()) == len(b.state_dict()) + (depth - 1) * 4  # each tensor once


@pytest.mark.parametrize("name", ["pre_ln_block", "peri_ln_block", "deepnorm_block", "normformer_block"])
def test_equal_norms_make_it_the_recurrence_of_one_block(name):
    b = perturb(block(name, depth=3))
    stack = SharedBlockStack(b, 3)
    stack_norms = [stack.layer_modules(i) for i in range(3)]
    for layer in stack_norms[1:]:
        for path, m in layer.items():
            assert all(
                torch.equal(p, q) for p, q in zip(m.parameters(), b.get_submodule(path).parameters(), strict=True)
            )
    x = tokens()
    assert torch.equal(stack(x), b(b(b(x))))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, -2:] = False
    assert torch.equal(stack(x, mask), b(b(b(x, mask), mask), mask))


def test_each_layer_uses_its_own_norms():
    b = perturb(block())
    stack = perturb(SharedBlockStack(b, 3), seed=7)
    x = tokens()
    manual = x
    for i in range(3):
        layer = copy.deepcopy(b)
        for path, m in stack.layer_modules(i).items():
            layer.get_submodule(path).load_state_dict(m.state_dict())
        manual = layer(manual)
    torch.testing.assert_close(stack(x), manual, rtol=0, atol=0)
    assert not torch.allclose(stack(x), b(b(b(x))))


def test_gradients_reach_the_shared_weights_from_every_layer_and_each_layer_norm():
    stack = SharedBlockStack(perturb(block()), 3)
    stack(tokens()).square().mean().backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the shared projection's gradient is the sum over the three applications
    b = perturb(block())
    q = b.attn.q_proj.weight
    x = tokens()
    (g3,) = torch.autograd.grad(b(b(b(x))).square().mean(), q)
    stack2 = SharedBlockStack(b, 3)
    (g_stack,) = torch.autograd.grad(stack2(x).square().mean(), stack2.block.attn.q_proj.weight)
    torch.testing.assert_close(g_stack, g3, rtol=1e-12, atol=1e-14)


def test_reset_parameters_restores_equal_norms():
    b = block()
    stack = SharedBlockStack(b, 4)
    reference = {k: v.clone() for k, v in stack.state_dict().items()}
    perturb(stack)
    torch.manual_seed(0)
    stack.reset_parameters()
    for k, v in stack.state_dict().items():
        assert torch.equal(v, reference[k]), k
    # depth-scaled sandwich norm: copies take the block's c / sqrt(L) gains, not 1
    dssn = SharedBlockStack(block("sandwich_depth_scaled_block", depth=4), 4)
    dssn.reset_parameters()
    for i in range(4):
        gain = dssn.layer_modules(i)["attn_out_norm"].weight
        torch.testing.assert_close(gain, torch.full_like(gain, 0.5))


def test_serialization_and_compile():
    stack = SharedBlockStack(perturb(block()), 3)
    perturb(stack, seed=5)
    x = tokens()
    y = stack(x)
    buf = io.BytesIO()
    torch.save(stack.state_dict(), buf)
    buf.seek(0)
    fresh = SharedBlockStack(block(), 3)
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    for clone in (fresh, pickle.loads(pickle.dumps(stack)), copy.deepcopy(stack)):
        assert torch.equal(clone(x), y)
    compiled = torch.compile(stack, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), y, rtol=1e-12, atol=1e-12)


def test_running_statistics_are_per_layer():
    b = nn.Sequential(nn.Linear(4, 4, dtype=torch.float64), nn.BatchNorm1d(4, dtype=torch.float64))
    stack = SharedBlockStack(b, 3)
    assert stack.per_layer == ("1",)
    stack(torch.randn(16, 4, dtype=torch.float64))
    means = [stack.layer_modules(i)["1"].running_mean for i in range(3)]
    assert not torch.equal(means[0], means[1]) and not torch.equal(means[1], means[2])
    assert all(int(stack.layer_modules(i)["1"].num_batches_tracked) == 1 for i in range(3))


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        SharedBlockStack("pre_ln_block", 2)
    with pytest.raises(ValueError, match="depth"):
        SharedBlockStack(block(), 0)
    with pytest.raises(ValueError, match="no normalization"):
        SharedBlockStack(nn.Linear(4, 4), 2)
    with pytest.raises(ValueError, match="no submodule"):
        SharedBlockStack(block(), 2, per_layer=["attn_nrom"])
    with pytest.raises(ValueError, match="layer must be < depth"):
        SharedBlockStack(block(), 2).layer_modules(2)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        SharedBlockStack(block(), 2)(torch.randn(2, 5, 9, dtype=torch.float64))
    assert "depth=2" in repr(SharedBlockStack(block(), 2))
