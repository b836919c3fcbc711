"""Report: exact merge of two halves into the whole, JSON round trip, table, PNG figures."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from normact.probing import Report, probe
from tests.probe._models import toy_batches, toy_net


def assert_states_equal(a, b, path="", rtol=1e-10, atol=1e-9):
    """Every statistic of two report states agrees: integers and top-k positions exactly, floats to float64
    rounding."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point():
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=rtol, atol=atol, equal_nan=True, msg=path)
        else:
            assert torch.equal(a.cpu(), b.cpu()), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            assert_states_equal(a[k], b[k], f"{path}.{k}", rtol, atol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_states_equal(x, y, f"{path}[{i}]", rtol, atol)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    elif isinstance(a, float):
        assert a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=atol), (path, a, b)
    else:
        assert a == b, (path, a, b)


def run(model, batches, **kw) -> Report:
    with probe(model, stats="all", force_attention_weights=True, **kw) as p:
        for x in batches:
            model(x)
    return p.report()


def _mha_net():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.norm = nn.LayerNorm(16)
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.inp(x)
            return self.act(self.norm(h + self.attn(h, h, h)[0]))

    torch.manual_seed(0)
    return Net().double()


@pytest.mark.parametrize("make", [toy_net, _mha_net], ids=["toy", "mha"])
def test_two_halves_merge_into_the_whole(make):
    model = make()
    xs = toy_batches(7)
    whole = run(model, xs)
    first, second = run(model, xs[:3]), run(model, xs[3:])
    merged = first.merge(second)
    assert list(merged) == list(whole)
    assert_states_equal(merged.state(), whole.state())
    for analysis in ("summary", "signal_propagation", "sparsity", "dead_units", "effective_rank", "attention_entropy"):
        assert_states_equal(
            json.loads(json.dumps(getattr(merged, analysis)(), default=str)),
            json.loads(json.dumps(getattr(whole, analysis)(), default=str)),
            analysis,
            rtol=1e-9,
            atol=1e-12,
        )
    assert merged.massive_activations(1.0, 1.0) == whole.massive_activations(1.0, 1.0)
    kinds = {r.kind for r in whole.records.values()}
    assert {"norm", "act", "attention"} <= kinds


def test_merge_keeps_modules_seen_in_one_part_and_rejects_other_stats():
    model = toy_net()
    xs = toy_batches(2)
    a = run(model, xs[:1], modules="norm")
    b = run(model, xs[1:], modules="act")
    merged = a.merge(b)
    assert set(merged) == set(a) | set(b)
    c = run(model, xs[1:], modules="norm")
    with probe(model, "norm", stats=["minmax"]) as p:
        model(xs[0])
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(p.report())
    assert a.merge(c)["norm"].stats.count == a["norm"].stats.count + c["norm"].stats.count


def test_json_round_trip_is_exact(tmp_path):
    model = toy_net()
    report = run(model, toy_batches(3))
    text = report.to_json(tmp_path / "report.json")
    doc = json.loads(text)  # strict JSON: no NaN or Infinity literals
    json.dumps(doc, allow_nan=False)
    assert doc["format"] == "normact.probe.report" and doc["summary"] and doc["signal_propagation"]
    for source in (text, tmp_path / "report.json", str(tmp_path / "report.json")):
        back = Report.from_json(source)
        assert list(back) == list(report)
        assert_states_equal(back.state(), report.state(), rtol=0, atol=0)
    assert back.config == report.config
    with pytest.raises(ValueError, match="not a normact probe report"):
        Report.from_json('{"format": "other"}')


def test_table_and_print():
    from rich.console import Console

    model = toy_net()
    report = run(model, toy_batches(2))
    console = Console(record=True, width=200)
    report.print(console)
    text = console.export_text()
    assert "blocks.0.norm1" in text and "attention" in text and "erank" in text
    assert report.table().row_count == len(report)


def test_plots_are_pngs(tmp_path):
    model = toy_net()
    report = run(model, toy_batches(2))
    written = report.plot(tmp_path / "figs")
    assert {p.name for p in written} == {
        "signal_propagation.png",
        "magnitudes.png",
        "sparsity.png",
        "attention_entropy.png",
    }
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "figs").iterdir() if p.name.startswith(".")]  # no temporary files left
    empty = Report()
    assert empty.plot(tmp_path / "none") == []
    with pytest.raises(ValueError, match="nothing to plot"):
        empty.plot_attention_entropy(tmp_path / "x.png")


def test_quantile_and_lookup_errors():
    model = toy_net()
    report = run(model, toy_batches(2))
    assert 0 < report.quantile("norm", 0.5) < report.quantile("norm", 0.99)
    with pytest.raises(KeyError, match="no probed module"):
        report["nope"]
    with pytest.raises(ValueError, match="q must be"):
        report.quantile("norm", 2)
    assert report.to("cpu")["norm"].stats.count == report["norm"].stats.count
