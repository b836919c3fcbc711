"""The model-rewriting core under normact.surgery (matcher, data-flow graph, rewrite transaction), and the example
rewrite that ARCHITECTURE.md points to: every linear layer reading an RMSNorm's output gets a Hadamard rotation
folded into its weight and a fake-quantizer on its rotated input (QuaRot-style), written in well under 100 lines
on the core (checked below). References here are torch's own layers and hand-written formulas."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import Tensor, nn

import normact
from normact.surgery import _match as match
from normact.surgery._graph import build_graph, call_model, module_names
from normact.surgery._rewrite import Rewrite, RewriteReport, Row, param_count, set_param

# ------------------------------------------------------------------------------------------------ the example rewrite


def hadamard(d: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal Sylvester-Hadamard matrix of size d (a power of two): H @ H.T = I."""
    if d < 1 or d & (d - 1):
        raise ValueError(f"a Sylvester-Hadamard matrix needs a power-of-two size, got {d}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(d)


class RotatedFakeQuantLinear(nn.Module):
    """``linear(Q(x @ H))`` where ``linear`` holds ``W H`` (so that it equals ``x @ W.T`` when Q is the identity)
    and Q rounds each row to ``bits`` bits, symmetric, scaled by its largest magnitude (None: no rounding)."""

    def __init__(self, linear: nn.Module, bits: int | None) -> None:
        super().__init__()
        self.linear, self.bits = linear, bits
        self.register_buffer("rotation", hadamard(linear.in_features).to(linear.weight))

    def forward(self, x: Tensor) -> Tensor:
        x = x @ self.rotation
        if self.bits is not None:
            scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / (2 ** (self.bits - 1) - 1)
            x = torch.round(x / scale) * scale
        return self.linear(x)


class QuantReport(RewriteReport):
    def __init__(self, wrapped: list[str], skipped: list[tuple[str, str]], before: int) -> None:
        self.wrapped, self.skipped, self.params_before, self.params_after = wrapped, skipped, before, before

    def rows(self) -> list[Row]:
        return [Row("wrapped", n, "Linear", "RotatedFakeQuantLinear") for n in self.wrapped] + [
            Row("skipped", n, detail=why) for n, why in self.skipped
        ]

    def summary(self) -> str:
        return f"{len(self.wrapped)} linears rotated and quantized, {len(self.skipped)} norms skipped"


def rotate_and_quantize_rms_readers(model: nn.Module, example_inputs, bits: int | None = 8) -> QuantReport:
    """Every nn.Linear that alone reads an RMSNorm's output: W <- W H and input x -> Q(x H). With bits=None the
    model is unchanged up to rounding, which is checked (and everything undone if not)."""
    graph, failures, inputs = build_graph(model, example_inputs)
    if graph is None:
        raise ValueError(f"no data flow: {failures}")
    names = module_names(model)
    with torch.no_grad():
        reference = call_model(model, inputs)
    report = QuantReport([], [], param_count(model))
    with Rewrite(model) as rw:
        for norm in [m for m in model.modules() if match.is_rmsnorm(m)]:
            readers = graph.sole_readers(norm, lambda m: isinstance(m, nn.Linear), "linear")
            if isinstance(readers, str):
                report.skipped.append((names[id(norm)], readers))
                continue
            for lin in readers:
                rw.protect(lin)
                set_param(lin, "weight", lin.weight.double() @ hadamard(lin.in_features))
                rw.wrap(lin, lambda m: RotatedFakeQuantLinear(m, bits))
                report.wrapped.append(names[id(lin)])
        if bits is None:
            rw.check(inputs, reference, rtol=1e-4, what="the rotated model")
    return report


# ------------------------------------------------------------------------------------------------ tests


def _llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=64,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if match.is_rmsnorm(m):
                m.weight.uniform_(0.5, 1.5)
    return model, torch.randint(64, (2, 8))


def test_example_rewrite_is_short_exact_and_quantizes():
    source = inspect.getsource(rotate_and_quantize_rms_readers)
    helpers = inspect.getsource(RotatedFakeQuantLinear) + inspect.getsource(hadamard) + inspect.getsource(QuantReport)
    assert len((source + helpers).splitlines()) < 100
    model, x = _llama()
    original = copy.deepcopy(model)
    report = rotate_and_quantize_rms_readers(model, x, bits=None)
    # every q/k/v and gate/up projection (read by input_layernorm / post_attention_layernorm) and the LM head
    assert len(report.wrapped) == 2 * 5 + 1, str(report)
    assert not report.skipped
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, original(x).logits, rtol=1e-5, atol=1e-5)
    quant = copy.deepcopy(original)
    rotate_and_quantize_rms_readers(quant, x, bits=4)
    with torch.no_grad():
        ref, got = original(x).logits, quant(x).logits
    assert 0 < (got - ref).abs().max() < ref.abs().max()  # rounded, not broken
    assert report.to_dict()["rows"][0]["action"] == "wrapped"


