"""Stateless forms of group-wise whitening and of GDWCT's group-wise whitening-and-coloring transformation
(Cho, Choi, Park, Shin & Choo, CVPR 2019, arXiv:1812.09912).

Exact (ZCA) whitening goes through :func:`symmetric_inverse_sqrt`, an eigendecomposition whose backward is
the Daleckii-Krein formula written with divided differences of :math:`\\lambda^{-1/2}` that never divide by
a difference of eigenvalues: gradients stay finite and exact for repeated eigenvalues (constant inputs,
rank-deficient covariances), where differentiating ``torch.linalg.eigh`` gives NaN. Its double backward
(second divided differences, also in closed form) makes the whitening twice differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from normact._checks import check_eps, check_float, check_tensor, shape_str, upcast

__all__ = [
    "gdwct_coloring_regularizer",
    "gdwct_whitening_regularizer",
    "group_whitening",
    "group_whitening_coloring",
    "symmetric_inverse_sqrt",
]

_WHITENING_MODES = ("center", "zca")


# ------------------------------------------------------------------------------- matrix inverse square root


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.mT)


def _first_divided(s: Tensor) -> Tensor:
    """f[l_i, l_j] for f(l) = l^(-1/2), s = sqrt(l): -1 / (s_i s_j (s_i + s_j)) (f'(l_i) on the diagonal)."""
    si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
    return -1.0 / (si * sj * (si + sj))


def _second_divided(s: Tensor) -> Tensor:
    """f[l_i, l_j, l_k] for f(l) = l^(-1/2): (s_i + s_j + s_k) / (s_i s_j s_k (s_i+s_j)(s_j+s_k)(s_i+s_k))."""
    si, sj, sk = s[..., :, None, None], s[..., None, :, None], s[..., None, None, :]
    return (si + sj + sk) / (si * sj * sk * (si + sj) * (sj + sk) * (si + sk))


class _InvSqrtFrechet(torch.autograd.Function):
    """L(sigma)[g] = U (f[l_i, l_j] o (U^T sym(g) U)) U^T, the Frechet derivative of sigma^(-1/2) applied to g
    (the backward of :class:`_InvSqrt`); its own backward gives the second derivative."""

    @staticmethod
    def forward(ctx: Any, sigma: Tensor, grad: Tensor, u: Tensor, s: Tensor) -> Tensor:
        gt = u.mT @ _sym(grad) @ u
        ctx.save_for_backward(u, s, gt)
        return u @ (_first_divided(s) * gt) @ u.mT

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, h: Tensor) -> tuple[Tensor, Tensor, None, None]:
        u, s, gt = ctx.saved_tensors
        ht = u.mT @ _sym(h) @ u
        grad_grad = u @ (_first_divided(s) * ht) @ u.mT
        f2 = _second_divided(s)
        m = torch.einsum("...iab,...ia,...ib->...ab", f2, gt, ht) + torch.einsum(
            "...iab,...ia,...ib->...ab", f2, ht, gt
        )
        return _sym(u @ m @ u.mT), grad_grad, None, None


class _InvSqrt(torch.autograd.Function):
    """(sigma + eps I)^(-1/2) of symmetric positive semi-definite matrices by eigendecomposition, the
    eigenvalues clamped at 0 before eps is added."""

    @staticmethod
    def forward(ctx: Any, sigma: Tensor, eps: float) -> Tensor:
        evals, u = torch.linalg.eigh(sigma)
        s = torch.sqrt(evals.clamp_min(0.0) + eps)
        ctx.save_for_backward(sigma, u, s)
        return (u / s.unsqueeze(-2)) @ u.mT

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        sigma, u, s = ctx.saved_tensors
        return _InvSqrtFrechet.apply(sigma, grad, u, s), None


def symmetric_inverse_sqrt(sigma: Tensor, eps: float = 0.0) -> Tensor:
    r""":math:`(\Sigma + \epsilon I)^{-1/2}` of a batch ``(*, d, d)`` of symmetric positive semi-definite matrices
    (eigenvalues clamped at 0, then :math:`\epsilon` added; with ``eps=0`` the matrices must be positive
    definite). The backward is exact and finite for repeated eigenvalues, and twice differentiable."""
    check_tensor(sigma, "symmetric_inverse_sqrt")
    if sigma.dim() < 2 or sigma.shape[-1] != sigma.shape[-2]:
        raise ValueError(f"symmetric_inverse_sqrt expects matrices of shape (*, d, d), got {shape_str(sigma.shape)}")
    check_float("eps", eps, nonnegative=True)
    return _InvSqrt.apply(sigma, eps)


# ------------------------------------------------------------------------------------------------ helpers


def _check_groups(name: str, channels: int, num_groups: int) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
        raise ValueError(f"{name}: num_groups must be a positive divisor of C = {channels}, got {num_groups!r}")
    return channels // num_groups


