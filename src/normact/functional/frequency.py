r"""Stateless forms of the frequency-domain normalizations of Lee, Bae & Kim (CVPR 2023, arXiv:2303.02328):
PCNorm, CCNorm and SCNorm.

Each channel of an ``(N, C, H, W)`` feature map is decomposed by a 2-D DFT into amplitude (style) and phase
(content); a normalization changes the amplitude, and the output is composed from the adjusted amplitude and
a chosen phase. Real input gives real output: the spectra are half spectra (``rfft2``/``irfft2``), and every
composed spectrum is that of a real map (the amplitude of a real map times the phase of a real map).

The phase of a frequency whose amplitude is zero is undefined; here the unit phasor is
:math:`e^{i\angle z} := z / \max(|z|, \tau)` with :math:`\tau = \sqrt{\text{finfo.tiny}}` of the computation
dtype (about 1e-19 in float32): the exact phase wherever :math:`|z| \ge \tau`, and a continuous function with
finite gradients everywhere (0 at z = 0), so constant inputs have finite gradients.

Batch moments go through :func:`normact.distributed.batch_moments` (``sync=True`` combines them over a process
group); running statistics passed in are updated in place in training, as ``torch.nn.functional.batch_norm``
does. float16/bfloat16 inputs are computed in float32 (statistics and FFTs) and returned in their dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_eps, check_float, shape_str, upcast
from normact.functional import _batch
from normact.functional._affine import affine

__all__ = ["cc_norm", "pc_norm", "sc_norm"]

_VIEW = (1, -1, 1, 1)


def _spectrum(x: Tensor) -> Tensor:
    """The half spectrum ``rfft2(x)`` as real pairs, shape ``(N, C, H, W // 2 + 1, 2)`` (real and imaginary parts).
    The elementwise work is done on real pairs: Inductor compiles the backward of complex elementwise ops on
    1 x 1 maps wrongly (a stride error), not that of ``view_as_real``."""
    return torch.view_as_real(torch.fft.rfft2(x))


def _amplitude(spectrum: Tensor) -> Tensor:
    """|z| of real pairs, keeping the pair dim (size 1); its gradient at z = 0 is 0."""
    return torch.linalg.vector_norm(spectrum, dim=-1, keepdim=True)


def _phasor(spectrum: Tensor) -> Tensor:
    """``z / max(|z|, tau)``: the unit phasor :math:`e^{i\\angle z}` where ``|z| >= tau``, shrinking to 0 with z."""
    tiny = torch.finfo(spectrum.dtype).tiny ** 0.5
    return spectrum / _amplitude(spectrum).clamp_min(tiny)


def _compose(amplitude: Tensor, phasor: Tensor, size: torch.Size) -> Tensor:
    """The real map whose half spectrum is ``amplitude * phasor`` (real pairs)."""
    return torch.fft.irfft2(torch.view_as_complex((amplitude * phasor).contiguous()), s=size)


def _check_4d(name: str, x: Tensor, eps: float) -> None:
    _batch.check_4d_input(name, x)
    check_eps(eps)


def _check_vectors(name: str, x: Tensor, tensors: dict[str, Tensor | None]) -> None:
    channels = x.shape[1]
    for arg, t in tensors.items():
        if t is not None and t.numel() != channels:
            raise ValueError(
                f"{name}: {arg} must have C = {channels} elements for input shape {shape_str(x.shape)}, "
                f"got shape {shape_str(t.shape)}"
            )


def _mix(name: str, mix_logit: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    check_float("temperature", temperature, positive=True)
    if mix_logit.numel() != 1:
        raise ValueError(f"{name}: mix_logit must hold one value, got shape {shape_str(mix_logit.shape)}")
    return torch.sigmoid(mix_logit.to(dtype).reshape(()) / temperature)


def pc_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""PCNorm, phase-consistent normalization (Lee, Bae & Kim, 2023, arXiv:2303.02328) of an ``(N, C, H, W)``
    input: :math:`y = \mathcal{F}^{-1}\big(|\mathcal{F}(\mathrm{BN}(x))|\, e^{i\angle\mathcal{F}(x)}\big)\,
    \gamma + \beta`, a per-channel 2-D DFT; BN without affine (batch statistics over (N, H, W) in training, or
    when ``running_mean`` is None, with the running statistics updated in place; the running statistics in
    evaluation); the affine applied to the composed map."""
    name = "pc_norm"
    _check_4d(name, x, eps)
    _check_vectors(name, x, {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias})
    _batch.check_factor(momentum)
    xf = upcast(x)
    mean, var = _batch.batch_or_running_stats(
        name, xf, running_mean, running_var, training, momentum, sync, process_group, _batch.NEED_NHW
    )
    normalized = _batch.standardize(xf, mean, var, eps)
    y = _compose(_amplitude(_spectrum(normalized)), _phasor(_spectrum(xf)), xf.shape[-2:])
    return affine(y, weight, bias, _VIEW).to(x.dtype)


def cc_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mix_logit: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    temperature: float = 1e-6,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""CCNorm, content-controlling normalization (Lee, Bae & Kim, 2023, arXiv:2303.02328) of an
    ``(N, C, H, W)`` input: :math:`y = \mathcal{F}^{-1}\big(|\mathcal{F}(\mathrm{BN}(x))|\,
    e^{i\angle\mathcal{F}(x - \lambda\mu)}\big)\,\gamma + \beta` with
    :math:`\lambda = \mathrm{sigmoid}(\text{mix\_logit} / T)` and :math:`\mu` the mean BN subtracts (batch mean
    in training, running mean in evaluation): :math:`\lambda = 0` is PCNorm, :math:`\lambda = 1` BatchNorm."""
    name = "cc_norm"
    _check_4d(name, x, eps)
    _check_vectors(name, x, {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias})
    _batch.check_factor(momentum)
    xf = upcast(x)
    lam = _mix(name, mix_logit, temperature, xf.dtype)
    mean, var = _batch.batch_or_running_stats(
        name, xf, running_mean, running_var, training, momentum, sync, process_group, _batch.NEED_NHW
    )
    normalized = _batch.standardize(xf, mean, var, eps)
    y = _compose(_amplitude(_spectrum(normalized)), _phasor(_spectrum(xf - lam * mean.view(_VIEW))), xf.shape[-2:])
    return affine(y, weight, bias, _VIEW).to(x.dtype)


def sc_norm(
    x: Tensor,
    mix_logit: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    temperature: float = 0.1,
) -> Tensor:
    r"""SCNorm, style-controlling normalization (Lee, Bae & Kim, 2023, arXiv:2303.02328) of an ``(N, C, H, W)``
    input: :math:`y = \mathcal{F}^{-1}\big((\lambda|\mathcal{F}(\mathrm{IN}(x))| + (1 - \lambda)|\mathcal{F}(x)|)\,
    e^{i\angle\mathcal{F}(x)}\big)\,\gamma + \beta` with :math:`\lambda = \mathrm{sigmoid}(\text{mix\_logit}/T)`
    and IN the instance normalization without affine (per sample and channel over (H, W), biased variance)."""
    name = "sc_norm"
    _check_4d(name, x, eps)
    _check_vectors(name, x, {"weight": weight, "bias": bias})
    xf = upcast(x)
    lam = _mix(name, mix_logit, temperature, xf.dtype)
    mean = xf.mean((2, 3), keepdim=True)
    var = (xf - mean).square().mean((2, 3), keepdim=True)
    normalized = (xf - mean) * torch.rsqrt(var + eps)
    spectrum = _spectrum(xf)
    amplitude = lam * _amplitude(_spectrum(normalized)) + (1 - lam) * _amplitude(spectrum)
    y = _compose(amplitude, _phasor(spectrum), xf.shape[-2:])
    return affine(y, weight, bias, _VIEW).to(x.dtype)
