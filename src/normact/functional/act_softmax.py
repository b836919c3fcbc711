"""Stateless softmax activations along one axis: softmax, log-softmax and softmin (torch.nn.functional's
semantics, computed in float32 for float16/bfloat16 inputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_int, check_tensor

__all__ = ["log_softmax", "softmax", "softmin"]

_LOW = (torch.float16, torch.bfloat16)


def _check(x: Tensor, dim: int, name: str) -> None:
    check_tensor(x, name)
    check_int("dim", dim, minimum=-(1 << 30))
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name} normalizes along dim {dim}, but got an input of shape {tuple(x.shape)}")


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    r"""Softmax along ``dim``: :math:`y_i = e^{x_i} / \sum_j e^{x_j}`."""
    _check(x, dim, "softmax")
    return F.softmax(x, dim, dtype=torch.float32).to(x.dtype) if x.dtype in _LOW else F.softmax(x, dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    r"""Log-softmax along ``dim``: :math:`y_i = x_i - \log \sum_j e^{x_j}`."""
    _check(x, dim, "log_softmax")
    return F.log_softmax(x, dim, dtype=torch.float32).to(x.dtype) if x.dtype in _LOW else F.log_softmax(x, dim)


def softmin(x: Tensor, dim: int = -1) -> Tensor:
    r"""Softmin along ``dim``: :math:`y_i = e^{-x_i} / \sum_j e^{-x_j}`."""
    _check(x, dim, "softmin")
    return F.softmin(x, dim, dtype=torch.float32).to(x.dtype) if x.dtype in _LOW else F.softmin(x, dim)
