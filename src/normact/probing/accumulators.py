"""Mergeable running statistics of activations, kept on the tensors' device.

Each accumulator folds a batch in with :meth:`update` (no host synchronisation: counts come from shapes,
every other quantity stays a device tensor) and combines with another accumulator of the same
configuration with :meth:`merge_`. Merging the accumulators of two parts of a data set gives the
accumulator of the whole, to float64 rounding: moments combine by the exact identities of Chan et al. (1979)
and Pébay (2008), the other statistics are sums, minima, maxima or bounded top-k selections.

A batch is seen in one of two canonical 3-D views, ``(B, C, S)`` (channels first: NCHW maps flattened)
or ``(B, S, C)`` (channels last: token sequences), ``S`` being the flattened token (spatial) positions.
Per-batch reductions run in float32 (float64 for float64 input); accumulators are float64 (per-channel counts
int64, histogram counts float64, exact below 2**53). The per-batch reductions are one pure function,
:func:`batch_reductions`, which ``torch.compile`` can fuse.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "HIST_BINS",
    "HIST_BINS_PER_DECADE",
    "HIST_HIGH",
    "HIST_LOW",
    "ActivationStats",
    "Covariance",
    "EntropyStats",
    "Histogram",
    "Moments",
    "TopK",
    "hist_edges",
]

# The fixed log-scale histogram of |x|: bin 0 holds |x| < 10**HIST_LOW (zeros included), bins 1..320 are
# 16 per decade over [1e-10, 1e10) (each spans a factor 10**(1/16) ~ 1.155), bin 321 holds |x| >= 1e10;
# Histogram.counts has one more slot, for NaN.
HIST_LOW, HIST_HIGH, HIST_BINS_PER_DECADE = -10, 10, 16
HIST_BINS = (HIST_HIGH - HIST_LOW) * HIST_BINS_PER_DECADE + 2
_HISTC_EXACT = 1 << 24  # float32 histc counts are exact integers up to 2**24 per call
_HIST_LO = HIST_LOW - 1 / HIST_BINS_PER_DECADE  # log10 range of the 322 bins of width 1/16, outer bins included
_HIST_HI = HIST_HIGH + 1 / HIST_BINS_PER_DECADE
_HALF_BIN = 0.5 / HIST_BINS_PER_DECADE


def hist_edges() -> Tensor:
    """The lower edge of every histogram bin (bin 0 starts at 0), float64."""
    k = torch.arange(HIST_BINS - 1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), 10.0 ** (HIST_LOW + k / HIST_BINS_PER_DECADE)])


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


class Moments:
    """Per-channel count, mean and central moment sums M2 (and M3, M4 when ``higher``), float64.

    ``count`` is a host integer (elements per channel); the state is one ``(2 or 4, C)`` tensor
    ``[mean, M2, M3, M4]``. Each batch is reduced around its own mean (in float32, float64 for float64 input)
    and queued; queued batches are merged in float64, all at once, every ``flush_every`` batches and before
    any read (:func:`_combine`, the multi-group form of Chan et al. 1979 and Pébay 2008), so the variance and
    kurtosis keep float64 accuracy whatever the offset of the data and a hook launches few kernels.
    """

    flush_every = 64

    def __init__(self, channels: int, *, higher: bool = True, device: Any = None) -> None:
        self._count = 0
        self.higher = higher
        self._m = torch.zeros(4 if higher else 2, channels, dtype=torch.float64, device=device)
        self._pending: list[tuple[int, Tensor]] = []

    @property
    def channels(self) -> int:
        return self._m.shape[1]

    @property
    def count(self) -> int:
        return self._count + sum(n for n, _ in self._pending)

    @property
    def m(self) -> Tensor:
        self.flush()
        return self._m

    @staticmethod
    def batch(x: Tensor, first: bool, higher: bool) -> Tensor:
        """The (2 or 4, C) moment rows of one canonical 3-D batch (in the working precision)."""
        xf = _work(x)
        dims = _dims(first)
        mean = xf.mean(dims)
        d = xf - _chan(mean, first)
        d2 = d * d
        rows = [mean, d2.sum(dims)]
        if higher:
            rows += [(d2 * d).sum(dims), (d2 * d2).sum(dims)]
        return torch.stack(rows)

    def update(self, x: Tensor, first: bool) -> None:
        n = x.numel() // x.shape[1 if first else 2]
        if n:
            self.add_batch(n, Moments.batch(x, first, self.higher))

    def add_batch(self, n: int, rows: Tensor) -> None:
        """Queue the moment rows of a batch of ``n`` elements per channel (from :meth:`batch`)."""
        self._pending.append((n, rows))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Merge the queued batches into the float64 state."""
        if not self._pending:
            return
        groups = ([(self._count, self._m)] if self._count else []) + self._pending
        self._pending = []
        if len(groups) == 1:
            self._count, self._m = groups[0][0], groups[0][1].to(torch.float64)
            return
        counts = _host_to_device([float(n) for n, _ in groups], self._m.device)
        rows = torch.stack([r.to(torch.float64) for _, r in groups])
        self._m = _combine(counts, rows)
        self._count = sum(n for n, _ in groups)

    def merge_(self, other: Moments) -> Moments:
        if other.m.shape != self.m.shape:
            raise ValueError(f"cannot merge moments of shape {tuple(other.m.shape)} into {tuple(self.m.shape)}")
        if other.count:
            self._pending.append((other.count, other.m.to(self._m.device)))
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
        out._count, out._m = int(state["count"]), state["m"].to(torch.float64)
        return out


