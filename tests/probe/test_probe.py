"""normact.probing.probe: selection, hooks, no stored activations or host syncs, layouts, blocks, attention."""

from __future__ import annotations

import gc
import itertools

import pytest
import torch
from torch import nn

import normact
from normact.bench.models import build_model
from normact.probing import SPARSE, Report, probe
from tests.probe._models import Plant, ToyAttention, ToyBlock, toy_batches, toy_net


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _resnet(norm: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet", norm=norm, act="relu", in_shape=(3, 32, 32), num_classes=10, depth=20)
    for m in model.modules():  # He initialisation, as in He et al. (2016)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def test_default_selection_norms_acts_blocks_attention():
    model = toy_net()
    with probe(model) as p:
        model(toy_batches(1)[0])
        hooked = p.hooked()
    assert hooked == {
        "blocks.0.norm1": "norm",
        "blocks.0.attn": "attention",
        "blocks.0.norm2": "norm",
        "blocks.0.mlp.1": "act",
        "blocks.1.norm1": "norm",
        "blocks.1.attn": "attention",
        "blocks.1.norm2": "norm",
        "blocks.1.mlp.1": "act",
        "norm": "norm",
        "blocks.0": "block",
        "blocks.1": "block",
    }
    report = p.report()
    assert [report[n].kind for n in ("blocks.0.norm1", "blocks.0.attn", "blocks.0")] == ["norm", "attention", "block"]
    assert report["blocks.0.norm1"].stats.channels == 16 and report["blocks.0.norm1"].layout == "last"


def test_selection_by_type_name_kind_registry_name_and_predicate():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), normact.create("rmsnorm", 4), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.SiLU()
    )

    def names(sel, **kw):
        with probe(model, sel, **kw) as p:
            return set(p.hooked())

    assert names(nn.BatchNorm2d) == {"2"}
    assert names("norm") == {"1", "2"}
    assert names("act") == {"3", "5"}
    assert names("kind:act") == {"3", "5"}
    assert names("rmsnorm") == {"1"}
    assert names("layer:rms_norm") == {"1"}
    assert names("relu") == set()  # normact's registered ReLU class, not torch's
    assert names("[04]") == {"0", "4"}  # fnmatch over names
    assert names("name:5") == {"5"}
    assert names(model[4]) == {"4"}
    assert names(lambda name, m: isinstance(m, nn.Conv2d)) == {"0", "4"}
    assert names([nn.ReLU, "1"]) == {"1", "3"}
    with pytest.raises(ValueError, match="kind must be one of"):
        probe(model, "kind:weights")
    with pytest.raises(TypeError, match="module selector"):
        probe(model, 3.5)
    with pytest.raises(ValueError, match="unknown stats"):
        probe(model, stats=["mean", "kurtosis"])
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        probe("model")


def test_hooks_removed_on_exit_and_on_exception():
    model = toy_net()
    before = _hook_count(model)
    with probe(model) as p:
        assert _hook_count(model) > before and p.attached
    assert _hook_count(model) == before and not p.attached
    with pytest.raises(RuntimeError, match="boom"), probe(model, force_attention_weights=True):
        model(toy_batches(1)[0])
        raise RuntimeError("boom")
    assert _hook_count(model) == before

    class Fails(nn.Module):
        def forward(self, x):
            raise ValueError("inside the model")

    bad = nn.Sequential(nn.ReLU(), Fails())
    with pytest.raises(ValueError, match="inside the model"), probe(bad, "act"):
        bad(torch.randn(2, 3))
    assert _hook_count(bad) == 0
    p = probe(model).attach()
    with pytest.raises(RuntimeError, match="already attached"):
        p.attach()
    p.close()
    assert _hook_count(model) == before


