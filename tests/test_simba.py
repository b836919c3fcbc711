"""SimBa (Lee et al., 2024, arXiv:2410.09754) beyond the generic harness (tests/entries/running_obs.py and
tests/entries/simba.py): RSNorm's running statistics are exactly the mean and population variance of everything it
has seen, however the data are split into batches; training normalizes with the statistics after the update, eval
with frozen ones; the residual block with W2 = 0 is the identity; the official initialization; the encoder."""

from __future__ import annotations

import math

import pytest
import torch

import normact
import normact.functional as NF
from normact.layers.block.simba import SimBaBlock, SimBaEncoder
from tests.helpers import randn

# ------------------------------------------------------------------------------------------------- RSNorm


def _data(n=57, c=5, seed=0):
    return randn((n, c), scale=3.0, offset=2.0, seed=seed)


def test_streaming_one_sample_at_a_time_gives_the_batch_mean_and_population_variance():
    data = _data()
    norm = normact.RSNorm(5, dtype=torch.float64)
    for row in data:
        norm(row[None])
    torch.testing.assert_close(norm.running_mean, data.mean(0), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(norm.running_var, data.var(0, unbiased=False), rtol=1e-12, atol=1e-12)
    assert int(norm.num_samples_tracked) == 57


def test_the_paper_welford_recursion_step_by_step():
    """mu_t = mu + delta/t, sigma_t^2 = (t-1)/t (sigma^2 + delta^2/t): the buffers after each single sample."""
    data = _data(n=9, c=3, seed=1)
    norm = normact.RSNorm(3, dtype=torch.float64)
    mu, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for t, o in enumerate(data, start=1):
        norm(o[None])
        delta = o - mu
        mu = mu + delta / t
        var = (t - 1) / t * (var + delta**2 / t)
        torch.testing.assert_close(norm.running_mean, mu, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(norm.running_var, var, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("sizes", [(57,), (1, 56), (10, 7, 30, 10), (3, 3, 3, 48)])
def test_any_split_into_batches_gives_the_same_statistics(sizes):
    data = _data()
    norm = normact.RSNorm(5, dtype=torch.float64)
    for chunk in torch.split(data, list(sizes)):
        norm(chunk)
    torch.testing.assert_close(norm.running_mean, data.mean(0), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(norm.running_var, data.var(0, unbiased=False), rtol=1e-12, atol=1e-12)


def test_tokens_count_as_samples():
    x = randn((3, 4, 6), seed=2)
    norm = normact.RSNorm(6, dtype=torch.float64)
    norm(x)
    flat = x.reshape(-1, 6)
    torch.testing.assert_close(norm.running_mean, flat.mean(0))
    torch.testing.assert_close(norm.running_var, flat.var(0, unbiased=False))
    assert int(norm.num_samples_tracked) == 12


def test_training_normalizes_with_the_statistics_after_the_update_and_eval_freezes_them():
    """As the official agent when it acts: update, then normalize (the first batch comes out standardized);
    eval normalizes with the frozen statistics and leaves them alone."""
    norm = normact.RSNorm(5, eps=1e-12, dtype=torch.float64)
    x = _data(seed=3)
    y = norm(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(5, dtype=torch.float64), rtol=1e-10, atol=0)
    state = {k: v.clone() for k, v in norm.state_dict().items()}
    z = randn((4, 5), seed=4)
    y_eval = norm.eval()(z)
    torch.testing.assert_close(y_eval, (z - state["running_mean"]) / torch.sqrt(state["running_var"] + 1e-12))
    for key, value in norm.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_matches_the_official_gymnasium_update_up_to_its_pseudo_count():
    """The official RunningMeanStd starts at count 1e-4 (mean 0, var 1): its statistics differ from the exact ones by
    O(1e-4 / t), and equal ours when started from count 0."""

    def official(mean, var, count, batch):
        bm, bv, bc = batch.mean(0), batch.var(0, unbiased=False), batch.shape[0]
        delta, tot = bm - mean, count + bc
        m2 = var * count + bv * bc + delta**2 * count * bc / tot
        return mean + delta * bc / tot, m2 / tot, tot

    data = _data()
    norm = normact.RSNorm(5, dtype=torch.float64)
    state = (torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64), 0.0)
    pseudo = (torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64), 1e-4)
    for chunk in torch.split(data, [8, 20, 29]):
        norm(chunk)
        state, pseudo = official(*state, chunk), official(*pseudo, chunk)
    torch.testing.assert_close(norm.running_mean, state[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(norm.running_var, state[1], rtol=1e-12, atol=1e-12)
    assert float((norm.running_var - pseudo[1]).abs().max()) < 1e-4


def test_the_backward_treats_the_statistics_as_constants():
    norm = normact.RSNorm(5, dtype=torch.float64)
    x = _data(seed=5).requires_grad_(True)
    g = randn((57, 5), seed=6)
    (grad,) = torch.autograd.grad(norm(x), x, g)
    torch.testing.assert_close(grad, g / torch.sqrt(norm.running_var + norm.eps), rtol=1e-14, atol=0)
    assert normact.info("rsnorm").properties.custom_backward and normact.info("rsnorm").properties.stateful


def test_reset_and_bad_input():
    norm = normact.RSNorm(3)
    norm(torch.randn(4, 3))
    norm.reset_parameters()
    assert norm.running_mean.abs().max() == 0 and (norm.running_var == 1).all() and int(norm.num_samples_tracked) == 0
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(N, L, 3\)"):
        norm(torch.randn(4, 4))
    with pytest.raises(ValueError, match="shape"):
        norm(torch.randn(3))
    with pytest.raises(ValueError, match="at least one sample"):
        NF.rs_norm(torch.randn(0, 3), norm.running_mean, norm.running_var, norm.num_samples_tracked, True)


def test_compiled_training_steps_match_eager_buffers_and_gradients():
    torch._dynamo.reset()
    eager, compiled_norm = normact.RSNorm(4), normact.RSNorm(4)
    compiled = torch.compile(compiled_norm, backend="aot_eager", fullgraph=True)
    for step in range(3):
        x = randn((6, 4), seed=10 + step, dtype=torch.float32)
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ye, yc = eager(xe), compiled(xc)
        torch.testing.assert_close(yc, ye)
        (ge,) = torch.autograd.grad((ye * x).sum(), xe)
        (gc,) = torch.autograd.grad((yc * x).sum(), xc)
        torch.testing.assert_close(gc, ge)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled_norm.state_dict()[key], value)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------- the block


def _block(dim=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    return normact.create("simba_block", dim, dtype=torch.float64, **kwargs)


def test_block_with_zero_output_layer_is_the_identity():
    block = _block()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
    x = randn((5, 8), seed=7)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.mlp.fc2.bias.fill_(0.25)
    torch.testing.assert_close(block(x), x + 0.25, rtol=0, atol=0)


def test_block_is_the_pre_ln_residual_mlp_of_the_paper():
    block = _block(dim=6, seed=1)
    x = randn((4, 6), seed=8)
    h = torch.nn.functional.layer_norm(x, (6,), block.norm.weight, block.norm.bias, 1e-6)
    expected = x + block.mlp.fc2(torch.relu(block.mlp.fc1(h)))
    torch.testing.assert_close(block(x), expected, rtol=1e-14, atol=1e-14)
    assert block.mlp.fc1.weight.shape == (24, 6) and block.norm.eps == 1e-6  # 4x expansion, Flax's epsilon


def test_official_initialization_he_normal_truncated_and_zero_biases():
    """JAX's he_normal: a normal truncated at two standard deviations with variance 2 / fan_in; biases 0,
    LayerNorm gain 1 and bias 0. Sample std within 5 standard errors (n weights: SE ~ std / sqrt(2n))."""
    block = _block(dim=128)
    for fc, fan_in in ((block.mlp.fc1, 128), (block.mlp.fc2, 512)):
        w = fc.weight.detach()
        target = math.sqrt(2.0 / fan_in)
        assert abs(float(w.std()) / target - 1) < 5 / math.sqrt(2 * w.numel())
        assert float(w.abs().max()) <= 2 * target / 0.87962566103423978 + 1e-12  # the truncation
        assert fc.bias.abs().max() == 0
    assert (block.norm.weight == 1).all() and block.norm.bias.abs().max() == 0


def test_block_is_a_registered_block_for_the_probe():
    info = normact.info("simba_block")
    assert info.kind == "block" and info.paper.arxiv == "2410.09754" and not info.properties.smooth
    block = _block()
    with normact.probe(block) as p:
        block(randn((4, 8), seed=9))
    report = p.report()
    assert report[""].kind == "block" and report["norm"].kind == "norm"


# ------------------------------------------------------------------------------------------------- the encoder


def test_encoder_is_rsnorm_embedding_blocks_final_layernorm():
    torch.manual_seed(0)
    enc = SimBaEncoder(5, 16, 2, dtype=torch.float64)
    assert isinstance(enc.blocks[0], SimBaBlock) and len(enc.blocks) == 2
    x = _data(n=12, seed=11)
    obs_norm_copy = normact.RSNorm(5, dtype=torch.float64)
    h = enc.embed(obs_norm_copy(x))
    for block in enc.blocks:
        h = block(h)
    expected = torch.nn.functional.layer_norm(h, (16,), enc.norm.weight, enc.norm.bias, 1e-6)
    torch.testing.assert_close(enc(x), expected, rtol=1e-13, atol=1e-13)
    assert int(enc.obs_norm.num_samples_tracked) == 12
    y = enc(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(12, dtype=torch.float64), rtol=0, atol=1e-12)


def test_encoder_with_zero_branches_is_linear_before_the_final_norm():
    """The simplicity bias: with every block's output layer at 0 the encoder is LN(W_e RSNorm(o) + b_e)."""
    torch.manual_seed(1)
    enc = SimBaEncoder(4, 8, 3, normalize_input=False, dtype=torch.float64)
    assert enc.obs_norm is None
    with torch.no_grad():
        for block in enc.blocks:
            block.mlp.fc2.weight.zero_()
    x = randn((6, 4), seed=12)
    expected = torch.nn.functional.layer_norm(enc.embed(x), (8,), eps=1e-6)
    torch.testing.assert_close(enc(x), expected, rtol=1e-13, atol=1e-13)


def test_encoder_embedding_is_orthogonal_and_bad_input_is_rejected():
    enc = SimBaEncoder(6, 12, 1)
    w = enc.embed.weight.detach()
    torch.testing.assert_close(w.T @ w, torch.eye(6), rtol=0, atol=1e-5)  # (12, 6): orthonormal columns
    with pytest.raises(ValueError, match=r"\(N, 6\) or \(N, L, 6\)"):
        enc(torch.randn(3, 5))
    with pytest.raises((ValueError, TypeError)):
        SimBaEncoder(6, 0, 1)
