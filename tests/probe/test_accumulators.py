"""The accumulators against direct float64 computations over the concatenated data, and their exact merge."""

from __future__ import annotations

import math

import pytest
import torch

from normact.probing.accumulators import (
    HIST_BINS,
    ActivationStats,
    Covariance,
    EntropyStats,
    Histogram,
    Moments,
    TopK,
    hist_edges,
)

ALL = frozenset({"kurtosis", "minmax", "topk", "zeros", "hist", "cov"})


def _batches(first: bool, n: int = 4, c: int = 6, s: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        b = 2 + i
        x = torch.randn(b, c, s, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, c).view(1, c, 1)
        x = x + 100.0  # a large offset: the merge must not lose the variance
        x[:, 0] = torch.relu(x[:, 0] - 100.0)  # a channel with exact zeros
        x[:, 1] = -1.0  # a dead (never positive), constant channel
        out.append(x if first else x.transpose(1, 2).contiguous())
    return out


def _rows(xs, first):
    return torch.cat([x.transpose(1, 2).reshape(-1, x.shape[1]) if first else x.reshape(-1, x.shape[2]) for x in xs])


@pytest.mark.parametrize("first", [True, False], ids=["channels_first", "channels_last"])
def test_moments_match_float64_over_all_data(first):
    xs = _batches(first)
    m = Moments(6)
    for x in xs:
        m.update(x, first)
    rows = _rows(xs, first)
    assert m.count == rows.shape[0]
    torch.testing.assert_close(m.mean, rows.mean(0), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(m.var, rows.var(0, unbiased=False), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(m.mean_square, rows.square().mean(0), rtol=1e-13, atol=0)
    d = rows - rows.mean(0)
    kurt = rows.shape[0] * d.pow(4).sum(0) / d.square().sum(0) ** 2
    ok = torch.arange(6) != 1  # channel 1 is constant: kurtosis undefined (NaN)
    torch.testing.assert_close(m.kurtosis[ok], kurt[ok], rtol=1e-10, atol=0)
    assert math.isnan(float(m.kurtosis[1]))
    n, pooled = m.pooled()
    flat = rows.flatten()
    assert n == flat.numel()
    torch.testing.assert_close(pooled[0], flat.mean(), rtol=1e-13, atol=0)
    dd = flat - flat.mean()
    torch.testing.assert_close(
        pooled[1:], torch.stack([dd.square().sum(), dd.pow(3).sum(), dd.pow(4).sum()]), rtol=1e-10, atol=1e-9
    )


def test_histogram_bins_median_and_fraction():
    edges = hist_edges()
    assert edges.numel() == HIST_BINS and edges[0] == 0 and edges[-1] == math.inf
    assert float(edges[1]) == 2.0**-129 and float(edges[8]) == 2.0**-126  # denormals, then 8 bins per octave
    one = (0x3F800000 >> 20) + torch.arange(9)  # the bins of [1, 2): 1, 1.125, ..., 1.875, then 2
    assert edges[one].tolist() == [1 + i / 8 for i in range(9)]
    ratios = edges[9:-1] / edges[8:-2]
    assert float(ratios.max()) == 1.125 and float(ratios.min()) > 1.06  # each bin spans a factor <= 1.125
    x = torch.tensor([0.0, 1e-12, 1.0, 1.0001, -5.0, 1e11, float("inf"), float("nan"), -float("nan"), 1.5 * 2.0**-129])
    h = Histogram()
    h.update(x)
    counts = h.values
    assert counts.dtype == torch.int64 and int(counts.sum()) == 8 and h.nans == 2
    assert int(counts[0]) == 1 and int(counts[1]) == 1  # 0; 1.5 * 2**-129 (a denormal) in [2**-129, 2**-128)
    assert int(counts[-1]) == 1  # +inf
    assert int(counts[one[0]]) == 2  # [1, 1.125) holds 1.0 and 1.0001
    assert int(counts[(0x40A00000 >> 20)]) == 1  # |-5| = 1.25 * 4: the first bin of [4, 8)
    for v in (1e-12, 1e11):
        b = int(torch.searchsorted(edges, torch.tensor([v], dtype=torch.float64), right=True)) - 1
        assert int(counts[b]) == 1 and edges[b] <= v < edges[b + 1]
    as64 = Histogram()
    as64.update(x.double())  # float64 is binned after rounding to float32
    assert torch.equal(as64.counts, h.counts)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(100_000, generator=g).abs() * 3.7
    h = Histogram()
    h.update(y)
    true = float(y.median())
    assert abs(h.quantile(0.5) / true - 1) < 0.01  # interpolated: far inside one bin (12.5%)
    assert abs(h.quantile(0.9) / float(y.quantile(0.9)) - 1) < 0.01
    assert h.quantile(0.0) == 0.0 and h.quantile(1.0) <= 2 * float(y.max())
    for t in (0.5, 1.0, 2.0, 1.125):  # bin edges: exact
        assert h.fraction_below(t) == float((y < t).double().mean())


def test_histc_path_in_chunks_equals_bincount(monkeypatch):
    """The CUDA path (histc over float slots, in chunks) counts like the CPU path (bincount)."""
    import normact.probing.accumulators as acc

    x = torch.cat([torch.rand(100) * 10, torch.tensor([0.0, float("nan"), 1e12, -float("inf")])])
    idx = Histogram.index(x)
    ref = acc.slot_counts(idx)
    monkeypatch.setattr(acc, "_HISTC_EXACT", 7)
    got = acc._histc_counts(idx)
    assert torch.equal(got, ref) and int(got.sum()) == 104 and int(got[HIST_BINS:].sum()) == 1


@pytest.mark.parametrize("first", [True, False], ids=["channels_first", "channels_last"])
def test_topk_is_the_top_of_per_position_maxima(first):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 4, 10, generator=g, dtype=torch.float64) for _ in range(5)]
    if not first:
        xs = [x.transpose(1, 2).contiguous() for x in xs]
    t = TopK(6)
    for x in xs:
        t.update(x, x.abs(), first)
    allx = torch.cat(xs)  # (N, C, S) or (N, S, C)
    idx = allx.abs().argmax(0, keepdim=True)
    best = allx.gather(0, idx)[0]  # signed value of the largest |x| per position
    flat = best.flatten()
    top = flat.abs().topk(6)
    recs = t.records()
    assert [r["abs"] for r in recs] == top.values.tolist()
    for r, i in zip(recs, top.indices.tolist(), strict=True):
        c, s = (i // 10, i % 10) if first else (i % 4, i // 4)
        assert (r["channel"], r["token"]) == (c, s)
        assert r["value"] == float(flat[i])
    positions = {(r["token"], r["channel"]) for r in recs}
    assert len(positions) == 6  # distinct positions, although every batch hits the same ones


def test_topk_with_fewer_positions_than_k_and_empty_slots():
    t = TopK(10)
    x = torch.tensor([[[1.0, -5.0, 2.0]]], dtype=torch.float64)  # (B=1, S=1, C=3)
    t.update(x, x.abs(), first=False)
    t.update(x * 0.5, (x * 0.5).abs(), first=False)
    recs = t.records()
    assert [(r["channel"], r["value"]) for r in recs] == [(1, -5.0), (2, 2.0), (0, 1.0)]
    assert t.token[3:].eq(-1).all() and t.abs[3:].eq(-math.inf).all()


def test_covariance_and_effective_rank():
    g = torch.Generator().manual_seed(2)
    basis = torch.randn(3, 8, generator=g, dtype=torch.float64)
    xs = [(torch.randn(5, 4, 3, generator=g, dtype=torch.float64) @ basis) + 7.0 for _ in range(3)]  # (B, S, C)
    cov = Covariance(8)
    for x in xs:
        cov.update(x, first=False)
    rows = torch.cat([x.reshape(-1, 8) for x in xs])
    torch.testing.assert_close(cov.comoment / cov.count, torch.cov(rows.T, correction=0), rtol=1e-10, atol=1e-10)
    er = cov.effective_rank()
    assert 1.0 < er <= 3.0 + 1e-6  # rank-3 data
    iso = Covariance(4)
    iso.update(torch.eye(4, dtype=torch.float64).repeat(50, 1).view(1, 200, 4) - 0.25, first=False)
    assert iso.effective_rank() == pytest.approx(3.0, rel=1e-6)  # centred one-hots span 3 equal directions


def test_entropy_per_head():
    w = torch.softmax(torch.randn(2, 3, 4, 5, dtype=torch.float64), -1)
    w[0, 1, 0] = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)  # a zero-entropy row with exact zeros
    e = EntropyStats(3)
    e.update(w)
    ref = -(w * w.clamp_min(1e-300).log()).sum(-1).mean((0, 2))
    torch.testing.assert_close(e.mean, ref)
    avg = EntropyStats(1)
    avg.update(w.mean(1))  # (B, T, S): averaged over heads
    assert avg.rows == 8


def _state_equal(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9, equal_nan=True, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _state_equal(a[k], b[k], f"{path}.{k}")
    else:
        assert a == b, path


@pytest.mark.parametrize("first", [True, False], ids=["channels_first", "channels_last"])
def test_two_halves_merge_into_the_whole(first):
    xs = _batches(first, n=6)
    whole, a, b = (ActivationStats(6, ALL, topk=5, near_zero=0.5) for _ in range(3))
    for i, x in enumerate(xs):
        whole.update(x, first)
        (a if i < 2 else b).update(x, first)
    merged = ActivationStats.from_state(a.state()).merge_(b)
    _state_equal(merged.state(), whole.state())
    assert int(whole.zeros[1]) == 0 and int(whole.zeros[0]) > 0
    assert float(whole.cmax[1]) == -1.0  # the dead channel


def test_merge_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="channels"):
        ActivationStats(3, ALL).merge_(ActivationStats(4, ALL))
    with pytest.raises(ValueError, match="heads"):
        EntropyStats(2).merge_(EntropyStats(3))
    with pytest.raises(ValueError, match="top-3"):
        TopK(4).merge_(TopK(3))


@pytest.mark.parametrize("p", [100, 5000, 16384, 65536 + 13, 196608])
def test_top_rows_through_block_maxima_equals_topk(p):
    from normact.probing.accumulators import top_flat, top_rows

    g = torch.Generator().manual_seed(p)
    v = torch.randn(3, p, generator=g)
    v[1, p // 3] = float("nan")  # NaN ranks first, as in topk
    for k in (1, 16):
        top, idx = top_rows(v, k)
        ref = v.topk(min(k, p), dim=1)
        assert torch.equal(top, ref.values) or torch.allclose(top, ref.values, equal_nan=True)
        assert torch.equal(idx, ref.indices)
        assert torch.equal(top_flat(v[2], k)[1], ref.indices[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("first", [True, False], ids=["channels_first", "channels_last"])
@pytest.mark.parametrize("b", [1, 3])
def test_grouped_reductions_equal_each_batch_alone(first, dtype, b):
    """batch_reductions over G batches at once gives each batch the results it gets alone."""
    from normact.probing.accumulators import batch_reductions, member

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, b, 6, 50, generator=g, dtype=dtype) * 2 + 0.5  # (G, B, C, S) or (G, B, S=6, C=50)
    x[1] = x[1].relu()  # exact zeros
    x[2, :, 0] = 1e-4  # near zeros
    x[3, 0, 2, 7] = -300.0  # a large negative value: the top-k keeps its sign
    args = (first, True, True, True, 1e-3, True, 5)
    grouped = batch_reductions(x, *args)
    for i in range(4):
        alone = member(batch_reductions(x[i : i + 1], *args), 0)
        part = member(grouped, i)
        torch.testing.assert_close(part["rows"], alone["rows"], rtol=1e-6, atol=1e-6)
        assert torch.equal(part["counts"], alone["counts"]) and torch.equal(part["hist"], alone["hist"])
        for a, c in zip(part["topk"][:4], alone["topk"][:4], strict=True):
            assert torch.equal(a, c)
    top, hi, lo = member(grouped, 3)["topk"][:3]
    assert float(top[0]) == 300.0 and float(lo[0]) == -300.0 and float(hi[0]) < 300.0  # the sign comes from lo
    rows = member(grouped, 2)["rows"]
    ref = x[2].transpose(0, 1).reshape(6, -1) if first else x[2].reshape(-1, 50).T  # (C, n)
    torch.testing.assert_close(rows[0], ref.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows[1], ((ref - ref.mean(1, keepdim=True)) ** 2).sum(1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rows[-2], ref.amin(1))
    torch.testing.assert_close(rows[-1], ref.amax(1))
    counts = member(grouped, 1)["counts"]
    ref1 = x[1].transpose(0, 1).reshape(6, -1) if first else x[1].reshape(-1, 50).T
    assert counts[0].tolist() == (ref1 != 0).sum(1).tolist()
    assert counts[1].tolist() == (ref1.abs() > torch.tensor(1e-3, dtype=dtype)).sum(1).tolist()


@pytest.mark.parametrize("first", [True, False], ids=["channels_first", "channels_last"])
def test_from_state_owns_its_tensors(first):
    """Merges write the accumulators in place (normact.probing._staging), so an accumulator built from a state
    must copy it: merging into it leaves the state it came from, and the accumulator that gave it, unchanged."""
    import copy

    xs = _batches(first, n=6)
    a, b = ActivationStats(6, ALL, topk=5, near_zero=0.5), ActivationStats(6, ALL, topk=5, near_zero=0.5)
    for i, x in enumerate(xs):
        (a if i < 3 else b).update(x, first)
    state = a.state()
    before = copy.deepcopy(state)
    ActivationStats.from_state(state).merge_(b)
    _state_equal(state, before)
    _state_equal(a.state(), before)