class Histogram:
    """Counts of |x| in the fixed log-scale bins (see :data:`HIST_BINS`) and of NaN, float64 (exact integers
    below 2**53): ``counts`` has ``HIST_BINS + 1`` slots, the last one for NaN.

    Bucketing runs on the device: ``log10(max(|x|, 1e-30))``, clamped into the outer bins, falls in one of 322
    bins of width 1/16 over ``[-10 - 1/16, 10 + 1/16]``; the bins are counted with ``torch.histc`` on CUDA (its
    shared-memory kernel) and ``index_add_`` on the CPU (faster there). Quantiles of |x| read from it are
    accurate to one bin, a factor 10**(1/16) ~ 1.155 at worst; the median is interpolated log-linearly inside
    its bin.
    """

    def __init__(self, device: Any = None) -> None:
        self.counts = torch.zeros(HIST_BINS + 1, dtype=torch.float64, device=device)

    @staticmethod
    def index(a: Tensor) -> Tensor:
        """The bin of every |x| as a float in ``[0, HIST_BINS]`` (``HIST_BINS`` for NaN), int64 on the CPU.
        clamp_min first: log10(0) takes a slow path on the CPU; 1e-30 lands in the underflow bin as well."""
        v = a.clamp_min(1e-30).log10().clamp(_HIST_LO + _HALF_BIN, _HIST_HI - _HALF_BIN)
        v = ((v - _HIST_LO) * HIST_BINS_PER_DECADE).nan_to_num(nan=HIST_BINS + 0.5)
        return v.to(torch.int64) if v.device.type == "cpu" else v

    def add_index(self, idx: Tensor) -> None:
        """Count the bins from :meth:`index` into ``counts``: integer bins with ``index_add_``, float ones with
        ``histc`` (in chunks of 2**24, the exact range of its float32 counts)."""
        idx = idx.flatten()
        if not idx.is_floating_point():
            self.counts.index_add_(0, idx, torch.ones(1, dtype=torch.float64).expand(idx.numel()))
            return
        deterministic = torch.are_deterministic_algorithms_enabled()
        if deterministic:
            # histc's CUDA kernel adds 1.0 atomically: integer-valued float sums below 2**24 are exact and order
            # independent, so the counts are deterministic although torch flags the kernel.
            warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
            torch.use_deterministic_algorithms(False)
        try:
            for chunk in idx.split(_HISTC_EXACT):
                self.counts.add_(torch.histc(chunk, bins=HIST_BINS + 1, min=0, max=HIST_BINS + 1))
        finally:
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=warn_only)

    def update(self, a: Tensor) -> None:
        self.add_index(Histogram.index(a))

    @property
    def values(self) -> Tensor:
        """The counts of the |x| bins (NaN excluded), on the CPU."""
        return self.counts[:HIST_BINS].cpu()

    @property
    def nans(self) -> int:
        return int(self.counts[HIST_BINS])

    def merge_(self, other: Histogram) -> Histogram:
        self.counts += other.counts.to(self.counts.device)
        return self

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of |x| (0 if it falls in the underflow bin), interpolated in log scale."""
        h = self.values
        total = float(h.sum())
        if total == 0:
            return math.nan
        target = q * total
        cum = h.cumsum(0)
        b = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64)).clamp(max=HIST_BINS - 1))
        if b == 0:
            return 0.0
        if b == HIST_BINS - 1:
            return 10.0**HIST_HIGH
        below = float(cum[b - 1]) if b > 0 else 0.0
        frac = min(max((target - below) / float(h[b]), 0.0), 1.0) if h[b] > 0 else 0.0
        return 10.0 ** (HIST_LOW + (b - 1 + frac) / HIST_BINS_PER_DECADE)

    def fraction_below(self, threshold: float) -> float:
        """Fraction of |x| below ``threshold`` (exact when the threshold is a bin edge)."""
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
        out = cls(device=state["counts"].device)
        out.counts = state["counts"].to(torch.float64)
        return out


class TopK:
    """The ``k`` largest magnitudes over the data at distinct ``(token, channel)`` positions, with their signed
    values: a device-side buffer of fixed size, merged by concatenation, de-duplication and ``topk``.

    Each batch is first reduced to the largest |x| over its samples at every position, so one position enters
    once with its largest value; the merged buffer is exactly the top k of the per-position maxima over all
    the data (a position in the global top k is in the top k of the batch holding its maximum). Batch
    candidates are queued and merged every ``flush_every`` batches and before any read. Empty slots hold
    magnitude -inf and position -1.
    """

    flush_every = 64

    def __init__(self, k: int, device: Any = None) -> None:
        self.k = k
        self._abs = torch.full((k,), -math.inf, dtype=torch.float64, device=device)
        self._value = torch.zeros(k, dtype=torch.float64, device=device)
        self._token = torch.full((k,), -1, dtype=torch.int64, device=device)
        self._channel = torch.full((k,), -1, dtype=torch.int64, device=device)
        self._pending: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    @property
    def abs(self) -> Tensor:
        self.flush()
        return self._abs

    @property
    def value(self) -> Tensor:
        self.flush()
        return self._value

    @property
    def token(self) -> Tensor:
        self.flush()
        return self._token

    @property
    def channel(self) -> Tensor:
        self.flush()
        return self._channel

    def update(self, x: Tensor, a: Tensor, first: bool) -> None:
        """``x`` the canonical 3-D batch and ``a`` its magnitudes (same view)."""
        self.add_batch(x, a.amax(0), first)

    def add_batch(self, x: Tensor, per_position: Tensor, first: bool) -> None:
        """Queue the candidates of batch ``x`` given its largest magnitude at each position (``|x|.amax(0)``)."""
        b, s = x.shape[0], x.shape[2 if first else 1]
        c = x.shape[1 if first else 2]
        top, idx = per_position.flatten().topk(min(self.k, s * c))  # positions flattened as (C, S) or (S, C)
        signed = x.reshape(b, -1)[:, idx]  # (B, k): the signed values at the chosen positions
        value = signed.gather(0, signed.abs().argmax(0, keepdim=True))[0]
        token, channel = (idx % s, idx // s) if first else (idx // c, idx % c)
        self._pending.append((top, value, token, channel))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Merge the queued candidates into the buffer."""
        if not self._pending:
            return
        parts = list(zip(*self._pending, strict=True))
        self._pending = []
        a = torch.cat([self._abs, *(t.to(torch.float64) for t in parts[0])])
        v = torch.cat([self._value, *(t.to(torch.float64) for t in parts[1])])
        t = torch.cat([self._token, *parts[2]])
        c = torch.cat([self._channel, *parts[3]])
        # de-duplicate positions: sort by magnitude (descending), then stably by position; keep the first of a run
        order = a.argsort(descending=True, stable=True)
        order = order[(t[order] * (1 << 32) + c[order]).argsort(stable=True)]
        key = t[order] * (1 << 32) + c[order]
        dup = torch.zeros_like(key, dtype=torch.bool)
        dup[1:] = key[1:] == key[:-1]
        top, i = a[order].masked_fill(dup, -math.inf).topk(self.k)
        sel = order[i]
        empty = top == -math.inf
        self._abs = top
        self._value = v[sel].masked_fill(empty, 0.0)
        self._token = t[sel].masked_fill(empty, -1)
        self._channel = c[sel].masked_fill(empty, -1)

    def merge_(self, other: TopK) -> TopK:
        if other.k != self.k:
            raise ValueError(f"cannot merge a top-{other.k} buffer into a top-{self.k} buffer")
        dev = self._abs.device
        self._pending.append((other.abs.to(dev), other.value.to(dev), other.token.to(dev), other.channel.to(dev)))
        self.flush()
        return self

    def records(self) -> list[dict[str, Any]]:
        """The filled slots, largest first: ``{"token", "channel", "value", "abs"}``."""
        a, v = self.abs.cpu().tolist(), self.value.cpu().tolist()
        t, c = self.token.cpu().tolist(), self.channel.cpu().tolist()
        return [
            {"token": t[i], "channel": c[i], "value": v[i], "abs": a[i]} for i in range(self.k) if a[i] != -math.inf
        ]

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "abs": self.abs, "value": self.value, "token": self.token, "channel": self.channel}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TopK:
        out = cls(int(state["k"]), device=state["abs"].device)
        out._abs, out._value = state["abs"].to(torch.float64), state["value"].to(torch.float64)
        out._token, out._channel = state["token"].to(torch.int64), state["channel"].to(torch.int64)
        return out


