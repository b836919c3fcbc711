"""Stateless form of Attentive Batch Normalization (Ding, Guo, Dai & Du, 2020, arXiv:2001.00129) for frame
sequences ``(N, T, C)``: batch normalization without affine, then a scale and shift generated per utterance
(or per frame) from an attention-weighted summary of hidden features of the normalized frames.

Batch moments over (N, T) go through :func:`normact.distributed.batch_moments`, so ``sync=True`` combines them
over a process group; running statistics passed in are updated in place in training, as
``torch.nn.functional.batch_norm`` does. float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_eps, check_tensor, shape_str, upcast
from normact.functional._batch import batch_or_running_stats, check_factor

__all__ = ["attentive_batch_norm", "attentive_bn_attention"]

_LEVELS = ("utterance", "frame")
_NEED = "in training needs more than 1 frame per channel (N * T > 1)"
_FRAMES = (0, 1)  # the dims of the batch moments: N and T


def _check(name: str, x: Tensor, channels: int) -> None:
    check_tensor(x, name)
    if x.dim() != 3 or x.shape[-1] != channels:
        raise ValueError(f"{name} expects an input of shape (N, T, {channels}), got shape {shape_str(x.shape)}")


def _hidden_attention(
    x_hat: Tensor, aux_weight: Tensor, aux_bias: Tensor | None, att_vector: Tensor
) -> tuple[Tensor, Tensor]:
    """The hidden features h_t = tanh(W x_hat_t + b) (N, T, A) and a_t = softmax_t(v^T h_t) (N, T)."""
    h = torch.tanh(torch.nn.functional.linear(x_hat, aux_weight.to(x_hat.dtype), _cast(aux_bias, x_hat)))
    return h, torch.softmax(h @ att_vector.to(x_hat.dtype), dim=1)


def _cast(t: Tensor | None, like: Tensor) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


def attentive_bn_attention(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    aux_weight: Tensor,
    aux_bias: Tensor | None,
    att_vector: Tensor,
    training: bool = False,
    eps: float = 1e-5,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    """The attention weights (N, T) of :func:`attentive_batch_norm` over the frames of each utterance (they sum
    to 1 over T); running statistics are read, never updated."""
    name = "attentive_bn_attention"
    _check(name, x, aux_weight.shape[-1])
    check_eps(eps)
    xf = upcast(x)
    # the running statistics are read, never updated: in training the batch moments alone
    stats = (None, None) if training else (running_mean, running_var)
    mean, var = batch_or_running_stats(name, xf, *stats, training, 0.0, sync, process_group, _NEED, _FRAMES)
    x_hat = (xf - mean) * torch.rsqrt(var + eps)
    return _hidden_attention(x_hat, aux_weight, aux_bias, att_vector)[1].to(x.dtype)


def attentive_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    gamma_weight: Tensor,
    beta_weight: Tensor,
    aux_weight: Tensor,
    aux_bias: Tensor | None,
    att_vector: Tensor,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    level: str = "utterance",
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Attentive Batch Normalization (Ding, Guo, Dai & Du, 2020, arXiv:2001.00129) of frames ``x`` (N, T, C):

    .. math::
        \hat x = \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}, \quad
        h_t = \tanh(W_h \hat x_t + b_h), \quad a_t = \mathrm{softmax}_t(v^\top h_t), \quad
        y_t = (\gamma_0 + W_\gamma s_t) \odot \hat x_t + \beta_0 + W_\beta s_t

    with :math:`s_t = \sum_{t'} a_{t'} h_{t'}` for ``level="utterance"`` and :math:`s_t = T a_t h_t` for
    ``level="frame"`` (``aux_weight`` :math:`W_h` (A, C), ``aux_bias`` :math:`b_h`, ``att_vector`` v,
    ``gamma_weight`` :math:`W_\gamma` and ``beta_weight`` :math:`W_\beta` (C, A)). :math:`\mu_B, \sigma_B^2`
    are the batch moments over (N, T) in training (the running statistics lerped towards the batch mean and
    unbiased variance with ``momentum``, a float or a 0-d tensor) and the running statistics in evaluation
    (or the batch moments when they are None). ``weight``/``bias`` (:math:`\gamma_0, \beta_0`) may be None (1 and 0)."""
    name = "attentive_batch_norm"
    c, a_dim = aux_weight.shape[-1], aux_weight.shape[0]
    _check(name, x, c)
    check_eps(eps)
    if level not in _LEVELS:
        raise ValueError(f"{name}: level must be one of {_LEVELS}, got {level!r}")
    check_factor(momentum)
    for arg, t, shape in (
        ("gamma_weight", gamma_weight, (c, a_dim)),
        ("beta_weight", beta_weight, (c, a_dim)),
        ("weight", weight, (c,)),
        ("bias", bias, (c,)),
        ("running_mean", running_mean, (c,)),
        ("running_var", running_var, (c,)),
        ("aux_bias", aux_bias, (a_dim,)),
        ("att_vector", att_vector, (a_dim,)),
    ):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name}: {arg} must have shape {shape_str(shape)}, got {shape_str(t.shape)}")
    xf = upcast(x)
    mean, var = batch_or_running_stats(
        name, xf, running_mean, running_var, training, momentum, sync, process_group, _NEED, _FRAMES
    )
    x_hat = (xf - mean) * torch.rsqrt(var + eps)
    h, a = _hidden_attention(x_hat, aux_weight, aux_bias, att_vector)
    weighted = a.unsqueeze(-1) * h  # (N, T, A)
    s = weighted.sum(1, keepdim=True) if level == "utterance" else weighted * h.shape[1]
    gamma = s @ gamma_weight.to(xf.dtype).mT
    beta = s @ beta_weight.to(xf.dtype).mT
    gamma = gamma + (1.0 if weight is None else weight.to(xf.dtype))
    if bias is not None:
        beta = beta + bias.to(xf.dtype)
    return (gamma * x_hat + beta).to(x.dtype)
