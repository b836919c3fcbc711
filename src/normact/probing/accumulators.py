"""Mergeable running statistics of activations, kept on the tensors' device.

Each accumulator folds a batch in with :meth:`update` (no host synchronisation: counts come from shapes,
every other quantity stays a device tensor) and combines with another accumulator of the same
configuration with :meth:`merge_`. Merging the accumulators of two parts of a data set gives the
accumulator of the whole, to float64 rounding: moments combine by the exact identities of Chan et al. (1979)
and Pébay (2008), the other statistics are sums, minima, maxima or bounded top-k selections.

A batch is seen in one of two canonical 3-D views, ``(B, C, S)`` (channels first: NCHW maps flattened)
or ``(B, S, C)`` (channels last: token sequences), ``S`` being the flattened token (spatial) positions.
Per-batch reductions run in float32 (float64 for float64 input); accumulators are float64 (counts int64).
The per-batch reductions are one pure function, :func:`batch_reductions`, that makes few passes over the
batch (see its docstring): everything that is not a moment reads the integer bit patterns of |x| (the counts,
the top-k and the histogram, whose bins are float32 bit patterns: no logarithm per element).
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import torch
from torch import Tensor

from normact.probing._staging import SlotQueue
from normact.probing._topk import TopK, top_flat, top_rows, topk_candidates

__all__ = [
    "HIST_BINS",
    "HIST_SHIFT",
    "HIST_SLOTS",
    "ActivationStats",
    "Covariance",
    "EntropyStats",
    "Histogram",
    "Moments",
    "TopK",
    "batch_reductions",
    "hist_edges",
    "member",
    "slot_counts",
    "top_flat",
    "top_rows",
    "topk_candidates",
]

# The histogram of |x| counts float32 bit patterns: the slot of |x| is its float32 bits >> HIST_SHIFT (exponent
# and 3 leading mantissa bits), HIST_SLOTS slots in all. Slots [0, HIST_BINS) are the bins of |x| (the last one
# is +inf: 0x7F8 << 20 is float32 infinity), slots [HIST_BINS, HIST_SLOTS) hold NaN.
HIST_SHIFT = 20
HIST_SLOTS = 1 << (31 - HIST_SHIFT)
HIST_BINS = (0x7F800000 >> HIST_SHIFT) + 1
_HISTC_EXACT = 1 << 24  # float32 histc counts are exact integers up to 2**24 per call
_ABS32 = 0x7FFFFFFF
# float dtype -> (integer view of the same width, mask of the sign bit off, struct formats of both)
_INT_VIEW = {
    torch.float32: (torch.int32, _ABS32, "<f", "<i"),
    torch.float64: (torch.int64, (1 << 63) - 1, "<d", "<q"),
}


def hist_edges() -> Tensor:
    """The lower edge of every histogram bin, float64: bin ``i`` holds |x| from ``edges[i]`` up to (excluding)
    ``edges[i + 1]``; bin 0 starts at 0 and the last bin, +inf, at +inf."""
    return (torch.arange(HIST_BINS, dtype=torch.int32) << HIST_SHIFT).view(torch.float32).to(torch.float64)


@torch.compiler.disable  # dynamo's struct polyfill recurses; a graph break here is harmless
@functools.cache
def _bits(value: float, dtype: torch.dtype) -> int:
    """The bit pattern of ``value`` rounded to ``dtype`` (float32 or float64), as a signed integer."""
    _, _, f, i = _INT_VIEW[dtype]
    return struct.unpack(i, struct.pack(f, value))[0]


_CONSTANTS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}  # see _const


def _const(value: int, dtype: torch.dtype, device: torch.device) -> Tensor | int:
    """A cached 0-dim CPU integer tensor: as an operand it is not wrapped and converted at every call as a Python
    scalar is (a few microseconds per operation, which add up over many small hooked tensors). Other devices get
    the Python scalar (a device constant would cost a synchronising copy when created)."""
    if device.type != "cpu":
        return value
    key = (value, dtype, device)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(value, dtype=dtype, device=device)
    return t


def _work(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _dims(first: bool) -> tuple[int, int]:
    return (0, 2) if first else (0, 1)


def _chan(v: Tensor, first: bool) -> Tensor:
    """Broadcast a per-channel (C,) vector against the canonical 3-D view."""
    return v.view(1, -1, 1) if first else v.view(1, 1, -1)


def _host_to_device(values: list[float], device: torch.device) -> Tensor:
    """A float64 tensor of host values on ``device`` without a synchronising copy (pinned, non-blocking)."""
    t = torch.tensor(values, dtype=torch.float64)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _combine(counts: Tensor, rows: Tensor) -> Tensor:
    """Merge G groups of moments at once: ``counts`` (G,) float64, ``rows`` (G, 2 or 4, C) ``[mean, M2, M3,
    M4]`` -> (2 or 4, C). Exact identities (Pébay 2008): with ``d_g = mean_g - mean``,
    ``M2 = sum M2_g + n_g d_g^2``, ``M3 = sum M3_g + 3 d_g M2_g + n_g d_g^3``,
    ``M4 = sum M4_g + 4 d_g M3_g + 6 d_g^2 M2_g + n_g d_g^4``."""
    n = counts.view(-1, 1)
    total = counts.sum()
    mean = (n * rows[:, 0]).sum(0) / total
    d = rows[:, 0] - mean
    d2 = d * d
    out = [mean, (rows[:, 1] + n * d2).sum(0)]
    if rows.shape[1] == 4:
        m2, m3 = rows[:, 1], rows[:, 2]
        out.append((m3 + 3 * d * m2 + n * d2 * d).sum(0))
        out.append((rows[:, 3] + 4 * d * m3 + 6 * d2 * m2 + n * d2 * d2).sum(0))
    return torch.stack(out)


def _rdims(x: Tensor, first: bool) -> tuple[int, int]:
    """The reduced axes of a canonical batch: 3-D ``(B, C, S)``/``(B, S, C)``, or 4-D with a leading group axis
    ``(G, B, C, S)``/``(G, B, S, C)`` (G batches reduced at once, one result per batch)."""
    lead = x.dim() - 3
    return (lead, lead + 2) if first else (lead, lead + 1)


def _per_channel(v: Tensor, x: Tensor, first: bool) -> Tensor:
    """Broadcast per-channel values (``(C,)``, or ``(G, C)`` for a grouped batch) against ``x``."""
    lead = v.shape[:-1]
    return v.view(*lead, 1, -1, 1) if first else v.view(*lead, 1, 1, -1)


def _moment_rows(x: Tensor, first: bool, higher: bool) -> list[Tensor]:
    """``[mean, M2, (M3, M4)]`` per channel of a canonical batch (3-D, or 4-D grouped): one centred copy and its
    square, powers taken in place, four reductions."""
    dims = _rdims(x, first)
    mean = x.mean(dims)
    d = x - _per_channel(mean, x, first)
    d2 = d * d
    rows = [mean, d2.sum(dims)]
    if higher:
        rows.append(d.mul_(d2).sum(dims))  # d^3, in place
        rows.append(d2.mul_(d2).sum(dims))  # d^4, in place
    return rows


class Moments:
    """Per-channel count, mean and central moment sums M2 (and M3, M4 when ``higher``), float64.

    ``count`` is a host integer (elements per channel); the state is one ``(2 or 4, C)`` tensor
    ``[mean, M2, M3, M4]``. Each batch is reduced around its own mean (in float32, float64 for float64 input)
    and queued; queued batches are merged in float64, all at once, every ``flush_every`` batches and before
    any read (:func:`_combine`, the multi-group form of Chan et al. 1979 and Pébay 2008), so the variance and
    kurtosis keep float64 accuracy whatever the offset of the data and a hook launches few kernels. The queue
    is a buffer allocated at the first batch and the merge writes the state in place, so that after it nothing
    allocated for a batch outlives it (see :mod:`normact.probing._staging`: that keeps the heap from
    fragmenting).
    """

    flush_every = 16

    def __init__(self, channels: int, *, higher: bool = True, device: Any = None) -> None:
        self._count = 0
        self.higher = higher
        self._m = torch.zeros(4 if higher else 2, channels, dtype=torch.float64, device=device)
        self._ns: list[int] = []  # counts of the queued batches, whose rows wait in _queue (allocated once)
        self._queue = SlotQueue()

    @property
    def channels(self) -> int:
        return self._m.shape[1]

    @property
    def count(self) -> int:
        return self._count + sum(self._ns)

    @property
    def m(self) -> Tensor:
        self.flush()
        return self._m

    @staticmethod
    def batch(x: Tensor, first: bool, higher: bool) -> Tensor:
        """The (2 or 4, C) moment rows ``[mean, M2, M3, M4]`` of one canonical 3-D batch (in the working
        precision), centred on the batch mean."""
        return torch.stack(_moment_rows(_work(x), first, higher))

    def update(self, x: Tensor, first: bool) -> None:
        n = x.numel() // x.shape[1 if first else 2]
        if n:
            self.add_batch(n, Moments.batch(x, first, self.higher))

    def add_batch(self, n: int, rows: Tensor) -> None:
        """Queue the moment rows of a batch of ``n`` elements per channel (from :meth:`batch`)."""
        self._ns.append(n)
        if self._queue.push(self.flush_every, rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Merge the queued batches into the float64 state (in place)."""
        if not self._ns:
            return
        pending = self._queue.column(0)
        assert pending is not None
        counts = ([self._count] if self._count else []) + self._ns
        rows = torch.cat([self._m.unsqueeze(0), pending]) if self._count else pending.to(torch.float64)
        self._ns = []
        self._queue.clear()
        if len(counts) == 1:
            self._count = counts[0]
            self._m.copy_(rows[0])
            return
        self._m.copy_(_combine(_host_to_device([float(n) for n in counts], self._m.device), rows))
        self._count = sum(counts)

    def merge_(self, other: Moments) -> Moments:
        if other.m.shape != self.m.shape:
            raise ValueError(f"cannot merge moments of shape {tuple(other.m.shape)} into {tuple(self.m.shape)}")
        if other.count:
            self.add_batch(other.count, other.m)
            self.flush()
        return self

    # derived values (float64 tensors, same device)
    @property
    def mean(self) -> Tensor:
        return self.m[0]

    @property
    def var(self) -> Tensor:
        """Biased (population) variance per channel."""
        return self.m[1] / max(self.count, 1)

    @property
    def mean_square(self) -> Tensor:
        return self.var + self.mean**2

    @property
    def kurtosis(self) -> Tensor:
        """Pearson kurtosis ``n M4 / M2^2`` per channel (3 for a Gaussian; NaN for a constant channel)."""
        if not self.higher:
            raise ValueError("kurtosis needs the higher moments (stat 'kurtosis')")
        return self.count * self.m[3] / self.m[1] ** 2

    def pooled(self) -> tuple[int, Tensor]:
        """The moments of all channels together: (count, (2 or 4,) tensor), merged exactly from the channels."""
        m = self.m
        counts = torch.full((self.channels,), float(self.count), dtype=torch.float64, device=m.device)
        return self.count * self.channels, _combine(counts, m.T.unsqueeze(-1))[:, 0]

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "higher": self.higher, "m": self.m}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Moments:
        out = cls(state["m"].shape[1], higher=state["higher"], device=state["m"].device)
        out._count, out._m = int(state["count"]), state["m"].to(torch.float64, copy=True)
        return out


