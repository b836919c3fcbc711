"""dReLU, FATReLU and the top-k activation beyond the generic harness: the research catalog's unit checks (dReLU
density 1/4 vs ReGLU 1/2, FATReLU(T - 1e-6) = 0 and FATReLU(T) = T, top-k's <= k non-zeros and k = d being
ReLU), deterministic tie-breaking, gradients, torch.nn.Threshold and torch.topk as independent comparisons, and
squared ReLU ("ReLU² Wins", covered by relu2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF


def _randn(shape, seed=0, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# ---------------------------------------------------------------------------------------------- dReLU


def test_drelu_is_zero_exactly_when_either_branch_is_non_positive():
    x = _randn((1000, 64), scale=2.0)
    a, b = x.chunk(2, dim=-1)
    y = normact.create("drelu")(x)
    assert torch.equal(y == 0, (a <= 0) | (b <= 0))
    torch.testing.assert_close(y, torch.relu(a) * torch.relu(b), atol=0, rtol=0)
    # symmetric in its halves; ReGLU where the up branch is positive
    torch.testing.assert_close(NF.drelu(torch.cat([b, a], -1)), y, atol=0, rtol=0)
    torch.testing.assert_close(torch.where(b > 0, NF.reglu(x), 0.0), y, atol=0, rtol=0)


def test_drelu_density_is_a_quarter_against_a_half_for_reglu():
    """Independent Gaussian gate and up projections: P(a > 0, b > 0) = 1/4 (dReLU), P(a > 0) = 1/2 (ReGLU)."""
    x = _randn((2000, 1000))
    drelu_density = (NF.drelu(x) != 0).double().mean().item()
    reglu_density = (NF.reglu(x) != 0).double().mean().item()
    assert drelu_density == pytest.approx(0.25, abs=3e-3)  # 1e6 Bernoulli(1/4): sd 4.3e-4
    assert reglu_density == pytest.approx(0.5, abs=3e-3)


def test_drelu_derivative_on_each_side_of_zero_in_the_second_half():
    """The harness checks the kink of the first half (b = 1); here the second half's, with a = 2."""
    x = torch.tensor([[2.0, -1e-3], [2.0, 1e-3]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(NF.drelu(x).sum(), x)
    # d/da = 1[a > 0] relu(b); d/db = relu(a) 1[b > 0]
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0], [1e-3, 2.0]], dtype=torch.float64))


def test_drelu_gaussian_moments_closed_form():
    """E[relu(a) relu(b)] = E[relu(a)]^2 = 1/(2 pi), E[(relu(a) relu(b))^2] = (1/2)^2."""
    m = normact.gaussian_moments("drelu")
    assert m.mean == pytest.approx(1 / (2 * math.pi), abs=1e-9)
    assert m.second_moment == pytest.approx(0.25, abs=1e-9)


# ---------------------------------------------------------------------------------------------- FATReLU