def test_report_is_a_snapshot_and_readable_after_exit():
    model = toy_net()
    xs = toy_batches(3)
    with probe(model, sample=1) as p:
        model(xs[0])
        first = p.report()
        model(xs[1])
    model(xs[2])  # after exit: not recorded
    report = p.report()
    assert first["norm"].stats.count == xs[0].shape[0] * 5
    assert report["norm"].stats.count == (xs[0].shape[0] + xs[1].shape[0]) * 5
    p.reset()
    assert len(p.report()) == 0


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_no_activation_is_kept(monkeypatch):
    from normact.probing.accumulators import ActivationStats, Moments, TopK

    monkeypatch.setattr(Moments, "flush_every", 4)  # queued batch summaries are merged every 4 batches
    monkeypatch.setattr(TopK, "flush_every", 4)
    monkeypatch.setattr(ActivationStats, "flush_every", 4)
    model = _resnet("batchnorm2d")
    activation = 8 * 16 * 32 * 32  # elements of one stem output
    gc.collect()
    # tensors that other tests of this worker process left alive (datasets, caches) are not the probe's
    before = {id(o) for o in gc.get_objects() if issubclass(type(o), torch.Tensor) and o.numel() >= activation}
    with torch.no_grad(), probe(model, stats="all") as p:
        for _ in range(4):
            model(torch.randn(8, 3, 32, 32))
        live = _live_tensors()
        for _ in range(8):  # memory does not grow with the number of batches
            model(torch.randn(8, 3, 32, 32))
        assert _live_tensors() == live
        gc.collect()
        big = [
            o
            for o in gc.get_objects()
            if issubclass(type(o), torch.Tensor) and o.numel() >= activation and id(o) not in before
        ]
        assert big == []  # no activation-sized tensor survives a forward pass
        held = _tensor_bytes([r.state() for r in p._records.values()])
        for _ in range(4):
            model(torch.randn(8, 3, 32, 32))
        assert _tensor_bytes([r.state() for r in p._records.values()]) == held
    per_module = held / len(p.report())
    assert per_module < activation * 4 / 10, (per_module, activation)


def _held_storages(obj, out: dict[int, int], depth: int = 0) -> dict[int, int]:
    """data_ptr -> bytes of every tensor storage reachable from ``obj`` (accumulators, queues of batch results)."""
    if isinstance(obj, torch.Tensor):
        out[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    elif depth < 8 and isinstance(obj, dict):
        for v in obj.values():
            _held_storages(v, out, depth + 1)
    elif depth < 8 and isinstance(obj, (list, tuple)):
        for v in obj:
            _held_storages(v, out, depth + 1)
    elif depth < 8 and (hasattr(obj, "__dict__") or hasattr(obj, "__slots__")) and not isinstance(obj, type):
        for name in [*getattr(obj, "__dict__", {}), *getattr(obj, "__slots__", ())]:
            _held_storages(getattr(obj, name, None), out, depth + 1)
    return out


@pytest.mark.parametrize("options", [{}, {"stats": "all", "sample": 1}], ids=["default", "all_stats_every_sample"])
def test_steady_state_writes_in_place(options):
    """glibc's default malloc fragments its heap when a small tensor allocated at one batch outlives the batch
    (a queued batch result, an accumulator replaced by its merge): the resident memory then grows with the number
    of batches. After the first batch the probe allocates nothing that outlives a forward pass: every accumulator
    and every queue of per-batch results keeps its storage through 70 more batches (every merge of the queues,
    at 16 and 64 batches, included), whatever the batch size."""
    model = toy_net(dtype=torch.float32)
    xs = toy_batches(71, dtype=torch.float32)
    with torch.no_grad(), probe(model, **options) as p:
        model(xs[0])
        held = _held_storages(list(p._records.values()), {})
        for x in xs[1:]:
            model(x)
        assert _held_storages(list(p._records.values()), {}) == held
    assert len(held) > 10 * len(p.report())  # the queues are there: state tensors and their buffers


def test_no_host_synchronisation_in_hooks(monkeypatch):
    model = toy_net()
    model.blocks[0].attn = nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    model.blocks[0].attn.forward = _tuple_mha(model.blocks[0].attn)
    xs = toy_batches(2)
    with probe(model, stats="all", force_attention_weights=True) as p:
        model(xs[0])  # first call: records created, blocks settled at the next forward

        def forbidden(*args, **kwargs):
            raise AssertionError("host synchronisation inside a probe hook")

        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        monkeypatch.setattr(torch, "nonzero", forbidden)
        model(xs[1])
        monkeypatch.undo()
    assert p.report()["blocks.0.attn"].entropy.rows > 0


def _tuple_mha(mha):
    forward = mha.forward

    def call(x, *args, **kwargs):
        return forward(x, x, x, *args, **kwargs)

    return call


def test_channel_layouts_nchw_tokens_and_declared_features():
    class LayerNorm2d(nn.LayerNorm):  # timm-style: normalises the channels of NCHW maps
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), LayerNorm2d(6))
    with probe(model) as p:
        model(torch.randn(2, 3, 5, 4))
    r = p.report()
    for name in ("1", "2", "3"):
        assert r[name].layout == "first" and r[name].stats.channels == 6, name
    seq = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Conv1d(5, 5, 1), nn.BatchNorm1d(5))
    with probe(seq, ["norm", "act"]) as p:
        seq(torch.randn(2, 5, 4))  # (B, T=5, C=4) -> (B, 5, 6); BatchNorm1d sees (B, C=5, L=6)
    r = p.report()
    assert (r["1"].layout, r["1"].stats.channels) == ("last", 6)
    assert (r["2"].layout, r["2"].stats.channels) == ("last", 6)
    assert (r["4"].layout, r["4"].stats.channels) == ("first", 5)
    with probe(seq, "act", channel_dim={"2": 1}) as p:
        seq(torch.randn(2, 5, 4))
    assert (p.report()["2"].layout, p.report()["2"].stats.channels) == ("first", 5)
    # per-channel means are those of the right axis
    x = torch.randn(3, 4, 7, 2, dtype=torch.float64) + torch.arange(4.0).view(1, 4, 1, 1) * 10
    act = nn.Identity()
    with probe(act, lambda n, m: True, sample=1) as p:
        act(x)
    torch.testing.assert_close(p.report()[""].stats.moments.mean, x.mean((0, 2, 3)))