def _check_input(name: str, x: Tensor) -> None:
    check_tensor(x, name)
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} expects a 3-D or 4-D input of shape (N, C, L) or (N, C, H, W), got shape "
                         f"{shape_str(x.shape)}")  # fmt: skip


def _grouped(x: Tensor, num_groups: int) -> Tensor:
    """(N, C, *spatial) -> (N, G, C/G, P), P the number of positions."""
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, num_groups, c // num_groups, -1)


def _centered(xg: Tensor) -> Tensor:
    return xg - xg.mean(-1, keepdim=True)


def _zca(xc: Tensor, eps: float) -> Tensor:
    """ZCA whitening of centered (N, G, d, P) groups with the biased covariance over the P positions."""
    sigma = _sym(xc @ xc.mT) / xc.shape[-1]
    return symmetric_inverse_sqrt(sigma, eps) @ xc


def _channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    view = (1, -1) + (1,) * (y.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(view).to(y.dtype)
    if bias is not None:
        y = y + bias.reshape(view).to(y.dtype)
    return y


def _mlp(h: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], negative_slope: float) -> Tensor:
    """Linear layers with LeakyReLU between them (none after the last), as GDWCT's MLP of LinearBlocks."""
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = F.linear(h, w.to(h.dtype), b.to(h.dtype))
        if i < last:
            h = F.leaky_relu(h, negative_slope)
    return h


def _check_mlp(name: str, what: str, weights: Sequence[Tensor], biases: Sequence[Tensor], fan_in: int, out: int):
    if len(weights) < 1 or len(weights) != len(biases):
        raise ValueError(f"{name}: {what} needs as many biases as weights (at least one), got "
                         f"{len(weights)} weights and {len(biases)} biases")  # fmt: skip
    if weights[0].shape[-1] != fan_in or weights[-1].shape[0] != out:
        raise ValueError(
            f"{name}: {what} must map {fan_in} inputs to {out} outputs, got weights of shapes "
            f"{[shape_str(w.shape) for w in weights]}"
        )


def _coloring_factors(
    style: Tensor, num_groups: int, ct_weights: Sequence[Tensor], ct_biases: Sequence[Tensor], negative_slope: float
) -> tuple[Tensor, Tensor]:
    """The style code split in G chunks, each mapped by the shared MLP to a d x d matrix M (row-major);
    returns M (N, G, d, d) and its column norms D (N, G, d): U = M / D, coloring matrix U D U^T = M D^-1 M^T."""
    n = style.shape[0]
    chunks = style.reshape(n, num_groups, -1)
    flat = _mlp(chunks, ct_weights, ct_biases, negative_slope)
    d = math.isqrt(flat.shape[-1])
    m = flat.reshape(n, num_groups, d, d)
    return m, torch.linalg.vector_norm(m, dim=-2).clamp_min(1e-12)


def _check_style(name: str, style: Tensor, n: int, num_groups: int) -> None:
    check_tensor(style, f"{name} (style)")
    if style.dim() != 2 or style.shape[0] != n or style.shape[1] % num_groups:
        raise ValueError(
            f"{name} expects a style code of shape (N, style_dim) = ({n}, S) with S divisible by "
            f"num_groups = {num_groups}, got shape {shape_str(style.shape)}"
        )


# ------------------------------------------------------------------------------------------ the functions


