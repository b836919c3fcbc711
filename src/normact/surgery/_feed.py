"""Feeding batches to a model for the statistics rewrites (AdaBN, REPAIR): batches moved to the model's device,
fed by a default or user ``forward``, under ``no_grad`` with chosen modules in training mode, and exact pooled
per-channel moments (:class:`Moments`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

Forward = Callable[[nn.Module, Any], Any]


def model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def to_device(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch) if not hasattr(batch, "_fields") else batch
    return batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(**batch)`` for a mapping, ``model(batch[0])`` for an
    ``(inputs, labels, ...)`` tuple or list (a DataLoader's batches)."""
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return model(batch[0])
    raise TypeError(
        "a batch is a tensor, a mapping of keyword inputs or an (inputs, labels) tuple; got "
        f"{type(batch).__name__}: pass forward=lambda model, batch: ... to feed it to the model"
    )


def check_forward(forward: Forward | None) -> Forward:
    if forward is None:
        return default_forward
    if not callable(forward):
        raise TypeError(f"forward must be a callable (model, batch) -> output, got {type(forward).__name__}")
    return forward


def run_batches(model: nn.Module, batches: Iterable[Any], forward: Forward) -> int:
    """Feed every batch to ``model`` (no grad) and count them; ValueError when there is none."""
    if isinstance(batches, (Tensor, Mapping)) or not isinstance(batches, Iterable):
        raise TypeError(
            "batches must be an iterable of batches (a list of tensors, a DataLoader...), got "
            f"{type(batches).__name__}; wrap a single batch in a list"
        )
    device = model_device(model)
    n = 0
    with torch.no_grad():
        for batch in batches:
            forward(model, to_device(batch, device))
            n += 1
    if n == 0:
        raise ValueError("batches is empty: give at least one batch")
    return n


@contextlib.contextmanager
def modes(model: nn.Module, train: Iterable[nn.Module] = ()) -> Iterator[None]:
    """Every module of ``model`` in eval mode except ``train`` (those alone, not their children); every
    training flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        for m in train:
            m.training = True
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class Moments:
    """Exact pooled per-channel count, mean and sum of squared deviations (Chan et al.'s merge, float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, y: Tensor, axis: int) -> None:
        v = y.detach().movedim(axis, -1)
        v = v.reshape(-1, v.shape[-1]).to(torch.float64)
        n = v.shape[0]
        if n == 0:
            return
        mean = v.mean(0)
        m2 = (v - mean).square().sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        if mean.shape != self.mean.shape:
            raise ValueError(f"channel count changed between calls: {tuple(self.mean.shape)} then {tuple(mean.shape)}")
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def std(self) -> Tensor:
        """Population (biased) standard deviation."""
        assert self.m2 is not None
        return (self.m2 / self.count).sqrt()
