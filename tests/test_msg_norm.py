"""MsgNorm (DeeperGCN) beyond the generic harness: the norm identity of the paper and parity with PyG's
torch_geometric.nn.MessageNorm (skipped when torch_geometric is not importable)."""

from __future__ import annotations

import pytest
import torch

import normact


def _x(shape, seed=0, scale=1.5, offset=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset


@pytest.mark.parametrize("scale", [1.0, 0.37, 2.5])
def test_output_norm_is_scale_times_input_norm_per_node(scale):
    layer = normact.create("msg_norm", 16, dtype=torch.float64)
    with torch.no_grad():
        layer.scale.fill_(scale)
    x, msg = _x((50, 16)), _x((50, 16), seed=1)
    y = layer(x, msg)
    torch.testing.assert_close(y.norm(dim=-1), scale * x.norm(dim=-1))
    # the direction is the message's
    torch.testing.assert_close(y / y.norm(dim=-1, keepdim=True), msg / msg.norm(dim=-1, keepdim=True))


def test_zero_message_and_zero_features_give_zero_with_finite_gradients():
    layer = normact.create("msg_norm", 4, dtype=torch.float64)
    x = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    msg = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    y = layer(x, msg)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(msg.grad).all()


def test_learn_scale_false_keeps_a_fixed_buffer():
    layer = normact.create("msg_norm", 4, learn_scale=False)
    assert list(layer.parameters()) == []
    assert "scale" in dict(layer.named_buffers())
    assert "learn_scale=False" in repr(layer)


def test_messages_of_another_shape_are_rejected():
    layer = normact.create("msg_norm", 4)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        layer(torch.randn(3, 4), torch.randn(2, 4))


@pytest.mark.parametrize("learn_scale", [True, False])
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_matches_torch_geometric_message_norm(learn_scale, p):
    tg = pytest.importorskip("torch_geometric.nn")
    ref = tg.MessageNorm(learn_scale=learn_scale).double()
    with torch.no_grad():
        ref.scale.fill_(0.7)
    layer = normact.create("msg_norm", 16, learn_scale=learn_scale, p=p, dtype=torch.float64)
    missing, unexpected = layer.load_state_dict(ref.state_dict(), strict=True)  # the same state-dict keys
    assert not missing and not unexpected
    x, msg = _x((40, 16)), _x((40, 16), seed=3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ma, mb = msg.clone().requires_grad_(), msg.clone().requires_grad_()
    ya, yb = layer(xa, ma), ref(xb, mb, p=p)
    torch.testing.assert_close(ya, yb)
    g = _x((40, 16), seed=4)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ma.grad, mb.grad)
    if learn_scale:
        torch.testing.assert_close(layer.scale.grad, ref.scale.grad)
    # DeeperGCN's residual use: h + MsgNorm(h, m)
    torch.testing.assert_close(x + layer(x, msg), x + ref(x, msg, p=p))
