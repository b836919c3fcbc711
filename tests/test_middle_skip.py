"""The middle-skip stack of "Learning to Skip the Middle Layers of Transformers" (Lawson & Aitchison, 2025,
arXiv:2506.21103; code tim-lawson/skip-middle): gates of 1 reproduce the dense stack exactly, a gate of 0 over a span
makes those blocks exact identities (per token), the gates are symmetric about the middle and non-increasing toward
it, gated attention hides skipped positions, and the sparsity regularizer's pieces follow the official code."""

from __future__ import annotations

import math

import pytest
import torch

import normact
import normact.functional as NF
from normact.layers.block.skip import MiddleSkipStack

DIM, HEADS = 8, 2


def tokens(b=2, t=6, d=DIM, seed=0, dtype=torch.float64):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def blocks(depth=4, name="peri_ln_block", seed=0, **kwargs):
    out = []
    g = torch.Generator().manual_seed(seed + 100)
    for i in range(depth):
        torch.manual_seed(seed + i)
        b = normact.create(name, DIM, HEADS, dtype=torch.float64, **kwargs)
        with torch.no_grad():
            for p in b.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out.append(b)
    return out


def padding():
    m = torch.ones(2, 6, dtype=torch.bool)
    m[1, -2:] = False
    return m


def dense(bs, x, mask=None):
    for b in bs:
        x = b(x, mask)
    return x


@pytest.mark.parametrize("gated_attention", [True, False])
@pytest.mark.parametrize(("name", "kwargs"), [("peri_ln_block", {"causal": True}), ("pre_ln_block", {}),
                                              ("normformer_block", {"causal": True, "rope": True})])  # fmt: skip
def test_gates_of_one_reproduce_the_dense_stack_exactly(gated_attention, name, kwargs):
    bs = blocks(4, name, **kwargs)
    stack = MiddleSkipStack(bs, gated_attention=gated_attention, router_std=0.0, dtype=torch.float64)
    x = tokens()
    y, gates = stack(x, return_gates=True)
    assert torch.equal(gates, torch.ones(4, 2, 6, dtype=torch.float64))
    assert torch.equal(y, dense(bs, x))
    assert torch.equal(stack(x, padding()), dense(bs, x, padding()))


@pytest.mark.parametrize("depth", [4, 6, 8])
def test_a_gate_of_zero_over_the_span_makes_those_blocks_identities(depth):
    """Router k's bias 1 saturates S from block k on: blocks k .. L-1-k get gate 0 for every token, and the stack is
    the dense stack of the other blocks."""
    bs = blocks(depth, causal=True)
    stack = MiddleSkipStack(bs, router_std=0.0, dtype=torch.float64)
    k = 1
    with torch.no_grad():
        stack.routers[k].bias.fill_(1.0)
    x = tokens()
    y, gates = stack(x, return_gates=True)
    span = list(range(k, depth - k))
    assert torch.equal(gates[span], torch.zeros_like(gates[span]))
    kept = [b for i, b in enumerate(bs) if i not in span]
    assert torch.equal(y, dense(kept, x))


def test_per_token_skipping_leaves_skipped_tokens_unchanged():
    bs = blocks(2, causal=True)
    stack = MiddleSkipStack(bs, router_std=0.0, dtype=torch.float64)
    x = tokens()
    g = torch.tensor([[1.0, 0.0, 0.5, 0.0, 1.0, 0.25], [0.0, 1.0, 0.0, 0.0, 0.75, 0.0]], dtype=torch.float64)
    y = stack._block(bs[0], x, g, None)
    skipped = g == 0
    assert torch.equal(y[skipped], x[skipped])
    assert not torch.isclose(y[~skipped], x[~skipped]).all(-1).any()


def test_gates_are_symmetric_and_non_increasing_toward_the_middle():
    stack = MiddleSkipStack(blocks(8), router_std=0.5, dtype=torch.float64)
    torch.manual_seed(3)
    stack.reset_parameters()
    with torch.no_grad():
        for r in stack.routers:
            r.bias.fill_(-0.2)
    _, gates = stack(tokens(), return_gates=True)
    assert torch.equal(gates, gates.flip(0))
    assert (gates[1:4] <= gates[:3]).all()
    assert ((gates > 0) & (gates < 1)).any()  # soft gates somewhere
    assert ((gates >= 0) & (gates <= 1)).all()