class Covariance:
    """The running co-moment matrix ``sum (x - mean)(x - mean)^T`` over channels (C x C, float64), merged with
    Chan's formula; its eigenvalues give the effective rank. Needs its own :class:`Moments` means, so it keeps
    the per-channel mean and count too."""

    def __init__(self, channels: int, device: Any = None) -> None:
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.comoment = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    def update(self, x: Tensor, first: bool) -> None:
        rows = (x.transpose(1, 2) if first else x).reshape(-1, x.shape[1 if first else 2])
        nb = rows.shape[0]
        if not nb:
            return
        with torch.autocast(rows.device.type, enabled=False):
            rf = _work(rows)
            mb = rf.mean(0)
            d = rf - mb
            cb = (d.T @ d).to(torch.float64)
        self._merge(nb, mb.to(torch.float64), cb)

    def _merge(self, nb: int, mb: Tensor, cb: Tensor) -> None:
        na = self.count
        if na == 0:
            self.count, self.mean, self.comoment = nb, mb.clone(), cb.clone()
            return
        n = na + nb
        delta = mb - self.mean
        self.comoment = self.comoment + cb + torch.outer(delta, delta) * (na * nb / n)
        self.mean = self.mean + delta * (nb / n)
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
        out.mean, out.comoment = state["mean"].to(torch.float64), state["comoment"].to(torch.float64)
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
        out.rows, out.sum = int(state["rows"]), state["sum"].to(torch.float64)
        return out