def test_rewrite_transaction_undoes_everything_on_failure():
    model, x = _llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    structure = repr(model)

    class Broken(RotatedFakeQuantLinear):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 1.01

    reference = call_model(model, x)
    with pytest.raises(RuntimeError, match="differs from the original"), Rewrite(model) as rw:
        lin = model.model.layers[0].self_attn.q_proj
        rw.protect(lin)
        set_param(lin, "weight", lin.weight.double() @ hadamard(32))
        rw.wrap(lin, lambda m: Broken(m, None))
        rw.untie(model.lm_head, "lm_head")
        rw.set_attr(model.config, "tie_word_embeddings", True)
        rw.check(x, reference, rtol=1e-6)
    assert repr(model) == structure and model.config.tie_word_embeddings is False
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_rewrite_marks_roll_back_part_of_the_edits():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    w0, w1 = model[0].weight.clone(), model[1].weight.clone()
    rw = Rewrite(model)
    rw.protect(model[0])
    set_param(model[0], "weight", torch.zeros(3, 3))
    mark = rw.mark()
    rw.protect(model[1])
    set_param(model[1], "weight", torch.zeros(3, 3))
    rw.replace(model[1], nn.Identity())
    rw.rollback(mark)
    assert isinstance(model[1], nn.Linear) and torch.equal(model[1].weight, w1)
    assert torch.equal(model[0].weight, torch.zeros(3, 3))
    rw.rollback()
    assert torch.equal(model[0].weight, w0)


def test_graph_queries_and_sequential_fallback():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.a, self.b, self.c = nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            h = self.norm(x)
            return self.a(h) + self.b(h.contiguous()) + self.c(x)  # fx records no shapes: no reshapes here

    net = Net()
    graph, _, _ = build_graph(net, torch.randn(2, 4))
    assert graph.method == "fx"
    assert graph.sole_readers(net.norm, match.is_linear, "linear") == [net.a, net.b]
    assert "also read by op:contiguous" in graph.producer(net.a, match.is_norm, "a norm")  # not its sole reader
    seq = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert build_graph(seq, None)[0].producer(seq[1], match.is_linear, "a linear") is seq[0]
    out = graph.nodes[-1]
    terms = graph.residual_terms(out.inputs[0])
    assert {t.module for t in terms if t.kind == "module"} == {net.a, net.b, net.c}

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4))

        def forward(self, x: Tensor) -> Tensor:
            return self.seq(x) if x.sum() > 0 else -self.seq(x)

    model = Untraceable()
    graph, failures, _ = build_graph(model, "not an input", sequential=True)
    assert graph.method == "sequential" and failures
    assert graph.sole_readers(model.seq[1], match.is_linear, "linear") == [model.seq[2]]
    why = graph.producer(model.seq[0], match.is_norm, "a norm")
    assert why.startswith("no provable producer: the data flow could not be traced (torch.fx")


def test_matcher_options_where_purposes_differ():
    inorm = nn.InstanceNorm2d(4, track_running_stats=True, affine=True)
    # fold may fold an InstanceNorm with tracked statistics in eval; AdaBN never recalibrates one
    assert match.is_batchnorm(inorm, candidate=True) and not match.is_batchnorm(inorm)
    assert not match.is_batchnorm_layer(inorm) and match.is_batchnorm_layer(nn.BatchNorm2d(4))
    assert match.is_instancenorm(inorm, "2d") and not match.is_instancenorm(inorm, "1d")
    # a LayerNorm-like normact variant is a fold candidate (checked numerically) but not a LayerNorm to swap
    l1 = normact.create("l1_layernorm", 8)
    assert match.is_layernorm(l1, candidate=True) and not match.is_layernorm(l1)
    assert match.role(l1) == "ln" and match.role(nn.Linear(2, 2)) == "linear" and match.role(nn.Dropout()) == "pass"

    class T5LayerNorm(nn.Module):  # named LayerNorm, computes an RMSNorm
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

        def forward(self, x: Tensor) -> Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    class GemmaRMSNorm(T5LayerNorm):
        def forward(self, x: Tensor) -> Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight)

    assert match.is_rmsnorm(T5LayerNorm()) and not match.is_layernorm(T5LayerNorm())
    assert match.gain_offset(GemmaRMSNorm) == 1.0 and match.gain_offset(T5LayerNorm) == 0.0
    fam = match.family("gelu_tanh")
    assert fam.matches(nn.GELU(approximate="tanh")) and not fam.matches(nn.GELU())
    assert match.family("no-such-layer") is None