def group_whitening(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Group-wise ZCA whitening of an ``(N, C, L)`` or ``(N, C, H, W)`` input, per sample and per group of
    C/G consecutive channels, over the spatial positions:

    .. math::
        \hat x_g = (\Sigma_g + \epsilon I)^{-1/2} (x_g - \mu_g), \qquad
        \Sigma_g = \tfrac{1}{P} (x_g - \mu_g)(x_g - \mu_g)^\top

    then the per-channel affine ``weight``, ``bias``. Computed in float64 (cast back to the input dtype)."""
    name = "group_whitening"
    _check_input(name, x)
    check_eps(eps)
    c = x.shape[1]
    _check_groups(name, c, num_groups)
    for arg, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != c:
            raise ValueError(f"{name}: {arg} must have {c} elements, got shape {shape_str(t.shape)}")
    xd = x.to(torch.float64)
    y = _zca(_centered(_grouped(xd, num_groups)), eps).reshape(x.shape)
    return _channel_affine(y, weight, bias).to(x.dtype)


def group_whitening_coloring(
    x: Tensor,
    style: Tensor,
    num_groups: int,
    ct_weights: Sequence[Tensor],
    ct_biases: Sequence[Tensor],
    mu_weights: Sequence[Tensor],
    mu_biases: Sequence[Tensor],
    alpha: Tensor | float | None = None,
    eps: float = 1e-5,
    whitening: str = "center",
    negative_slope: float = 0.01,
) -> Tensor:
    r"""GDWCT (Cho et al., 2019, arXiv:1812.09912) of content features ``x`` (N, C, L) or (N, C, H, W) with a
    style code ``style`` (N, S):

    .. math::
        \bar c_g = W_g (x_g - \mu_g), \quad M_g = \mathrm{MLP}_{CT}(s_g), \quad
        \hat c_g = U_g D_g U_g^\top \bar c_g = M_g D_g^{-1} M_g^\top \bar c_g, \quad
        y = \alpha(\hat c + \mathrm{MLP}_\mu(s)) + (1 - \alpha) x

    per sample and group g of C/G channels; :math:`\mu_g` the spatial mean, :math:`W_g = I` for
    ``whitening="center"`` (the paper's forward) or :math:`(\Sigma_g + \epsilon I)^{-1/2}` for ``"zca"``;
    :math:`s_g` the g-th of G equal chunks of the style code, mapped by the shared MLP (``ct_weights``,
    ``ct_biases``; LeakyReLU between layers) to the d x d matrix :math:`M_g` (row-major), :math:`D_g` the
    diagonal of its column norms; :math:`\mathrm{MLP}_\mu` (``mu_weights``, ``mu_biases``) maps the style to
    C channel means. ``alpha=None`` leaves out the blend (y = c-hat + mu)."""
    name = "group_whitening_coloring"
    _check_input(name, x)
    check_eps(eps)
    if whitening not in _WHITENING_MODES:
        raise ValueError(f"{name}: whitening must be one of {_WHITENING_MODES}, got {whitening!r}")
    n, c = x.shape[0], x.shape[1]
    d = _check_groups(name, c, num_groups)
    _check_style(name, style, n, num_groups)
    _check_mlp(name, "the coloring MLP", ct_weights, ct_biases, style.shape[1] // num_groups, d * d)
    _check_mlp(name, "the mean MLP", mu_weights, mu_biases, style.shape[1], c)
    xf = upcast(x)
    sf = style.to(xf.dtype)
    xc = _centered(_grouped(xf, num_groups))
    if whitening == "zca":
        xc = _zca(xc.to(torch.float64), eps).to(xf.dtype)
    m, col_norm = _coloring_factors(sf, num_groups, ct_weights, ct_biases, negative_slope)
    coloring = (m / col_norm.unsqueeze(-2)) @ m.mT
    colored = (coloring @ xc).reshape(xf.shape)
    mu = _mlp(sf, mu_weights, mu_biases, negative_slope)
    y = colored + mu.reshape((n, c) + (1,) * (x.dim() - 2))
    if alpha is not None:
        a = alpha.reshape(()).to(xf.dtype) if isinstance(alpha, Tensor) else alpha
        y = a * y + (1 - a) * xf
    return y.to(x.dtype)


def gdwct_whitening_regularizer(x: Tensor, num_groups: int, eps: float = 1e-5) -> Tensor:
    r"""GDWCT's whitening regularization :math:`\mathrm{mean}\,|\Sigma_g - I|` over samples, groups and matrix
    entries, :math:`\Sigma_g = \bar c_g \bar c_g^\top / (P - 1) + \epsilon I` the covariance of each sample's
    centered group over its P positions (the official ``cov_c`` and ``reg``, per sample here)."""
    name = "gdwct_whitening_regularizer"
    _check_input(name, x)
    check_eps(eps)
    d = _check_groups(name, x.shape[1], num_groups)
    xc = _centered(_grouped(upcast(x), num_groups))
    eye = torch.eye(d, dtype=xc.dtype, device=xc.device)
    sigma = xc @ xc.mT / max(xc.shape[-1] - 1, 1) + eps * eye
    return (sigma - eye).abs().mean()


def gdwct_coloring_regularizer(
    style: Tensor,
    num_groups: int,
    ct_weights: Sequence[Tensor],
    ct_biases: Sequence[Tensor],
    negative_slope: float = 0.01,
) -> Tensor:
    r"""GDWCT's coloring regularization :math:`\mathrm{mean}\,|U_g^\top U_g - I|` over samples, groups and
    matrix entries, :math:`U_g = M_g D_g^{-1}` the column-normalized matrix predicted from the style code
    (pushes the predicted eigenvectors towards orthonormality, so that :math:`U_g D_g U_g^\top` is an
    eigendecomposition)."""
    name = "gdwct_coloring_regularizer"
    check_tensor(style, name)
    if style.dim() != 2 or style.shape[1] % num_groups:
        raise ValueError(
            f"{name} expects a style code of shape (N, S) with S divisible by num_groups = {num_groups}, "
            f"got shape {shape_str(style.shape)}"
        )
    sf = upcast(style)
    m, col_norm = _coloring_factors(sf, num_groups, ct_weights, ct_biases, negative_slope)
    u = m / col_norm.unsqueeze(-2)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    return (u.mT @ u - eye).abs().mean()
