"""Analyses read from the accumulated statistics (never from stored activations).

Each function takes the records of a :class:`~normact.probing.Report` (``report.records.values()``, in call
order) and returns JSON-friendly lists of dicts; :class:`Report` exposes them as methods.

- :func:`summary`: one row of layer-level numbers per module (the table).
- :func:`signal_propagation`: per residual block, the average channel squared mean, the average channel
  variance and the residual-branch variance (Brock, De and Smith, 2021, arXiv:2101.08692).
- :func:`massive_activations`: (token, dim) positions whose magnitude exceeds an absolute value and a multiple
  of the layer's median magnitude (Sun, Chen, Kolter and Liu, 2024, arXiv:2402.17762: 100 and 1000x).
- :func:`sparsity`, :func:`outlier_channels`, :func:`dead_units`, :func:`effective_rank`,
  :func:`attention_entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from normact.probing._record import ModuleRecord

__all__ = [
    "attention_entropy",
    "dead_units",
    "effective_rank",
    "massive_activations",
    "outlier_channels",
    "signal_propagation",
    "sparsity",
    "summary",
]


def _f(x: Any) -> float:
    return float(x)


def _abs_max(rec: ModuleRecord) -> torch.Tensor | None:
    s = rec.stats
    if s is None or s.cmin is None or not s.count:
        return None
    return torch.maximum(s.cmin.abs(), s.cmax.abs()).cpu()


def summary(records: Iterable[ModuleRecord]) -> list[dict[str, Any]]:
    """Layer-level numbers per module: count (elements per channel), mean, std, mean square (all channels
    pooled), min, max, median |x| (histogram), NaN count, max |x| / median |x|, Pearson kurtosis (pooled and the
    largest channel's), fractions of zeros and near-zeros, dead channels, effective rank, mean head entropy."""
    rows = []
    for rec in records:
        row: dict[str, Any] = {"module": rec.name, "kind": rec.kind, "class": rec.cls, "calls": rec.calls}
        s = rec.stats
        if s is not None and s.count:
            n, pooled = s.moments.pooled()
            mean, var = _f(pooled[0]), _f(pooled[1]) / n
            row.update(channels=s.channels, count=s.count, mean=mean, std=math.sqrt(max(var, 0.0)))
            row["mean_square"] = var + mean * mean
            if s.moments.higher:
                row["kurtosis"] = n * _f(pooled[3]) / _f(pooled[1]) ** 2 if _f(pooled[1]) > 0 else math.nan
                k = s.moments.kurtosis.cpu()
                row["max_channel_kurtosis"] = _f(k.nan_to_num(nan=-math.inf).max()) if s.channels else math.nan
            if s.cmin is not None:
                row["min"], row["max"] = _f(s.cmin.min()), _f(s.cmax.max())
                row["max_abs"] = max(abs(row["min"]), abs(row["max"]))
                row["dead"] = int((s.cmax.cpu() <= 0).sum())
            if s.hist is not None:
                med = s.hist.quantile(0.5)
                row["median_abs"] = med
                row["nan"] = s.hist.nans
                if "max_abs" in row:
                    row["max_over_median"] = row["max_abs"] / med if med > 0 else math.inf
            if s.zeros is not None and s.zeros_count:
                total = s.zeros_count * s.channels
                row["zero_fraction"] = int(s.zeros.sum()) / total
                row["near_zero_fraction"] = int(s.near.sum()) / total
            if s.cov is not None:
                row["effective_rank"] = s.cov.effective_rank()
        if rec.branch is not None and rec.branch.count:
            row["branch_var"] = _f(rec.branch.var.mean())
        if rec.entropy is not None and rec.entropy.rows:
            row["heads"] = rec.entropy.sum.numel()
            row["entropy"] = _f(rec.entropy.mean.mean())
        rows.append(row)
    return rows


def signal_propagation(records: Iterable[ModuleRecord], kinds: tuple[str, ...] = ("block",)) -> list[dict[str, Any]]:
    """Per module of the given kinds (residual blocks by default), in call order: ``avg_sq_mean`` (the mean
    over channels of the squared channel mean), ``avg_var`` (the mean over channels of the channel variance)
    and ``branch_var`` (the same for the residual branch, measured as block output minus block input; exact
    for ``x + f(x)`` blocks, the block's total change when an activation follows the sum; ``None`` when the
    block changes the shape). Channels are axis 1 of NCHW maps and the last axis of (batch, tokens,
    channels) sequences."""
    out = []
    for i, rec in enumerate(r for r in records if r.kind in kinds and r.stats is not None and r.stats.count):
        m = rec.stats.moments
        branch = rec.branch
        out.append(
            {
                "index": i,
                "module": rec.name,
                "avg_sq_mean": _f((m.mean**2).mean()),
                "avg_var": _f(m.var.mean()),
                "branch_var": _f(branch.var.mean()) if branch is not None and branch.count else None,
            }
        )
    return out


def massive_activations(
    records: Iterable[ModuleRecord], min_value: float = 100.0, min_ratio: float = 1000.0
) -> list[dict[str, Any]]:
    """Positions whose magnitude is above ``min_value`` and above ``min_ratio`` times the median magnitude of the
    layer's activations (both configurable), from each module's top-k buffer (so at most ``topk`` per module).

    The median comes from the histogram (bins of float32 bit patterns, 8 per octave), within a factor 1.125
    (interpolated inside its bin, usually much closer), far finer than the 100x/1000x thresholds. A median of 0
    (more than half the values exactly zero or below 2**-129) gives an infinite ratio. Records: ``module``,
    ``token`` (position along the flattened token or spatial axes; 0 when there is none), ``dim`` (channel),
    ``value`` (signed), ``ratio`` (|value| / median), ``median``; largest first within each module."""
    out = []
    for rec in records:
        s = rec.stats
        if s is None or s.topk is None or s.hist is None or not s.count:
            continue
        med = s.hist.quantile(0.5)
        for r in s.topk.records():
            ratio = r["abs"] / med if med > 0 else math.inf
            if r["abs"] > min_value and ratio > min_ratio:
                out.append(
                    {
                        "module": rec.name,
                        "token": r["token"],
                        "dim": r["channel"],
                        "value": r["value"],
                        "ratio": ratio,
                        "median": med,
                    }
                )
    return out


def sparsity(records: Iterable[ModuleRecord]) -> list[dict[str, Any]]:
    """Per module: the fractions of exact zeros and of near-zeros (``|x| <= near_zero``) over all elements, and
    the per-channel zero fractions' minimum and maximum."""
    out = []
    for rec in records:
        s = rec.stats
        if s is None or s.zeros is None or not s.zeros_count:
            continue
        per_channel = s.zeros.cpu().to(torch.float64) / s.zeros_count
        out.append(
            {
                "module": rec.name,
                "kind": rec.kind,
                "zero_fraction": _f(per_channel.mean()),
                "near_zero_fraction": int(s.near.sum()) / (s.zeros_count * s.channels),
                "near_zero": s.near_zero,
                "min_channel_zero_fraction": _f(per_channel.min()),
                "max_channel_zero_fraction": _f(per_channel.max()),
            }
        )
    return out


def outlier_channels(
    records: Iterable[ModuleRecord], min_ratio: float = 10.0, min_kurtosis: float | None = None
) -> list[dict[str, Any]]:
    """Channels whose largest magnitude is at least ``min_ratio`` times the median over the layer's channels of
    the largest magnitude, or (when ``min_kurtosis`` is given) whose Pearson kurtosis reaches it. Records:
    ``module``, ``channel``, ``max_abs``, ``ratio``, ``kurtosis`` (NaN without the kurtosis stat)."""
    out = []
    for rec in records:
        amax = _abs_max(rec)
        if amax is None:
            continue
        med = _f(amax.median())
        ratio = amax / med if med > 0 else torch.full_like(amax, math.inf)
        m = rec.stats.moments
        kurt = m.kurtosis.cpu() if m.higher else torch.full_like(amax, math.nan)
        hit = ratio >= min_ratio
        if min_kurtosis is not None:
            hit |= kurt >= min_kurtosis
        for c in hit.nonzero().flatten().tolist():
            out.append(
                {
                    "module": rec.name,
                    "channel": c,
                    "max_abs": _f(amax[c]),
                    "ratio": _f(ratio[c]),
                    "kurtosis": _f(kurt[c]),
                }
            )
    return out


def dead_units(records: Iterable[ModuleRecord], threshold: float = 0.0) -> list[dict[str, Any]]:
    """Per module: the channels never active over the data, i.e. whose maximum stayed ``<= threshold`` (a ReLU
    unit that never fired; for any activation, one that was never positive)."""
    out = []
    for rec in records:
        s = rec.stats
        if s is None or s.cmax is None or not s.count:
            continue
        dead = (s.cmax.cpu() <= threshold).nonzero().flatten().tolist()
        out.append(
            {
                "module": rec.name,
                "kind": rec.kind,
                "channels": s.channels,
                "dead": len(dead),
                "fraction": len(dead) / s.channels,
                "indices": dead,
            }
        )
    return out


def effective_rank(records: Iterable[ModuleRecord]) -> list[dict[str, Any]]:
    """Per module with a covariance (the ``cov`` stat, at most ``max_cov_features`` channels): the effective
    rank of its activations (Roy and Vetterli, 2007) and that rank over the channel count."""
    out = []
    for rec in records:
        s = rec.stats
        if s is None or s.cov is None or s.cov.count < 2:
            continue
        er = s.cov.effective_rank()
        out.append({"module": rec.name, "channels": s.channels, "effective_rank": er, "fraction": er / s.channels})
    return out


def attention_entropy(records: Iterable[ModuleRecord]) -> list[dict[str, Any]]:
    """Per attention module that exposed its weights: the mean entropy (nats) of each head's attention rows
    (one value when the module returned weights averaged over heads)."""
    out = []
    for rec in records:
        e = rec.entropy
        if e is None or not e.rows:
            continue
        heads = e.mean.cpu().tolist()
        out.append({"module": rec.name, "heads": heads, "mean": sum(heads) / len(heads), "rows": e.rows})
    return out
