"""nGPT (Loshchilov et al., 2024, arXiv:2410.01131): the paper's checks on the normalized block and model.

- every block output row has unit norm;
- alpha = 0 makes the block the identity on unit-norm input, alpha = 1 replaces each state by the normalized branch
  output (exact identities of h <- Norm(h + |alpha| (Norm(h_branch) - h)));
- after ``normalize_ngpt_weights_`` every embedding-dimension vector has unit norm;
- a real training loop (AdamW, 20 steps) with ``ngpt_renorm_hook``: weights and hidden states at unit norm after every
  optimizer step, and the loss decreases.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normact.functional as NF
from normact.layers.block.normalized import NormalizedTransformerBlock, ngpt_renorm_hook, normalize_ngpt_weights_
from normact.models import NGPT

TEXT = b"the quick brown fox jumps over the lazy dog. " * 8


def unit_rows(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


def perturb_(module, seed=1, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
    return module


def embedding_vectors(model: NGPT) -> dict[str, torch.Tensor]:
    """Every vector of the embedding dimension, one per row, listed from the paper (section 2.6) and train.py's
    normalize_matrices: embedding and head rows; q, k, v, fc1 rows; out_proj and fc2 columns."""
    vectors = {"tok": model.tok.weight, "head": model.head.weight}
    if model.pos is not None:
        vectors["pos"] = model.pos.weight
    for i, b in enumerate(model.blocks):
        for name in ("q_proj", "k_proj", "v_proj", "fc1"):
            vectors[f"blocks.{i}.{name}"] = getattr(b, name).weight
        for name in ("out_proj", "fc2"):
            vectors[f"blocks.{i}.{name}"] = getattr(b, name).weight.t()
    return vectors


def assert_unit_weights(model: NGPT, tol: float) -> None:
    for name, w in embedding_vectors(model).items():
        assert w.shape[-1] == model.dim, name
        norms = w.detach().double().norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=tol, rtol=0), (name, (norms - 1).abs().max())


# --------------------------------------------------------------------------------------------------
# the block


@pytest.mark.parametrize(
    "init",
    [
        {},
        {"causal": True, "rope": True},
        {"act": "geglu", "alpha_init": 0.7, "mlp_ratio": 2},
        {"rope": True, "base_scale": 0.3, "alpha_init": 1.0},
    ],
)
@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_every_block_output_row_has_unit_norm(init, scale):
    block = perturb_(NormalizedTransformerBlock(16, 4, dtype=torch.float64, **init))
    x = unit_rows((3, 6, 16)) * scale  # off the sphere too: the block normalizes its input first
    y = block(x)
    assert torch.allclose(y.norm(dim=-1), torch.ones(3, 6, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_block_output_unit_norm_in_low_precision(dtype):
    block = NormalizedTransformerBlock(32, 4, rope=True, causal=True, dtype=dtype)
    y = block(unit_rows((2, 8, 32), dtype=dtype))
    assert y.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert (y.float().norm(dim=-1) - 1).abs().max() < tol


def test_alpha_zero_is_the_identity():
    """|alpha| = 0: h <- Norm(h + 0) = h at both updates, whatever the (perturbed) weights and scales."""
    block = perturb_(NormalizedTransformerBlock(16, 2, alpha_init=0.0, rope=True, causal=True, dtype=torch.float64))
    x = unit_rows((2, 7, 16))
    torch.testing.assert_close(block(x), x, atol=1e-14, rtol=0)


def test_alpha_one_replaces_the_state_by_the_normalized_branch():
    """|alpha| = 1: h <- Norm(h + Norm(h_A) - h) = Norm(h_A), then y = Norm(h_M(Norm(h_A)))."""
    block = NormalizedTransformerBlock(16, 2, alpha_init=1.0, rope=True, dtype=torch.float64)
    perturb_(block)
    with torch.no_grad():  # used alpha = stored * (1 / base_scale) = +-1 exactly
        block.alpha_attn.fill_(block.base_scale)
        block.alpha_mlp.fill_(-block.base_scale)  # |alpha| is used: -1 acts as 1
    x = unit_rows((2, 5, 16))
    s = block.effective_scales()
    w = {n: getattr(block, n).weight for n in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")}
    h_attn = NF.ngpt_attention(
        x, w["q_proj"], w["k_proj"], w["v_proj"], w["out_proj"], s["s_qk"], 2, rope_base=block.rope_base
    )
    h1 = h_attn / h_attn.norm(dim=-1, keepdim=True)
    h_mlp = NF.ngpt_mlp(h1, w["fc1"], w["fc2"], s["s_u"], s["s_v"], NF.swiglu)
    torch.testing.assert_close(block(x), h_mlp / h_mlp.norm(dim=-1, keepdim=True), atol=1e-14, rtol=0)


def test_update_rule_identities():
    h, b = unit_rows((4, 8), seed=2), 3.0 * unit_rows((4, 8), seed=3)
    zero, one = torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
    torch.testing.assert_close(NF.ngpt_update(h, b, zero), h, atol=1e-15, rtol=0)
    torch.testing.assert_close(NF.ngpt_update(h, b, one), b / 3.0, atol=1e-15, rtol=0)
    torch.testing.assert_close(NF.ngpt_update(h, b, -one), b / 3.0, atol=1e-15, rtol=0)
    a = torch.linspace(0.0, 1.0, 8, dtype=torch.float64)
    mid = h + a * (b / 3.0 - h)
    torch.testing.assert_close(NF.ngpt_update(h, b, a), mid / mid.norm(dim=-1, keepdim=True))


def test_scaled_parameters_follow_the_official_convention():
    """Stored at base_scale = 1/sqrt(d), used as stored * (init / base_scale): alpha 0.05, s_qk 1 (official
    model.py); s_u, s_v stored and used as 1; s_z stored 1/sqrt(d), used 1."""
    d = 64
    block = NormalizedTransformerBlock(d, 4)
    for name in ("alpha_attn", "alpha_mlp", "s_qk"):
        torch.testing.assert_close(getattr(block, name).detach(), torch.full((d,), 1 / math.sqrt(d)))
    used = block.effective_scales()
    torch.testing.assert_close(used["alpha_attn"], torch.full((d,), 0.05))
    torch.testing.assert_close(used["alpha_mlp"], torch.full((d,), 0.05))
    torch.testing.assert_close(used["s_qk"], torch.ones(d))
    torch.testing.assert_close(used["s_u"], torch.ones(4 * d))
    torch.testing.assert_close(used["s_v"], torch.ones(4 * d))
    model = NGPT(vocab_size=32, dim=d)
    torch.testing.assert_close(model.s_z.detach(), torch.full((32,), 1 / math.sqrt(d)))


def test_softmax_scale_is_sqrt_head_dim():
    """With s_qk = 1 the scores are sqrt(d_k) cos(q, k): compare the attention output with an explicit softmax."""
    block = NormalizedTransformerBlock(8, 2, dtype=torch.float64)
    x = unit_rows((1, 4, 8))
    q = F.linear(x, block.q_proj.weight).view(1, 4, 2, 4).transpose(1, 2)
    k = F.linear(x, block.k_proj.weight).view(1, 4, 2, 4).transpose(1, 2)
    v = F.linear(x, block.v_proj.weight).view(1, 4, 2, 4).transpose(1, 2)
    cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
    out = (torch.softmax(math.sqrt(4) * cos, dim=-1) @ v).transpose(1, 2).reshape(1, 4, 8)
    expected = F.linear(out, block.out_proj.weight)
    s = block.effective_scales()
    got = NF.ngpt_attention(
        x, block.q_proj.weight, block.k_proj.weight, block.v_proj.weight, block.out_proj.weight, s["s_qk"], 2
    )
    torch.testing.assert_close(got, expected, atol=1e-14, rtol=0)


def test_zero_input_stays_finite():
    block = NormalizedTransformerBlock(8, 2, dtype=torch.float32)
    x = torch.zeros(1, 3, 8, requires_grad=True)
    y = block(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------------------
# weight normalization


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_normalize_weights_puts_every_embedding_vector_on_the_sphere(positions):
    model = NGPT(vocab_size=40, dim=16, depth=2, heads=2, context=8, positions=positions)
    assert_unit_weights(model, 1e-6)  # already at init (as train.py normalizes before the first step)
    perturb_(model)
    with pytest.raises(AssertionError):
        assert_unit_weights(model, 1e-3)
    assert normalize_ngpt_weights_(model) is model
    assert_unit_weights(model, 1e-6)
    perturb_(model, seed=5)
    assert model.normalize_weights_() is model
    assert_unit_weights(model, 1e-6)


def test_normalize_weights_of_a_bare_block_and_the_scales_untouched():
    block = perturb_(NormalizedTransformerBlock(8, 2))
    scales = {n: getattr(block, n).detach().clone() for n in ("s_qk", "alpha_attn", "alpha_mlp", "s_u", "s_v")}
    normalize_ngpt_weights_(nn.Sequential(block))
    for name in ("q_proj", "k_proj", "v_proj", "fc1"):
        torch.testing.assert_close(
            getattr(block, name).weight.norm(dim=1), torch.ones(getattr(block, name).out_features)
        )
    for name in ("out_proj", "fc2"):
        torch.testing.assert_close(
            getattr(block, name).weight.norm(dim=0), torch.ones(getattr(block, name).in_features)
        )
    for name, before in scales.items():
        assert torch.equal(getattr(block, name).detach(), before), name


def test_normalize_weights_rejects_modules_without_ngpt_parts():
    with pytest.raises(ValueError, match="nGPT"):
        normalize_ngpt_weights_(nn.Linear(4, 4))
    with pytest.raises(TypeError):
        normalize_ngpt_weights_(torch.ones(3))
    opt = torch.optim.AdamW(nn.Linear(4, 4).parameters())
    with pytest.raises(ValueError, match="nGPT"):
        ngpt_renorm_hook(opt, nn.Linear(4, 4))
    with pytest.raises(TypeError):
        ngpt_renorm_hook(object(), NGPT(vocab_size=8, dim=8, heads=2, depth=1))


# --------------------------------------------------------------------------------------------------
# the model


def test_logits_at_init_are_cosines():
    """Unit-norm hidden states and head rows, s_z = 1: every logit is a cosine, in [-1, 1]."""
    model = NGPT(vocab_size=64, dim=32, depth=2, heads=4)
    logits = model(torch.randint(0, 64, (2, 10)))
    assert logits.shape == (2, 10, 64)
    assert logits.abs().max() <= 1 + 1e-5


def test_model_reset_parameters_reproduces_a_fresh_model():
    torch.manual_seed(3)
    fresh = NGPT(vocab_size=16, dim=16, heads=2, positions="learned", context=8)
    torch.manual_seed(3)
    model = perturb_(NGPT(vocab_size=16, dim=16, heads=2, positions="learned", context=8))
    torch.manual_seed(3)
    model.reset_parameters()
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_model_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="positions"):
        NGPT(positions="sinusoidal")
    with pytest.raises(ValueError, match="act"):
        NGPT(act="gelu")
    with pytest.raises(ValueError):
        NGPT(base_scale=-1.0)
    model = NGPT(vocab_size=16, dim=16, heads=2, positions="learned", context=4)
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.zeros(1, 5))


def test_model_with_padding_mask_and_low_precision():
    model = NGPT(vocab_size=32, dim=16, heads=2, dtype=torch.bfloat16)
    idx = torch.randint(0, 32, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, -2:] = False
    h = model.hidden_states(idx, mask)
    assert h.dtype == torch.bfloat16
    assert (h.float().norm(dim=-1) - 1).abs().max() < 2e-2
    assert model(idx, mask).dtype == torch.bfloat16


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_model_compiles_fullgraph(positions):
    torch._dynamo.reset()
    model = NGPT(vocab_size=32, dim=16, heads=2, positions=positions, context=8)
    idx = torch.randint(0, 32, (2, 8))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(idx), model(idx), atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------------
# a real training loop


def _batches(steps, batch=8, length=24, seed=1):
    data = torch.tensor(list(TEXT))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - length - 1, (batch,), generator=g)
        chunk = torch.stack([data[s : s + length + 1] for s in starts])
        yield chunk[:, :-1], chunk[:, 1:]


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_training_loop_keeps_weights_and_hidden_states_on_the_sphere(positions):
    torch.manual_seed(0)
    model = NGPT(vocab_size=256, dim=32, depth=2, heads=2, context=24, positions=positions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    handle = ngpt_renorm_hook(optimizer, model)
    hidden: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, args, out: hidden.append(out.detach())) for b in model.blocks]
    losses = []
    for x, y in _batches(20):
        hidden.clear()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        assert len(hidden) == len(model.blocks)
        for h in hidden:  # the states of this forward, i.e. after the previous step
            assert (h.norm(dim=-1) - 1).abs().max() < 1e-5
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert_unit_weights(model, 1e-5)  # the hook renormalized them
        losses.append(loss.item())
    for hook in hooks:
        hook.remove()
    assert losses[-1] < losses[0] - 1.0, losses
    assert sum(losses[-5:]) < sum(losses[:5]), losses

    # control: once the hook is removed, an optimizer step takes the weights off the sphere
    handle.remove()
    drifted = copy.deepcopy(model)
    opt = torch.optim.AdamW(drifted.parameters(), lr=1e-2, weight_decay=0.0)
    x, y = next(_batches(1, seed=9))
    F.cross_entropy(drifted(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    with pytest.raises(AssertionError):
        assert_unit_weights(drifted, 1e-5)