class Histogram:
    """Counts of |x| per float32 bit pattern: the slot of an element is the float32 bit pattern of |x| shifted
    right by :data:`HIST_SHIFT`, i.e. its exponent and 3 leading mantissa bits, counted with ``torch.bincount``
    (``torch.histc`` on CUDA, where bincount would synchronise). ``counts`` (int64) has :data:`HIST_SLOTS`
    slots: :data:`HIST_BINS` bins of |x| (8 per octave, each spanning a factor 1.125 at most; bin 0 holds 0 and
    |x| < 2**-129, the last one +inf) and, after them, the NaN slots.

    No logarithm, clamp or float comparison runs per element: a mask, a shift and a count. Float64 data is
    binned after rounding to float32 (beyond float32's range it counts as 0 or +inf). Quantiles of |x| are
    interpolated linearly inside their bin, so they are accurate to a factor 1.125 at worst (much closer for
    smooth data); fractions below a bin edge (every power of two among them) are exact. A NaN is a quiet NaN
    (the only kind arithmetic produces); a signalling NaN whose payload sits in the 20 low mantissa bits would
    count as +inf.
    """

    def __init__(self, device: Any = None) -> None:
        self.counts = torch.zeros(HIST_SLOTS, dtype=torch.int64, device=device)

    @staticmethod
    def index(a: Tensor) -> Tensor:
        """The slot of every element of ``a`` (of |a|: the sign is ignored), int32, same shape."""
        f = a if a.dtype == torch.float32 else a.float()
        return (f.view(torch.int32) & _ABS32) >> HIST_SHIFT

    def add_index(self, idx: Tensor) -> None:
        """Count the slots from :meth:`index` into ``counts``."""
        self.counts += slot_counts(idx)

    def update(self, a: Tensor) -> None:
        self.add_index(Histogram.index(a))

    @property
    def values(self) -> Tensor:
        """The counts of the |x| bins (NaN excluded), int64 on the CPU."""
        return self.counts[:HIST_BINS].cpu()

    @property
    def nans(self) -> int:
        return int(self.counts[HIST_BINS:].sum())

    def merge_(self, other: Histogram) -> Histogram:
        self.counts += other.counts.to(self.counts.device)
        return self

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of |x| (0 if it falls in the lowest bin, +inf in the last), interpolated linearly
        inside its bin."""
        h = self.values.to(torch.float64)
        total = float(h.sum())
        if total == 0:
            return math.nan
        target = q * total
        cum = h.cumsum(0)
        b = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64)).clamp(max=HIST_BINS - 1))
        if b == 0:
            return 0.0
        if b == HIST_BINS - 1:
            return math.inf
        edges = hist_edges()
        lo, hi = float(edges[b]), float(edges[b + 1])
        below = float(cum[b - 1])
        frac = min(max((target - below) / float(h[b]), 0.0), 1.0) if h[b] > 0 else 0.0
        return lo + frac * (hi - lo)

    def fraction_below(self, threshold: float) -> float:
        """Fraction of |x| below ``threshold`` (exact when the threshold is a bin edge, e.g. a power of two)."""
        h = self.values
        total = int(h.sum())
        if not total:
            return math.nan
        edges = hist_edges()
        k = int((edges <= threshold).sum())  # bins whose lower edge is <= threshold
        return int(h[: max(k - 1, 0)].sum()) / total if threshold > 0 else 0.0

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Histogram:
        counts = state["counts"]
        if counts.numel() != HIST_SLOTS:
            raise ValueError(f"a histogram has {HIST_SLOTS} slots, got {counts.numel()} (an older report format?)")
        out = cls(device=counts.device)
        out.counts = counts.to(torch.int64, copy=True)
        return out


def slot_counts(idx: Tensor, slots: int = HIST_SLOTS) -> Tensor:
    """int64 counts of ``slots`` histogram slots in ``idx`` (ints in ``[0, slots)``):
    ``torch.bincount`` on the CPU; ``torch.histc`` on other devices (bincount reads its maximum on the host),
    in chunks of 2**24 elements, the exact range of its float32 counts."""
    idx = idx.flatten()
    if idx.device.type == "cpu":
        return torch.bincount(idx, minlength=slots)
    return _histc_counts(idx, slots)


def _histc_counts(idx: Tensor, slots: int = HIST_SLOTS) -> Tensor:
    out = torch.zeros(slots, dtype=torch.int64, device=idx.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        # histc's CUDA kernel adds 1.0 atomically: integer-valued float sums below 2**24 are exact and order
        # independent, so the counts are deterministic although torch flags the kernel.
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(False)
    try:
        for chunk in idx.split(_HISTC_EXACT):
            out += torch.histc(chunk.float(), bins=slots, min=0, max=slots).to(torch.int64)
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)
    return out


class Covariance:
    """The running co-moment matrix ``sum (x - mean)(x - mean)^T`` over channels (C x C, float64), merged with
    Chan's formula; its eigenvalues give the effective rank. Needs its own :class:`Moments` means, so it keeps
    the per-channel mean and count too."""

    def __init__(self, channels: int, device: Any = None) -> None:
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.comoment = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    @staticmethod
    def batch(x: Tensor, first: bool) -> tuple[int, Tensor, Tensor] | None:
        """``(rows, mean, co-moment)`` of one canonical 3-D batch (float64 mean and co-moment), None if empty."""
        rows = (x.transpose(1, 2) if first else x).reshape(-1, x.shape[1 if first else 2])
        nb = rows.shape[0]
        if not nb:
            return None
        with torch.autocast(rows.device.type, enabled=False):
            rf = _work(rows)
            mb = rf.mean(0)
            d = rf - mb
            cb = (d.T @ d).to(torch.float64)
        return nb, mb.to(torch.float64), cb

    def update(self, x: Tensor, first: bool) -> None:
        self.add_batch(Covariance.batch(x, first))

    def add_batch(self, batch: tuple[int, Tensor, Tensor] | None) -> None:
        """Merge the result of :meth:`batch`."""
        if batch is not None:
            self._merge(*batch)

    def _merge(self, nb: int, mb: Tensor, cb: Tensor) -> None:
        na = self.count
        if na == 0:
            self.count = nb
            self.mean.copy_(mb)
            self.comoment.copy_(cb)
            return
        n = na + nb
        delta = mb - self.mean
        self.comoment.add_(cb).add_(torch.outer(delta, delta).mul_(na * nb / n))  # in place: see _staging
        self.mean.add_(delta * (nb / n))
        self.count = n

    def merge_(self, other: Covariance) -> Covariance:
        if other.count:
            dev = self.mean.device
            self._merge(other.count, other.mean.to(dev), other.comoment.to(dev))
        return self

    def effective_rank(self) -> float:
        """exp of the entropy of the normalised singular values of the centred data (Roy & Vetterli, 2007)."""
        if self.count < 2:
            return math.nan
        lam = torch.linalg.eigvalsh(self.comoment.cpu() / self.count)
        # eigenvalues within rounding of zero are zero (the tolerance of matrix_rank): their square roots would
        # turn float64 noise into a visible change of the entropy
        tol = float(lam.abs().max()) * lam.numel() * torch.finfo(torch.float64).eps
        s = torch.where(lam > tol, lam, torch.zeros_like(lam)).sqrt()
        if float(s.sum()) == 0:
            return 0.0
        p = s / s.sum()
        return float(torch.exp(-torch.special.xlogy(p, p).sum()))

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "comoment": self.comoment}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Covariance:
        out = cls(state["mean"].shape[0], device=state["mean"].device)
        out.count = int(state["count"])
        out.mean = state["mean"].to(torch.float64, copy=True)
        out.comoment = state["comoment"].to(torch.float64, copy=True)
        return out


class EntropyStats:
    """Per-head attention entropy: the sum over query rows of ``-sum_j p_j log p_j`` (nats) and the row count.

    Weights are ``(B, H, T, S)`` (per head), ``(B, T, S)`` (averaged over heads: one column) or ``(T, S)``."""

    def __init__(self, heads: int, device: Any = None) -> None:
        self.rows = 0
        self.sum = torch.zeros(heads, dtype=torch.float64, device=device)

    @staticmethod
    def canonical(w: Tensor) -> Tensor:
        if w.dim() == 2:
            return w[None, None]
        if w.dim() == 3:
            return w[:, None]
        return w.reshape(w.shape[0], w.shape[1], -1, w.shape[-1])

    def update(self, w: Tensor) -> None:
        w = EntropyStats.canonical(w)
        h = -torch.special.xlogy(w, w).sum(-1, dtype=torch.float64)  # (B, H, T)
        self.sum += h.sum((0, 2))
        self.rows += w.shape[0] * w.shape[2]

    def merge_(self, other: EntropyStats) -> EntropyStats:
        if other.sum.shape != self.sum.shape:
            raise ValueError(f"cannot merge the entropy of {other.sum.numel()} heads into {self.sum.numel()}")
        self.sum += other.sum.to(self.sum.device)
        self.rows += other.rows
        return self

    @property
    def mean(self) -> Tensor:
        return self.sum / max(self.rows, 1)

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "sum": self.sum}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EntropyStats:
        out = cls(state["sum"].shape[0], device=state["sum"].device)
        out.rows, out.sum = int(state["rows"]), state["sum"].to(torch.float64, copy=True)
        return out


def batch_reductions(
    x: Tensor,
    first: bool,
    higher: bool,
    minmax: bool,
    zeros: bool,
    near_zero: float,
    hist: bool,
    topk: int,
    sparse: int = 1,
) -> dict[str, Any]:
    """Every per-batch reduction of ``G`` canonical batches of one shape at once, as one pure function: ``x`` is
    ``(G, B, C, S)`` (``first``) or ``(G, B, S, C)``, float32 or float64; every result has a leading ``G`` axis
    (one result per batch, as if each were reduced alone).

    Returns ``rows``, ``(G, R, C)`` in the working precision: per-channel rows ``[mean, M2, (M3, M4), (min,
    max)]`` (central moment sums around the batch mean, then the extremes); ``counts``, ``(G, 2, C)`` integers:
    the counts of ``x != 0`` and of ``|x| > near_zero`` (out of ``zeros_n`` elements per channel); ``hist``,
    ``(G, HIST_SLOTS)`` int64 histogram counts; ``topk``, ``(abs, hi, lo, flat index, first, S, C)`` with
    ``(G, topk)`` tensors: the ``topk`` largest per-position magnitudes, for :meth:`TopK.add_flat`.
    :func:`member` takes one batch's part. The counts and the histogram read the samples ``0, sparse,
    2 * sparse, ...`` of each batch (their integer and scattered passes cost the most, and these statistics
    need fewer samples); the rest reads every sample.

    Few passes over ``x``: a mean, a centred copy and its square (two reductions, two more for M3 and M4,
    powers taken in place); the maximum and minimum over the batch at each position (the per-channel extremes
    and the top-k read these small tensors; a one-sample batch is its own extremes); the integer bit patterns
    of |x| (one mask), whose integer clamps give the counts and whose shifted value (in place) the histogram
    slots. No logarithm, comparison to a bool tensor or host synchronisation.
    """
    g = x.shape[0]
    dims = _rdims(x, first)
    out: dict[str, Any] = {}
    rows = _moment_rows(x, first, higher)
    if minmax or topk:
        single = x.shape[1] == 1  # one sample: the per-position extremes are the sample itself
        pmax, pmin = (x[:, 0], x[:, 0]) if single else (x.amax(1), x.amin(1))  # (G, C, S) or (G, S, C)
        if minmax:
            rows += [pmin.amin(2 if first else 1), pmax.amax(2 if first else 1)]
        if topk:
            mag = pmax.abs() if single else torch.maximum(pmax, pmin.neg())
            top, idx = top_rows(mag.view(g, -1) if mag.is_contiguous() else mag.reshape(g, -1), topk)
            hi = pmax.reshape(g, -1).gather(1, idx)
            lo = hi if single else pmin.reshape(g, -1).gather(1, idx)
            s_, c_ = (pmax.shape[2], pmax.shape[1]) if first else (pmax.shape[1], pmax.shape[2])
            out["topk"] = (top, hi, lo, idx, first, s_, c_)
    out["rows"] = torch.stack(rows, 1)
    if zeros or hist:
        xs = x[:, ::sparse] if sparse > 1 else x
        itype, mask, _, _ = _INT_VIEW[x.dtype]
        dev = x.device
        bits = torch.bitwise_and(xs.view(itype), _const(mask, itype, dev))  # |x| as integers, ordered like |x|
        if zeros:
            near = _bits(near_zero, x.dtype) if near_zero >= 0 else -1  # |x| > near_zero <=> bits > near
            nonzero = bits.clamp(max=1).sum(dims, dtype=itype)
            above = torch.sub(bits, _const(near, itype, dev)).clamp_(0, 1).sum(dims, dtype=itype)
            out["counts"] = torch.stack([nonzero, above], 1)
            out["zeros_n"] = xs[0].numel() // nonzero.shape[1]
        if hist:
            if x.dtype == torch.float32:
                slots = bits.bitwise_right_shift_(_const(HIST_SHIFT, itype, dev)).reshape(g, -1)
            else:
                slots = Histogram.index(xs).reshape(g, -1)
            if g > 1:  # one histogram per batch: offset each batch's slots
                slots = slots + torch.arange(0, g * HIST_SLOTS, HIST_SLOTS, dtype=slots.dtype, device=dev).view(g, 1)
            out["hist"] = slot_counts(slots, g * HIST_SLOTS).view(g, HIST_SLOTS)
    return out


def member(r: dict[str, Any], i: int) -> dict[str, Any]:
    """Batch ``i``'s part of the result of :func:`batch_reductions` (views, no copies)."""
    out = {key: r[key][i] for key in ("rows", "counts", "hist") if key in r}
    if "topk" in r:
        top, hi, lo, idx, first, s_, c_ = r["topk"]
        out["topk"] = (top[i], hi[i], lo[i], idx[i], first, s_, c_)
    for key in ("cov", "zeros_n"):
        if key in r:
            out[key] = r[key]
    return out