def test_the_gates_follow_the_accumulated_relu_routers():
    bs = blocks(4)
    stack = MiddleSkipStack(bs, router_std=0.3, dtype=torch.float64)
    x = tokens()
    _, gates = stack(x, return_gates=True)
    s0 = torch.relu(stack.routers[0](x)).squeeze(-1)
    g0 = 1 - s0.clamp(0, 1)
    h1 = stack._block(bs[0], x, g0, None)
    s1 = torch.relu(stack.routers[1](h1)).squeeze(-1)
    torch.testing.assert_close(gates[0], g0, rtol=0, atol=0)
    torch.testing.assert_close(gates[1], 1 - (s0 + s1).clamp(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(gates[3], gates[0], rtol=0, atol=0)


def test_gated_attention_is_softmax_with_log_gate_on_the_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ones = torch.ones(2, 5, dtype=torch.float64)
    for causal in (False, True):
        assert torch.equal(NF.gated_softmax_attention(q, k, v, ones, causal), NF.softmax_attention(q, k, v, causal))
    gate = torch.rand(2, 5, generator=g, dtype=torch.float64)
    scores = q @ k.transpose(-1, -2) / 2.0 + torch.log(gate)[:, None, None, :]
    expected = torch.softmax(scores, -1) @ v
    torch.testing.assert_close(NF.gated_softmax_attention(q, k, v, gate), expected, rtol=1e-13, atol=1e-13)
    # a skipped key (gate 0) is hidden: the output is attention over the other keys, up to eps = 1e-6
    gate = ones.clone()
    gate[:, 2] = 0.0
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[:, 2] = False
    hidden = NF.gated_softmax_attention(q, k, v, gate)
    torch.testing.assert_close(hidden, NF.softmax_attention(q, k, v, mask=keep), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="gate must be"):
        NF.gated_softmax_attention(q, k, v, ones[:, :3])


def test_later_tokens_do_not_read_skipped_positions():
    """With gated attention, a token whose gate is 0 in a block is hidden from the others there: changing it
    moves the others' outputs by O(eps) only; without gated attention they read it fully."""
    bs = blocks(2)
    x = tokens()
    g = torch.ones(2, 6, dtype=torch.float64)
    g[:, 1] = 0.0
    x2 = x.clone()
    x2[:, 1] += 3.0 * tokens(t=1, seed=5)[:, 0]  # not a constant shift, which LayerNorm would remove
    others = [0, 2, 3, 4, 5]
    for gated, bound in ((True, 1e-4), (False, None)):
        stack = MiddleSkipStack(bs, gated_attention=gated, router_std=0.0, dtype=torch.float64)
        diff = (stack._block(bs[0], x, g, None) - stack._block(bs[0], x2, g, None))[:, others].abs().max()
        assert diff < bound if gated else diff > 1e-2


def test_regularizer_targets_and_coefficient_updates():
    gates = torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cm = torch.tensor([0.1, -0.2, 0.3, 0.4], dtype=torch.float64)
    cv = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    expected = sum(cm[i] * gates[i].mean() for i in range(4)) / 4 + sum(cv[i] * gates[i].var() for i in range(4)) / 4
    torch.testing.assert_close(NF.skip_gate_loss(gates, cm, cv), expected, rtol=1e-14, atol=1e-15)
    means, variances = NF.skip_gate_targets(6, 1.0, 0.5)
    torch.testing.assert_close(means, torch.tensor([1.0, 0.75, 0.5, 0.5, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(variances, means * (1 - means))
    c = torch.zeros(3, dtype=torch.float64)
    deltas = torch.tensor([0.2, -0.005, -0.5], dtype=torch.float64)
    torch.testing.assert_close(NF.skip_gate_coef_update(c, deltas), torch.tensor([2e-4, 0.0, -5e-4]).double())
    torch.testing.assert_close(
        NF.skip_gate_coef_update(c, deltas, proportional=False), torch.tensor([1e-3, 0.0, -1e-3]).double()
    )


def test_gradients_reach_the_routers_and_the_loss_lowers_the_gates():
    stack = MiddleSkipStack(blocks(4), dtype=torch.float64)
    torch.manual_seed(1)
    stack.reset_parameters()
    y, gates = stack(tokens(), return_gates=True)
    loss = y.square().mean() + NF.skip_gate_loss(gates, torch.ones(4).double(), torch.zeros(4).double())
    loss.backward()
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in stack.routers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_and_compile(dtype):
    stack = MiddleSkipStack(blocks(4, causal=True), dtype=torch.float64).to(dtype)
    x = tokens(dtype=dtype)
    y, gates = stack(x, padding(), return_gates=True)
    assert y.dtype == dtype and gates.dtype == torch.float32 and torch.isfinite(y).all()
    compiled = torch.compile(stack, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, padding()), y, rtol=1e-2, atol=1e-2)


def test_contract_and_bad_arguments():
    stack = MiddleSkipStack(blocks(4), dtype=torch.float64)
    assert stack.routers[0].weight.dtype == torch.float64 and len(stack.routers) == 2
    assert MiddleSkipStack(blocks(2), device="meta").routers[0].weight.device.type == "meta"
    assert math.isclose(stack.routers[0].weight.std().item(), 0.02, rel_tol=0.9)
    assert "depth=4" in repr(stack)
    with pytest.raises(ValueError, match="even"):
        MiddleSkipStack(blocks(3))
    with pytest.raises(ValueError, match="placement"):
        MiddleSkipStack(blocks(2, "post_ln_block"))
    with pytest.raises(ValueError, match="final_norm"):
        MiddleSkipStack(blocks(2, final_norm=True))
    with pytest.raises(ValueError, match="GPAS"):
        MiddleSkipStack(blocks(2, "gpas_block"))
    with pytest.raises(ValueError, match="softmax"):
        MiddleSkipStack(blocks(2, attention="sigmoid_attention"))
    MiddleSkipStack(blocks(2, attention="sigmoid_attention"), gated_attention=False)
    with pytest.raises(TypeError, match="TransformerBlock"):
        MiddleSkipStack([torch.nn.Identity(), torch.nn.Identity()])
    with pytest.raises(ValueError, match="router_std"):
        MiddleSkipStack(blocks(2), router_std=-1.0)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        stack(torch.randn(2, 5, 9, dtype=torch.float64))
    with pytest.raises(TypeError, match="float"):
        stack(torch.ones(2, 5, 8, dtype=torch.long))
