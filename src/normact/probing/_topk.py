"""The top-k buffer of :mod:`normact.probing.accumulators` (``k`` largest magnitudes at distinct (token,
channel) positions) and the blocked top-k selections the per-batch reductions use."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["TopK", "top_flat", "top_rows", "topk_candidates"]


class TopK:
    """The ``k`` largest magnitudes over the data at distinct ``(token, channel)`` positions, with their signed
    values: a device-side buffer of fixed size, merged by concatenation, de-duplication and ``topk``.

    Each batch is first reduced to the largest |x| over its samples at every position, so one position enters
    once with its largest value; the merged buffer is exactly the top k of the per-position maxima over all
    the data (a position in the global top k is in the top k of the batch holding its maximum). Batch
    candidates are queued (copied into buffers allocated at the first batch) and merged in place every
    ``flush_every`` batches and before any read. Empty slots hold magnitude -inf and position -1.
    """

    flush_every = 64  # candidates are tiny (k per batch); a flush sorts them all

    def __init__(self, k: int, device: Any = None) -> None:
        self.k = k
        self._abs = torch.full((k,), -math.inf, dtype=torch.float64, device=device)
        self._value = torch.zeros(k, dtype=torch.float64, device=device)
        self._token = torch.full((k,), -1, dtype=torch.int64, device=device)
        self._channel = torch.full((k,), -1, dtype=torch.int64, device=device)
        # queued candidates, in preallocated buffers (see normact.probing._staging): magnitude, largest and smallest
        # value at the position, flat index (then token) and channel; per batch (offset, length, grid or None)
        self._queued: list[tuple[int, int, tuple[bool, int, int] | None]] = []
        self._fill = 0
        self._q: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None

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
        self.add_candidates(*topk_candidates(x, per_position, first, self.k))

    def add_candidates(self, top: Tensor, value: Tensor, token: Tensor, channel: Tensor) -> None:
        """Queue candidates from :func:`topk_candidates`."""
        self._queue(top, value, value, token, channel, None)

    def add_flat(self, top: Tensor, hi: Tensor, lo: Tensor, idx: Tensor, first: bool, s: int, c: int) -> None:
        """Queue candidates given by their magnitude ``top``, the largest and smallest value over the batch at
        their position (``hi``, ``lo``: the signed value is ``hi`` when ``hi >= top``, else ``lo``) and flat
        indices into a ``(C, S)`` (``first``) or ``(S, C)`` grid. Signs and (token, channel) pairs are resolved at
        the next flush, for all queued batches at once."""
        self._queue(top, hi, lo, idx, None, (first, s, c))

    def _queue(self, top: Tensor, hi: Tensor, lo: Tensor, where: Tensor, channel: Tensor | None, grid: Any) -> None:
        """Copy a batch's candidates (at most ``k``) into the queue's buffers, then flush if it is full."""
        n, start = top.numel(), self._fill
        q = self._q
        if q is None or start + n > q[0].numel():
            q = self._grow(start + n)
        end = start + n
        q[0][start:end].copy_(top)
        q[1][start:end].copy_(hi)
        q[2][start:end].copy_(lo)
        q[3][start:end].copy_(where)
        if channel is not None:
            q[4][start:end].copy_(channel)
        self._queued.append((start, n, grid))
        self._fill = end
        if len(self._queued) >= self.flush_every:
            self.flush()

    def _grow(self, need: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        size = max(need, self.flush_every * self.k)
        dev, f, i = self._abs.device, torch.float64, torch.int64
        q = tuple(torch.empty(size, dtype=dt, device=dev) for dt in (f, f, f, i, i))
        if self._q is not None and self._fill:
            for new, old in zip(q, self._q, strict=True):
                new[: self._fill].copy_(old[: self._fill])
        self._q = q  # type: ignore[assignment]
        return self._q  # type: ignore[return-value]

    def flush(self) -> None:
        """Merge the queued candidates into the buffer (in place)."""
        if not self._queued:
            return
        queued, f = self._queued, self._fill
        self._queued, self._fill = [], 0
        qa, qhi, qlo, qt, qc = self._q  # type: ignore[misc]
        a = torch.cat([self._abs, qa[:f]])
        hi = torch.cat([self._value, qhi[:f]])
        lo = torch.cat([self._value, qlo[:f]])
        v = torch.where(hi >= a, hi, lo)
        i = 0
        while i < len(queued):  # runs of flat indices on one grid are converted together, in place
            grid = queued[i][2]
            j = i + 1
            if grid is not None:
                while j < len(queued) and queued[j][2] == grid:
                    j += 1
                start, end = queued[i][0], queued[j - 1][0] + queued[j - 1][1]
                idx, chan = qt[start:end], qc[start:end]
                first, s_, c_ = grid
                if first:  # token idx % S, channel idx // S
                    torch.floor_divide(idx, s_, out=chan)
                    idx.remainder_(s_)
                else:  # token idx // C, channel idx % C
                    torch.remainder(idx, c_, out=chan)
                    idx.floor_divide_(c_)
            i = j
        t = torch.cat([self._token, qt[:f]])
        c = torch.cat([self._channel, qc[:f]])
        # de-duplicate positions: sort by magnitude (descending), then stably by position; keep the first of a run
        order = a.argsort(descending=True, stable=True)
        order = order[(t[order] * (1 << 32) + c[order]).argsort(stable=True)]
        key = t[order] * (1 << 32) + c[order]
        dup = torch.zeros_like(key, dtype=torch.bool)
        dup[1:] = key[1:] == key[:-1]
        top, i = a[order].masked_fill(dup, -math.inf).topk(self.k)
        sel = order[i]
        empty = top == -math.inf
        self._abs.copy_(top)
        self._value.copy_(v[sel].masked_fill(empty, 0.0))
        self._token.copy_(t[sel].masked_fill(empty, -1))
        self._channel.copy_(c[sel].masked_fill(empty, -1))

    def merge_(self, other: TopK) -> TopK:
        if other.k != self.k:
            raise ValueError(f"cannot merge a top-{other.k} buffer into a top-{self.k} buffer")
        value = other.value
        self._queue(other.abs, value, value, other.token, other.channel, None)
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
        # copies: the buffer is merged in place, and must not write into the state it came from
        out._abs = state["abs"].to(torch.float64, copy=True)
        out._value = state["value"].to(torch.float64, copy=True)
        out._token = state["token"].to(torch.int64, copy=True)
        out._channel = state["channel"].to(torch.int64, copy=True)
        return out


def top_rows(v: Tensor, k: int, block: int = 64) -> tuple[Tensor, Tensor]:
    """``v.topk(min(k, P), dim=1)`` of a ``(G, P)`` tensor, through the maxima of blocks of ``block`` elements
    when ``P`` is large: the ``k`` largest values of a row lie in its ``k`` blocks of largest maxima (any other
    block's maximum is at most the k-th largest value), so a top-k over the block maxima and one over those
    ``k`` blocks suffice (ties may pick other positions of equal value)."""
    g, p = v.shape
    if p < 16 * block * k:
        return v.topk(min(k, p), dim=1)
    m = p // block * block
    blocks = (v if m == p else v[:, :m]).reshape(g, -1, block)
    bi = blocks.amax(2).topk(k, dim=1).indices  # (G, k)
    cand = blocks.gather(1, bi.unsqueeze(2).expand(g, k, block)).view(g, k * block)
    where = (bi.unsqueeze(2) * block + torch.arange(block, device=v.device)).view(g, k * block)
    if m < p:  # the last partial block is always a candidate
        cand = torch.cat([cand, v[:, m:]], 1)
        where = torch.cat([where, torch.arange(m, p, device=v.device).expand(g, -1)], 1)
    top, j = cand.topk(k, dim=1)
    return top, where.gather(1, j)


def top_flat(v: Tensor, k: int, block: int = 64) -> tuple[Tensor, Tensor]:
    """``v.topk(min(k, v.numel()))`` of a flat tensor (see :func:`top_rows`)."""
    top, idx = top_rows(v.view(1, -1), k, block)
    return top[0], idx[0]


def topk_candidates(x: Tensor, per_position: Tensor, first: bool, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The top-``k`` candidates of one canonical 3-D batch ``x``: ``(abs, value, token, channel)`` of the ``k``
    largest entries of ``per_position``, the largest |x| over the batch at each position, given as floats or as
    the bit patterns of |x| (integers of x's width, which order non-negative floats like the floats)."""
    b, s = x.shape[0], x.shape[2 if first else 1]
    c = x.shape[1 if first else 2]
    top, idx = top_flat(per_position.flatten(), k)  # positions flattened as (C, S) or (S, C)
    if not top.is_floating_point():
        top = top.view(x.dtype)
    signed = x.reshape(b, -1)[:, idx]  # (B, k): the signed values at the chosen positions
    value = signed.gather(0, signed.abs().argmax(0, keepdim=True))[0]
    token, channel = (idx % s, idx // s) if first else (idx // c, idx % c)
    return top, value, token, channel
