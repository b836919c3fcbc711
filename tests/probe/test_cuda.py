"""The probe on a CUDA device (skipped without one): no host synchronisation in hooks or queued merges, the
histc histogram path, and the exact merge of two halves."""

from __future__ import annotations

import pytest
import torch

from normact.probing import probe
from normact.probing.accumulators import ActivationStats, Moments, TopK
from tests.probe._models import toy_batches, toy_net
from tests.probe.test_report import assert_states_equal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _run(model, xs, **kw):
    with probe(model, stats="all", force_attention_weights=True, **kw) as p:
        for x in xs:
            model(x)
    return p.report()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_synchronisation_on_cuda(monkeypatch, dtype):
    monkeypatch.setattr(Moments, "flush_every", 2)  # queued merges run inside the checked region too
    monkeypatch.setattr(TopK, "flush_every", 2)
    monkeypatch.setattr(ActivationStats, "flush_every", 2)
    model = toy_net(dtype=dtype).cuda()
    xs = [x.cuda() for x in toy_batches(6, dtype=dtype)]
    with torch.no_grad(), probe(model, stats="all") as p:
        model(xs[0])
        model(xs[1])  # records created, blocks settled
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for x in xs[2:]:
                model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    report = p.report()
    assert report["norm"].stats.count == sum(x.shape[0] for x in xs) * 5


def test_two_halves_merge_into_the_whole_on_cuda():
    model = toy_net().cuda()
    xs = [x.cuda() for x in toy_batches(7)]
    whole = _run(model, xs)
    merged = _run(model, xs[:3]).merge(_run(model, xs[3:]))
    assert_states_equal(merged.state(), whole.state())
    cpu = _run(toy_net(), toy_batches(7))
    for name in whole:  # the histc (CUDA) and index_add_ (CPU) histograms agree up to float rounding at edges
        a, b = whole[name].stats, cpu[name].stats
        if a is not None:
            assert (a.hist.counts.cpu() - b.hist.counts).abs().sum() <= 2, name
            torch.testing.assert_close(a.moments.m.cpu(), b.moments.m, rtol=1e-9, atol=1e-9)


def test_compiled_on_cuda():
    model = toy_net(dtype=torch.float32).cuda()
    xs = [x.cuda() for x in toy_batches(3, dtype=torch.float32)]
    eager, compiled = _run(model, xs), _run(model, xs, compile=True)
    for name in eager:
        if eager[name].stats is not None:
            torch.testing.assert_close(
                eager[name].stats.moments.m, compiled[name].stats.moments.m, rtol=1e-5, atol=1e-5
            )