def test_fatrelu_catalog_check_at_the_threshold():
    layer = normact.create("fatrelu")
    assert layer.threshold == 0.01
    t = torch.tensor([0.01 - 1e-6, 0.01, 0.02, -5.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(layer(t), torch.tensor([0.0, 0.01, 0.02, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("threshold", [0.01, 0.5, 0.0])
def test_fatrelu_equals_torch_threshold_except_at_the_threshold(threshold):
    """torch.nn.Threshold(T, 0) keeps x > T; FATReLU keeps x >= T: equal everywhere but at x = T."""
    x = _randn((64, 33), scale=2.0)
    layer = normact.create("fatrelu", threshold=threshold)
    torch.testing.assert_close(layer(x), torch.nn.Threshold(threshold, 0.0)(x), atol=0, rtol=0)
    at = torch.tensor([threshold], dtype=torch.float64)
    assert layer(at).item() == threshold and torch.nn.Threshold(threshold, 0.0)(at).item() == 0.0


def test_fatrelu_zero_threshold_is_relu_and_gradient_is_the_mask():
    x = _randn((16, 16), scale=2.0).requires_grad_(True)
    torch.testing.assert_close(NF.fatrelu(x, 0.0), torch.relu(x), atol=0, rtol=0)
    (g,) = torch.autograd.grad(NF.fatrelu(x, 0.5).sum(), x)
    torch.testing.assert_close(g, (x.detach() >= 0.5).double(), atol=0, rtol=0)


@pytest.mark.parametrize(("t", "tol"), [(0.01, 1e-6), (0.5, 5e-5)])
def test_fatrelu_gaussian_moments_closed_form(t, tol):
    """E[f(z)] = phi(T), E[f(z)^2] = T phi(T) + 1 - Phi(T) for z ~ N(0, 1). normact.gaussian_moments' Simpson
    rule (step h = 1e-4) errs by O(h x jump) at the jump from 0 to T (jump T phi(T)): hence the tolerances."""
    phi, cdf = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(t / math.sqrt(2)))
    m = normact.gaussian_moments("fatrelu", threshold=t)
    assert m.mean == pytest.approx(phi, abs=tol)
    assert m.second_moment == pytest.approx(t * phi + 1 - cdf, abs=tol)


def test_fatrelu_rejects_a_negative_threshold_and_keeps_low_precision():
    for bad in (-0.01, float("inf")):
        with pytest.raises(ValueError, match="threshold"):
            normact.create("fatrelu", threshold=bad)
    for dtype in (torch.bfloat16, torch.float16):
        y = normact.create("fatrelu")(_randn((8, 8)).to(dtype))
        assert y.dtype == dtype


# ---------------------------------------------------------------------------------------------- top-k


def test_topk_keeps_at_most_k_and_k_equal_d_is_relu():
    x = _randn((50, 32), scale=1.5)
    for k in (1, 4, 31):
        y = normact.create("topk", k=k)(x)
        assert int((y != 0).sum(-1).max()) <= k
    torch.testing.assert_close(normact.create("topk", k=32)(x), torch.relu(x), atol=0, rtol=0)
    torch.testing.assert_close(normact.create("topk", k=100)(x), torch.relu(x), atol=0, rtol=0)


@pytest.mark.parametrize("relu", [True, False])
def test_topk_against_torch_topk_on_distinct_values(relu):
    """With distinct values the kept set is unambiguous: compare with a mask built from torch.topk."""
    x = _randn((3, 7, 40), seed=5, scale=2.0)
    k = 6
    _, idx = torch.topk(x, k, dim=-1)
    expected = torch.zeros_like(x).scatter(-1, idx, (torch.relu(x) if relu else x).gather(-1, idx))
    torch.testing.assert_close(NF.topk_activation(x, k, relu), expected, atol=0, rtol=0)


def test_topk_ties_are_broken_by_position_deterministically():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0, 5.0], [0.0, -1.0, 0.0, 0.0, 2.0]])
    y = NF.topk_activation(x, 2)
    expected = torch.tensor([[0.0, 3.0, 3.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    for _ in range(3):  # the same answer every call
        assert torch.equal(NF.topk_activation(x, 2), y)
    # exactly k kept even with ties (relu=False shows the kept entries)
    mask = NF.topk_activation(x + 10.0, 2, relu=False) != 0
    assert mask.sum(-1).tolist() == [2, 2, 2]
    assert mask[2].tolist() == [True, False, False, False, True]


def test_topk_gradient_flows_to_the_kept_entries_only():
    x = torch.tensor([[0.3, -2.0, 1.7, 0.9, -0.1, 2.4]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(NF.topk_activation(x, 3).sum(), x)
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 1.0]], dtype=torch.float64))
    # fewer positive entries than k: the kept negative entries get ReLU's zero derivative
    (g,) = torch.autograd.grad(NF.topk_activation(x, 5).sum(), x)
    torch.testing.assert_close(g, (x.detach() > 0).double())
    (g,) = torch.autograd.grad(NF.topk_activation(x, 5, relu=False).sum(), x)
    torch.testing.assert_close(g, torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64))


def test_topk_commutes_with_relu():
    x = _randn((20, 24), seed=3)
    torch.testing.assert_close(
        NF.topk_activation(x, 5), torch.relu(NF.topk_activation(x, 5, relu=False)), atol=0, rtol=0
    )
    torch.testing.assert_close(
        NF.topk_activation(x, 5), NF.topk_activation(torch.relu(x), 5, relu=False), atol=0, rtol=0
    )


def test_topk_bad_arguments_and_input():
    with pytest.raises(ValueError, match="k must be"):
        normact.create("topk", k=0)
    with pytest.raises(TypeError, match="relu"):
        normact.create("topk", k=2, relu="yes")
    with pytest.raises(ValueError, match=r"shape \(\*, d\)"):
        normact.create("topk", k=2)(torch.tensor(1.0))
    assert repr(normact.create("topk", k=8, relu=False)) == "TopK(k=8, relu=False)"
    assert normact.info("topk_relu").name == "topk"


def test_topk_compiles_with_fullgraph():
    layer = normact.create("topk", k=3)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = _randn((4, 10), seed=9)
    torch.testing.assert_close(compiled(x), layer(x), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- squared ReLU


def test_squared_relu_of_relu2_wins_is_relu2():
    """Catalog [128] (Zhang et al., "ReLU² Wins", arXiv:2402.03804): relu2(x) = x^2 for x > 0 else 0 and its
    derivative is 2 relu(x); the registered relu2 (alias squared_relu) cites that paper."""
    info = normact.info("squared_relu")
    assert info.name == "relu2" and info.paper.arxiv == "2402.03804"
    x = _randn((100,), scale=3.0).requires_grad_(True)
    y = normact.create("relu2")(x)
    torch.testing.assert_close(y, torch.where(x > 0, x * x, 0.0))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, 2 * F.relu(x.detach()))