def test_a_module_reused_at_two_widths_gets_two_records():
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 3), act)
    with probe(model, "act") as p:
        model(torch.randn(5, 4))
        model(torch.randn(2, 4))
    r = p.report()
    assert r["1"].stats.channels == 8 and r["1[3]"].stats.channels == 3
    assert r["1"].calls == 2 and r["1[3]"].calls == 2


def test_blocks_detected_in_resnets_transformers_and_given_explicitly():
    model = _resnet("batchnorm2d")
    with probe(model, "block") as p:
        model(torch.randn(2, 3, 32, 32))
    # every basic block: those that keep the shape, and the first of stages 2 and 3 (downsampling, same class),
    # which have no residual-branch statistics; not the stem, the shortcuts or the model
    r = p.report()
    assert set(r) == {f"blocks.{i}" for i in range(9)}
    assert [row["module"] for row in r.signal_propagation()] == [f"blocks.{i}" for i in range(9)]
    assert [row["branch_var"] is None for row in r.signal_propagation()] == [i in (3, 6) for i in range(9)]
    plain = _resnet("none")
    with probe(plain, "block") as p:
        plain(torch.randn(2, 3, 32, 32))
    assert set(p.report()) == {f"blocks.{i}" for i in range(9)}
    torch.manual_seed(0)
    gpt = build_model("gpt", norm="layernorm", act="gelu", vocab_size=11, depth=2, dim=16, heads=2, context=8)
    with probe(gpt, "block") as p:
        gpt(torch.randint(0, 11, (2, 8)))
        gpt(torch.randint(0, 11, (2, 8)))
    assert set(p.report()) == {"blocks.0", "blocks.1"}  # not the attention, the MLP or the norm wrappers
    assert p.report()["blocks.0"].calls == 2
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    with probe(encoder, "block") as p:
        encoder(torch.randn(2, 5, 16))
    assert set(p.report()) == {"layers.0", "layers.1"}
    model = toy_net()
    with probe(model, "norm", blocks=["blocks.*.mlp"]) as p:
        model(toy_batches(1)[0])
    r = p.report()
    assert {n for n in r if r[n].kind == "block"} == {"blocks.0.mlp", "blocks.1.mlp"}