STAT_GROUPS = ("kurtosis", "minmax", "topk", "zeros", "hist", "cov", "branch", "entropy")


class ActivationStats:
    """All the running statistics of one tensor stream (a module's outputs), per channel where meaningful.

    Parts, each present when its stat group is requested: ``moments`` (always: count, mean, variance, mean
    square; M3/M4 for ``kurtosis``), ``minmax`` (per-channel min and max, hence dead units and the magnitude
    outliers), ``topk``, ``zeros`` (per-channel counts of ``x == 0`` and of ``|x| <= near_zero``; a NaN is
    neither), ``hist``, ``cov`` (when ``channels <= max_cov_features``).

    A batch is reduced by :func:`batch_reductions` into a few small tensors; they are queued (the moments in
    :class:`Moments`, the extremes and counts here, the top-k candidates in :class:`TopK`), copied into buffers
    allocated at the first batch, and merged in place every ``flush_every`` batches and before any read, so that
    a hook launches few small operations and nothing allocated for a batch outlives it.
    """

    flush_every = 16

    def __init__(
        self,
        channels: int,
        stats: frozenset[str],
        *,
        topk: int = 16,
        near_zero: float = 1e-3,
        max_cov_features: int = 4096,
        device: Any = None,
    ) -> None:
        self.channels = channels
        self.near_zero = float(near_zero)
        self.moments = Moments(channels, higher="kurtosis" in stats, device=device)
        self._cmin = self._cmax = None
        if "minmax" in stats:
            self._cmin = torch.full((channels,), math.inf, dtype=torch.float64, device=device)
            self._cmax = torch.full((channels,), -math.inf, dtype=torch.float64, device=device)
        self._nonzero = self._above = None  # per-channel counts of x != 0 and of |x| > near_zero
        self.zeros_count = 0  # elements per channel those counts are out of (the probe may count fewer samples)
        if "zeros" in stats:
            self._nonzero = torch.zeros(channels, dtype=torch.int64, device=device)
            self._above = torch.zeros(channels, dtype=torch.int64, device=device)
        self.hist = Histogram(device) if "hist" in stats else None
        self.topk = TopK(topk, device) if "topk" in stats and topk > 0 else None
        self.cov = Covariance(channels, device) if "cov" in stats and channels <= max_cov_features else None
        self._queue = SlotQueue()  # per-batch extremes (2, C) and counts (2, C), merged every flush_every batches

    @property
    def count(self) -> int:
        return self.moments.count

    @property
    def cmin(self) -> Tensor | None:
        """Per-channel minimum (float64), None without the ``minmax`` stat."""
        self.flush()
        return self._cmin

    @property
    def cmax(self) -> Tensor | None:
        self.flush()
        return self._cmax

    @property
    def nonzero(self) -> Tensor | None:
        """Per-channel counts of ``x != 0`` (int64), None without the ``zeros`` stat."""
        self.flush()
        return self._nonzero

    @property
    def above(self) -> Tensor | None:
        """Per-channel counts of ``|x| > near_zero`` (int64)."""
        self.flush()
        return self._above

    def reduce(self, x: Tensor, first: bool, reduce: Any = None, sparse: int = 1) -> tuple[int, dict[str, Any]] | None:
        """The reductions of one canonical 3-D batch, for :meth:`add_reduced` (None for an empty batch).
        ``reduce`` replaces :func:`batch_reductions` (the probe passes its ``torch.compile``-d version); the
        zero counts and the histogram read the samples ``0, sparse, ...`` of the batch."""
        if not x.numel():
            return None
        xw = _work(x)
        r = self.reduce_group(xw.unsqueeze(0), first, reduce, sparse)
        if self.cov is not None:
            r["cov"] = Covariance.batch(xw, first)
        return xw.numel() // self.channels, member(r, 0)

    def reduce_group(self, x: Tensor, first: bool, reduce: Any = None, sparse: int = 1) -> dict[str, Any]:
        """:func:`batch_reductions` of ``G`` batches ``(G, B, C, S)``/``(G, B, S, C)`` in the working precision,
        configured for this accumulator (one with the same configuration may add any batch's part)."""
        return (reduce or batch_reductions)(
            x,
            first,
            self.moments.higher,
            self._cmin is not None,
            self._nonzero is not None,
            self.near_zero,
            self.hist is not None,
            self.topk.k if self.topk is not None else 0,
            sparse,
        )

    def add_reduced(self, reduced: tuple[int, dict[str, Any]] | None) -> None:
        """Fold in the result of :meth:`reduce` (of this accumulator or of one with the same configuration)."""
        if reduced is None:
            return
        n, r = reduced
        rows = r["rows"]
        m = 4 if self.moments.higher else 2
        self.moments.add_batch(n, rows[:m] if self._cmin is not None else rows)
        if self._nonzero is not None:
            self.zeros_count += r["zeros_n"]
        if self._cmin is not None or self._nonzero is not None:
            queued = self._queue.push(self.flush_every, rows[m:] if self._cmin is not None else None, r.get("counts"))
            if queued >= self.flush_every:
                self.flush()
        if self.hist is not None:
            self.hist.counts += r["hist"]
        if self.topk is not None:
            self.topk.add_flat(*r["topk"])
        if self.cov is not None:
            self.cov.add_batch(r.get("cov"))

    def update(self, x: Tensor, first: bool, reduce: Any = None) -> None:
        """Fold in one canonical 3-D batch ``(B, C, S)`` (``first``) or ``(B, S, C)``."""
        self.add_reduced(self.reduce(x, first, reduce))

    def flush(self) -> None:
        """Merge the queued per-batch extremes and counts (in place)."""
        if not self._queue.n:
            return
        extremes, counts = self._queue.column(0), self._queue.column(1)
        if self._cmin is not None and extremes is not None:
            rows = extremes.to(torch.float64)  # (G, 2, C)
            torch.minimum(self._cmin, rows[:, 0].amin(0), out=self._cmin)
            torch.maximum(self._cmax, rows[:, 1].amax(0), out=self._cmax)
        if self._nonzero is not None and counts is not None:
            total = counts.sum(0, dtype=torch.int64)  # (2, C)
            self._nonzero.add_(total[0])
            self._above.add_(total[1])
        self._queue.clear()

    @property
    def zeros(self) -> Tensor | None:
        """Per-channel counts of ``x == 0`` (out of :attr:`zeros_count` elements per channel)."""
        return None if self.nonzero is None else self.zeros_count - self.nonzero

    @property
    def near(self) -> Tensor | None:
        """Per-channel counts of ``|x| <= near_zero`` (out of :attr:`zeros_count`)."""
        return None if self.above is None else self.zeros_count - self.above

    def merge_(self, other: ActivationStats) -> ActivationStats:
        if other.channels != self.channels:
            raise ValueError(f"cannot merge statistics of {other.channels} channels into {self.channels}")
        self.moments.merge_(other.moments)
        self.flush()
        dev = self.moments.m.device
        if self._cmin is not None and other.cmin is not None:
            torch.minimum(self._cmin, other.cmin.to(dev), out=self._cmin)
            torch.maximum(self._cmax, other.cmax.to(dev), out=self._cmax)
        if self._nonzero is not None and other.nonzero is not None:
            if other.near_zero != self.near_zero:
                raise ValueError(f"cannot merge near-zero counts at {other.near_zero} into counts at {self.near_zero}")
            self._nonzero.add_(other.nonzero.to(dev))
            self._above.add_(other.above.to(dev))
            self.zeros_count += other.zeros_count
        for part in ("hist", "topk", "cov"):
            mine, theirs = getattr(self, part), getattr(other, part)
            if mine is not None and theirs is not None:
                mine.merge_(theirs)
        return self

    def state(self) -> dict[str, Any]:
        self.flush()
        out: dict[str, Any] = {"channels": self.channels, "near_zero": self.near_zero, "moments": self.moments.state()}
        if self._cmin is not None:
            out["minmax"] = {"min": self._cmin, "max": self._cmax}
        if self._nonzero is not None:
            out["zeros"] = {"count": self.zeros_count, "nonzero": self._nonzero, "above": self._above}
        for part in ("hist", "topk", "cov"):
            acc = getattr(self, part)
            if acc is not None:
                out[part] = acc.state()
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ActivationStats:
        out = cls.__new__(cls)
        out.channels = int(state["channels"])
        out.near_zero = float(state["near_zero"])
        out.moments = Moments.from_state(state["moments"])
        out._cmin = state["minmax"]["min"].to(torch.float64, copy=True) if "minmax" in state else None
        out._cmax = state["minmax"]["max"].to(torch.float64, copy=True) if "minmax" in state else None
        out._nonzero = state["zeros"]["nonzero"].to(torch.int64, copy=True) if "zeros" in state else None
        out._above = state["zeros"]["above"].to(torch.int64, copy=True) if "zeros" in state else None
        out.zeros_count = int(state["zeros"]["count"]) if "zeros" in state else 0
        out.hist = Histogram.from_state(state["hist"]) if "hist" in state else None
        out.topk = TopK.from_state(state["topk"]) if "topk" in state else None
        out.cov = Covariance.from_state(state["cov"]) if "cov" in state else None
        out._queue = SlotQueue()
        return out
