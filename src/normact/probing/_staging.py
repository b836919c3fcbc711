"""Preallocated buffers of the probe's steady state: the staging groups of one forward pass and the queues of
per-batch results waiting for a merge.

Why preallocated: a probe runs over thousands of batches, and glibc's default malloc (the allocator of CPU
tensors) serves the model's activations from its heap. A small tensor allocated at every batch and freed
batches later (a queued per-batch result, an accumulator replaced by its merged value) lands between the
activations' blocks and outlives them, so the heap cannot coalesce or return the freed blocks around it: the
resident memory grows with the number of batches although no statistic does. Here every tensor that outlives
a forward pass is allocated once (at the first batch) and written in place afterwards; the temporaries of a
forward pass are freed within it and have the same sizes at every batch, which the heap reuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["SlotQueue"]


class SlotQueue:
    """Up to ``capacity`` per-batch results of one shape, queued in one preallocated tensor per column
    ``(capacity, *shape)``: :meth:`push` copies each column into its next slot, so the result's own tensor is
    freed at once and, after the first push, queuing allocates nothing. A column's dtype widens (float32 to
    float64, int32 to int64, values unchanged) when a wider result comes; a push past the capacity (a
    ``flush_every`` raised after the first push) grows the queue. A column given as None stays empty."""

    __slots__ = ("bufs", "n")

    def __init__(self) -> None:
        self.bufs: list[Tensor | None] = []
        self.n = 0

    def push(self, capacity: int, *columns: Tensor | None) -> int:
        """Queue one result (its columns); returns the number queued."""
        if not self.bufs:
            self.bufs = [None] * len(columns)
        n = self.n
        for j, t in enumerate(columns):
            if t is None:
                continue
            buf = self.bufs[j]
            if buf is None or n == buf.shape[0] or buf.shape[1:] != t.shape or buf.dtype != t.dtype:
                buf = self._widen(j, t, capacity)
            buf[n].copy_(t)
        self.n = n + 1
        return self.n

    def _widen(self, j: int, t: Tensor, capacity: int) -> Tensor:
        old = self.bufs[j]
        fits = old is not None and old.shape[1:] == t.shape and self.n < old.shape[0]
        if fits and torch.promote_types(old.dtype, t.dtype) == old.dtype:
            return old  # a narrower result: copied exactly into the wider column
        dtype = t.dtype if old is None else torch.promote_types(old.dtype, t.dtype)
        rows = max(capacity, self.n + 1, 0 if old is None else old.shape[0])
        new = torch.empty((rows, *t.shape), dtype=dtype, device=t.device)
        if old is not None and self.n:
            new[: self.n].copy_(old[: self.n])
        self.bufs[j] = new
        return new

    def column(self, j: int) -> Tensor | None:
        """The queued results of column ``j``, ``(n, *shape)`` (a view of the queue), or None."""
        buf = self.bufs[j] if j < len(self.bufs) else None
        return None if buf is None else buf[: self.n]

    def clear(self) -> None:
        """Forget the queued results (the buffers stay for the next ones)."""
        self.n = 0


class _Group:
    """Copies of same-shape (sampled, canonical) outputs, reduced together by one call of
    :func:`~normact.probing.accumulators.batch_reductions`: ``members`` are ``(stats, slot)`` pairs, ``gen``
    counts the reductions (a slot is valid for the generation that filled it). The buffer lives for one forward
    pass (a copy of samples of activations is not kept across batches) and has the same size at every batch."""

    __slots__ = ("buf", "first", "gen", "members", "n")

    def __init__(self, shape: torch.Size, first: bool, dtype: torch.dtype, device: torch.device, slots: int) -> None:
        self.buf = torch.empty((max(slots, 1), *shape), dtype=dtype, device=device)
        self.first = first
        self.members: list[tuple[Any, int]] = []  # (ActivationStats, slot)
        self.n = 0
        self.gen = 0


@contextlib.contextmanager
def _one_thread(enabled: bool) -> Iterator[None]:
    """Run small reductions (a staged group, a sample of at most a few MiB) on one CPU thread: their many small
    operations gain less from splitting across threads than they lose in synchronisation (much more when
    another process competes for the cores)."""
    threads = torch.get_num_threads() if enabled else 1
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