def test_signal_propagation_unnormalized_resnet_grows_batchnorm_stays_flat():
    torch.manual_seed(1)
    x = torch.randn(32, 3, 32, 32)
    curves = {}
    for norm in ("none", "batchnorm2d"):
        model = _resnet(norm)
        with torch.no_grad(), probe(model, "block") as p:
            model(x)
        curves[norm] = p.report().signal_propagation()
    plain = [r["avg_var"] for r in curves["none"]]
    bn = [r["avg_var"] for r in curves["batchnorm2d"]]
    assert len(plain) == len(bn) == 9  # blocks 3 and 6 downsample (their shortcut is a conv: variance restarts)
    assert plain[-1] / plain[0] > 50  # variance explodes with depth without normalization
    assert all(b > a for i, (a, b) in enumerate(itertools.pairwise(plain)) if i + 1 not in (3, 6))
    assert max(bn) / min(bn) < 3  # and stays flat with BatchNorm
    assert all(r["branch_var"] > 0 for i, r in enumerate(curves["none"]) if i not in (3, 6))
    assert all(r["avg_sq_mean"] > 0 for r in curves["none"])


def test_signal_propagation_token_layout():
    torch.manual_seed(0)
    vit = build_model("vit", norm="layernorm", act="gelu", in_shape=(3, 8, 8), num_classes=4, dim=16, depth=3, heads=2)
    with probe(vit, "block") as p:
        vit(torch.randn(4, 3, 8, 8))
    rows = p.report().signal_propagation()
    assert [r["module"] for r in rows] == ["blocks.0", "blocks.1", "blocks.2"]
    r0 = p.report()["blocks.0"]
    assert r0.layout == "last" and r0.stats.channels == 16  # (batch, tokens, channels)


def test_massive_activation_detection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), Plant(token=3, channel=7, value=3000.0), nn.LayerNorm(32))
    xs = [torch.randn(4, 10, 16) for _ in range(3)]
    with probe(model, ["act", "norm", Plant], sample=1) as p:
        for x in xs:
            model(x)
    report = p.report()
    found = report.massive_activations()
    assert [(r["module"], r["token"], r["dim"]) for r in found] == [("2", 3, 7)]
    with torch.no_grad():
        h = torch.cat([model[:3](x) for x in xs])
    true_median = float(h.abs().median())
    rec = found[0]
    assert rec["value"] == pytest.approx(float(h[:, 3, 7].abs().max()), rel=1e-6)
    assert rec["ratio"] == pytest.approx(rec["value"] / true_median, rel=0.155)
    assert rec["median"] == pytest.approx(true_median, rel=0.155)
    assert report.massive_activations(min_ratio=1e6) == []
    assert report.massive_activations(min_value=5000) == []
    # a 100x outlier is separated from a 1000x one
    assert [r["dim"] for r in report.massive_activations(min_value=1.0, min_ratio=100.0)] == [7]
    outliers = report.outlier_channels()
    assert {(o["module"], o["channel"]) for o in outliers} == {("2", 7)}


def test_sparsity_and_dead_units():
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.bias[2] = -100.0  # unit 2 never fires after the ReLU
    model = nn.Sequential(lin, nn.ReLU())
    with probe(model, "act", near_zero=0.05, sample=1) as p:
        for _ in range(3):
            model(torch.randn(20, 6))
    r = p.report()
    dead = r.dead_units()
    assert dead == [{"module": "1", "kind": "act", "channels": 5, "dead": 1, "fraction": 0.2, "indices": [2]}]
    (sp,) = r.sparsity()
    y = torch.relu(lin(torch.randn(1000, 6)))
    assert sp["max_channel_zero_fraction"] == 1.0
    assert 0.2 < sp["zero_fraction"] < sp["near_zero_fraction"] <= 1.0
    assert float((y == 0).double().mean()) == pytest.approx(sp["zero_fraction"], abs=0.1)


def test_effective_rank_only_with_cov_and_below_the_feature_limit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 12, bias=False), nn.Identity(), nn.Linear(12, 20), nn.ReLU())
    x = torch.randn(64, 3)
    with probe(model, ["1", "act"]) as p:
        model(x)
    assert p.report().effective_rank() == []
    with probe(model, ["1", "act"], stats="all", max_cov_features=16) as p:
        model(x)
    (er,) = p.report().effective_rank()  # the 20-wide ReLU exceeds max_cov_features
    assert er["module"] == "1" and 1.0 < er["effective_rank"] <= 3.0 + 1e-6