def batch_reductions(
    x: Tensor,
    first: bool,
    higher: bool,
    minmax: bool,
    zeros: bool,
    near_zero: float,
    hist: bool,
    topk: bool,
) -> dict[str, Tensor]:
    """Every per-batch reduction of one canonical 3-D batch, as one pure function (``torch.compile`` fuses it
    into a few passes over ``x``): ``moments`` (2 or 4, C), ``min``/``max`` (C), ``nonzero``/``above`` (C, counts
    of ``x != 0`` and ``|x| > near_zero``), ``hist_index`` (the histogram bin of every element) and ``per_position``
    (the largest |x| over the batch at each position, for the top-k)."""
    dims = _dims(first)
    out = {"moments": Moments.batch(x, first, higher)}
    if minmax:
        out["min"], out["max"] = x.amin(dims), x.amax(dims)
    a = x.abs()
    if zeros:
        out["nonzero"] = torch.count_nonzero(x, dims)
        out["above"] = torch.count_nonzero(a > near_zero, dims)
    if hist:
        out["hist_index"] = Histogram.index(a)
    if topk:
        out["per_position"] = a.amax(0)
    return out


STAT_GROUPS = ("kurtosis", "minmax", "topk", "zeros", "hist", "cov", "branch", "entropy")


class ActivationStats:
    """All the running statistics of one tensor stream (a module's outputs), per channel where meaningful.

    Parts, each present when its stat group is requested: ``moments`` (always: count, mean, variance, mean
    square; M3/M4 for ``kurtosis``), ``minmax`` (per-channel min and max, hence dead units and the magnitude
    outliers), ``topk``, ``zeros`` (per-channel counts of ``x == 0`` and of ``|x| <= near_zero``), ``hist``,
    ``cov`` (when ``channels <= max_cov_features``).
    """

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
        self.cmin = self.cmax = None
        if "minmax" in stats:
            self.cmin = torch.full((channels,), math.inf, dtype=torch.float64, device=device)
            self.cmax = torch.full((channels,), -math.inf, dtype=torch.float64, device=device)
        self.nonzero = self.above = None  # per-channel counts of x != 0 and of |x| > near_zero
        if "zeros" in stats:
            self.nonzero = torch.zeros(channels, dtype=torch.int64, device=device)
            self.above = torch.zeros(channels, dtype=torch.int64, device=device)
        self.hist = Histogram(device) if "hist" in stats else None
        self.topk = TopK(topk, device) if "topk" in stats and topk > 0 else None
        self.cov = Covariance(channels, device) if "cov" in stats and channels <= max_cov_features else None

    @property
    def count(self) -> int:
        return self.moments.count

    def update(self, x: Tensor, first: bool, reduce: Any = None) -> None:
        """Fold in one canonical 3-D batch ``(B, C, S)`` (``first``) or ``(B, S, C)``. ``reduce`` replaces
        :func:`batch_reductions` (the probe passes its ``torch.compile``-d version)."""
        if not x.numel():
            return
        xw = _work(x)
        c = self.channels
        r = (reduce or batch_reductions)(
            xw,
            first,
            self.moments.higher,
            self.cmin is not None,
            self.nonzero is not None,
            self.near_zero,
            self.hist is not None,
            self.topk is not None,
        )
        self.moments.add_batch(xw.numel() // c, r["moments"])
        if self.cmin is not None:
            torch.minimum(self.cmin, r["min"], out=self.cmin)
            torch.maximum(self.cmax, r["max"], out=self.cmax)
        if self.nonzero is not None:
            self.nonzero += r["nonzero"]
            self.above += r["above"]
        if self.topk is not None:
            self.topk.add_batch(xw, r["per_position"], first)
        if self.hist is not None:
            self.hist.add_index(r["hist_index"])
        if self.cov is not None:
            self.cov.update(xw, first)

    @property
    def zeros(self) -> Tensor | None:
        """Per-channel counts of ``x == 0``."""
        return None if self.nonzero is None else self.count - self.nonzero

    @property
    def near(self) -> Tensor | None:
        """Per-channel counts of ``|x| <= near_zero``."""
        return None if self.above is None else self.count - self.above

    def merge_(self, other: ActivationStats) -> ActivationStats:
        if other.channels != self.channels:
            raise ValueError(f"cannot merge statistics of {other.channels} channels into {self.channels}")
        self.moments.merge_(other.moments)
        dev = self.moments.m.device
        if self.cmin is not None and other.cmin is not None:
            self.cmin = torch.minimum(self.cmin, other.cmin.to(dev))
            self.cmax = torch.maximum(self.cmax, other.cmax.to(dev))
        if self.nonzero is not None and other.nonzero is not None:
            if other.near_zero != self.near_zero:
                raise ValueError(f"cannot merge near-zero counts at {other.near_zero} into counts at {self.near_zero}")
            self.nonzero += other.nonzero.to(dev)
            self.above += other.above.to(dev)
        for part in ("hist", "topk", "cov"):
            mine, theirs = getattr(self, part), getattr(other, part)
            if mine is not None and theirs is not None:
                mine.merge_(theirs)
        return self

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"channels": self.channels, "near_zero": self.near_zero, "moments": self.moments.state()}
        if self.cmin is not None:
            out["minmax"] = {"min": self.cmin, "max": self.cmax}
        if self.nonzero is not None:
            out["zeros"] = {"nonzero": self.nonzero, "above": self.above}
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
        out.cmin = state["minmax"]["min"].to(torch.float64) if "minmax" in state else None
        out.cmax = state["minmax"]["max"].to(torch.float64) if "minmax" in state else None
        out.nonzero = state["zeros"]["nonzero"].to(torch.int64) if "zeros" in state else None
        out.above = state["zeros"]["above"].to(torch.int64) if "zeros" in state else None
        out.hist = Histogram.from_state(state["hist"]) if "hist" in state else None
        out.topk = TopK.from_state(state["topk"]) if "topk" in state else None
        out.cov = Covariance.from_state(state["cov"]) if "cov" in state else None
        return out
