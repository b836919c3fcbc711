"""Stateless softmax activations along one axis: softmax, log-softmax and softmin (torch.nn.functional's
semantics, computed in float32 for float16/bfloat16 inputs)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_int, check_tensor

__all__ = ["log_softmax", "softmax", "softmin"]

_LOW = (torch.float16, torch.bfloat16)


def _apply_along_dim(fn: Callable[..., Tensor], x: Tensor, dim: int, name: str) -> Tensor:
    """``fn(x, dim)`` (torch.nn.functional's softmax, log_softmax or softmin) after the checks, in float32 for
    float16/bfloat16 inputs."""
    check_tensor(x, name)
    check_int("dim", dim, minimum=-(1 << 30))
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name} normalizes along dim {dim}, but got an input of shape {tuple(x.shape)}")
    return fn(x, dim, dtype=torch.float32).to(x.dtype) if x.dtype in _LOW else fn(x, dim)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    r"""Softmax along ``dim``: :math:`y_i = e^{x_i} / \sum_j e^{x_j}`."""
    return _apply_along_dim(F.softmax, x, dim, "softmax")


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    r"""Log-softmax along ``dim``: :math:`y_i = x_i - \log \sum_j e^{x_j}`."""
    return _apply_along_dim(F.log_softmax, x, dim, "log_softmax")


def softmin(x: Tensor, dim: int = -1) -> Tensor:
    r"""Softmin along ``dim``: :math:`y_i = e^{-x_i} / \sum_j e^{-x_j}`."""
    return _apply_along_dim(F.softmin, x, dim, "softmin")