def test_attention_entropy_torch_mha_and_a_module_returning_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(3, 5, 8)
    with probe(mha, "attention") as p:
        out, w = mha(x, x, x)  # default: weights averaged over heads
    w = w.detach()
    assert p.report().attention_entropy()[0]["heads"] == pytest.approx([float(-(w * w.log()).sum(-1).mean())], rel=1e-6)
    with probe(mha, "attention", force_attention_weights=True) as p:
        forced, w_avg = mha(x, x, x)
        _, none = mha(x, x, x, need_weights=False)
        _, per_head = mha(x, x, x, None, True, None, False)  # positional need_weights, average_attn_weights
    torch.testing.assert_close(forced, out)
    torch.testing.assert_close(w_avg, w)  # the caller still gets what it asked for
    assert none is None and per_head.shape == (3, 2, 5, 5)
    ent = p.report().attention_entropy()[0]
    ref = -(per_head * per_head.log()).sum(-1).mean((0, 2))
    torch.testing.assert_close(
        torch.tensor(ent["heads"], dtype=torch.float64), ref.detach().double(), rtol=1e-6, atol=1e-6
    )
    assert ent["rows"] == 3 * 3 * 5
    toy = ToyAttention(8, 4)
    with probe(toy, "attention") as p:
        _, w = toy(x)
    heads = p.report().attention_entropy()[0]["heads"]
    assert len(heads) == 4
    ref = -(w * w.log()).sum(-1).mean((0, 2)).detach().double()
    torch.testing.assert_close(torch.tensor(heads, dtype=torch.float64), ref, rtol=1e-6, atol=0)
    block = ToyBlock(8, 2)
    with probe(block, "attention") as p:  # a module returning a plain tensor exposes nothing
        block(x)
    assert [r for r in p.report().attention_entropy() if r["module"] != "attn"] == []


def test_gradients_flow_and_outputs_unchanged():
    model = toy_net()
    x = toy_batches(1)[0]
    ref = model(x)
    with probe(model, stats="all") as p:
        y = model(x)
        y.sum().backward()
    torch.testing.assert_close(y, ref)
    assert all(q.grad is not None for q in model.parameters())
    assert len(p.report()) > 0


@pytest.mark.slow
def test_compiled_reductions_match_eager():
    model = toy_net(dtype=torch.float32)
    xs = toy_batches(3, dtype=torch.float32)
    reports = []
    for compile in (False, True):
        with probe(model, compile=compile) as p:
            for x in xs:
                model(x)
        reports.append(p.report())
    eager, compiled = reports
    assert list(eager) == list(compiled)
    for name in eager:
        a, b = eager[name], compiled[name]
        if a.stats is None:
            continue
        torch.testing.assert_close(a.stats.moments.m, b.stats.moments.m, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.stats.cmax, b.stats.cmax) and torch.equal(a.stats.nonzero, b.stats.nonzero)
        assert (a.stats.hist.counts - b.stats.hist.counts).abs().sum() <= 2  # float32 log10 at a bin edge
        torch.testing.assert_close(a.stats.topk.abs, b.stats.topk.abs)


def test_normact_probe_is_the_factory():
    assert normact.probe is normact.probing.probe
    assert normact.probing.Report is Report
    import normact.probing as package

    assert package.probe is normact.probe  # the package and the function do not shadow each other


def test_inference_mode_and_no_grad_batches_mix():
    model = toy_net()
    xs = toy_batches(4)
    with probe(model, stats="all", sample=1) as p:
        with torch.inference_mode():
            model(xs[0])
        with torch.no_grad():
            model(xs[1])
        model(xs[2])
        with torch.inference_mode():
            model(xs[3])
    assert p.report()["norm"].stats.count == sum(x.shape[0] for x in xs) * 5


def test_minimal_stats_degrade_gracefully(tmp_path):
    model = toy_net()
    with probe(model, stats=[]) as p:
        model(toy_batches(1)[0])
    r = p.report()
    assert r["norm"].stats.moments.higher is False and r["norm"].stats.hist is None
    assert r.massive_activations() == r.sparsity() == r.dead_units() == r.attention_entropy() == []
    assert [row["module"] for row in r.signal_propagation()] == ["blocks.0", "blocks.1"]
    assert "kurtosis" not in r.summary()[0] and r.table().row_count == len(r)
    assert [f.name for f in r.plot(tmp_path)] == ["signal_propagation.png"]
    Report.from_json(r.to_json())


def test_report_type():
    model = toy_net()
    with probe(model) as p:
        model(toy_batches(1)[0])
    assert isinstance(p.report(), Report)
    assert "norm" in repr(p.report())


def _stats_states(report):
    return {n: [r.stats and r.stats.state(), r.branch and r.branch.state()] for n, r in report.records.items()}


def test_sampling_reads_every_kth_sample_of_each_batch():
    from tests.probe.test_report import assert_states_equal

    model = toy_net()  # samples are independent: a sample's outputs do not depend on the others
    xs = toy_batches(5, sizes=[7, 3, 1, 6, 4])
    with probe(model, sample=3) as p:
        for x in xs:
            model(x)
    with probe(model, sample=1) as q:
        for x in xs:
            model(x[::3])  # samples 0, 3, 6 of each batch
    with probe(model, sample=1) as h:
        for x in xs:
            model(x[:: 3 * SPARSE])  # the zero counts and the histogram read one in SPARSE of the samples read
    sampled, ref, ref_sparse = (_stats_states(r.report()) for r in (p, q, h))
    for name in ref:
        if ref[name][0] is not None:
            for part in ("hist", "zeros"):
                assert_states_equal(sampled[name][0].pop(part), ref_sparse[name][0][part])
                ref[name][0].pop(part)
    assert_states_equal(sampled, ref)
    assert p.report().config["sample"] == 3
    assert p.report()["norm"].stats.count == sum(len(range(0, x.shape[0], 3)) for x in xs) * 5
    with pytest.raises(ValueError, match="sample must be an int"):
        probe(model, sample=0)


@pytest.mark.parametrize("make", ["toy", "resnet"])
def test_staged_groups_equal_reducing_each_output_alone(monkeypatch, make):
    """Outputs of one shape are staged and reduced together at the end of the forward pass; each record gets what
    reducing its output alone gives."""
    from tests.probe.test_report import assert_states_equal

    probe_module = __import__("sys").modules["normact.probing.probe"]
    model = toy_net() if make == "toy" else _resnet("batchnorm2d")
    xs = toy_batches(3) if make == "toy" else [torch.randn(6, 3, 32, 32) for _ in range(2)]

    def run():
        with torch.no_grad(), probe(model, sample=2) as p:
            for x in xs:
                model(x)
        return p.report()

    staged = run()
    monkeypatch.setattr(probe_module, "_STAGE_BYTES", 0)  # every output reduced alone, in its hook
    alone = run()
    assert list(staged) == list(alone)
    rtol = 1e-10 if make == "toy" else 1e-5  # float32 sums may round differently in a bigger reduction
    assert_states_equal(staged.state(), alone.state(), rtol=rtol, atol=1e-6)


class _NormEnd(nn.Module):
    """A residual block returning its norm's output, or that output shifted in place after the norm."""

    def __init__(self, shift: float | None) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.shift = shift

    def forward(self, x):
        y = self.norm(x + self.lin(x))
        if self.shift is not None:
            y.add_(self.shift)  # the same tensor object, modified after the norm's hook
        return y


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_a_block_returning_its_norms_output_reuses_it_unless_modified(mode):
    torch.manual_seed(0)
    model = nn.Sequential(_NormEnd(None), _NormEnd(2.0))
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx(), probe(model, ["norm", "block"], sample=1) as p:
        for _ in range(3):
            model(torch.randn(4, 5, 8))
    r = p.report()
    assert {n: r[n].kind for n in r} == {"0.norm": "norm", "0": "block", "1.norm": "norm", "1": "block"}
    same, norm = r["0"].stats.state(), r["0.norm"].stats.state()
    for part in ("moments", "minmax", "zeros", "hist", "topk"):
        assert str(same[part]) == str(norm[part]), part  # the block's statistics are its norm's
    shifted, inner = r["1"].stats.moments, r["1.norm"].stats.moments
    torch.testing.assert_close(shifted.mean, inner.mean + 2.0)
    torch.testing.assert_close(shifted.var, inner.var)
    torch.testing.assert_close(r["1"].stats.cmax, r["1.norm"].stats.cmax + 2.0)
