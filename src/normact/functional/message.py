"""Stateless form of MsgNorm, the message normalization of DeeperGCN (Li, Xiong, Thabet & Ghanem, 2020).

PyG semantics (``torch_geometric.nn.MessageNorm``): the function returns the normalized message
``s * ||x||_p * msg / ||msg||_p``; the residual sum ``x + ...`` and the MLP are left to the caller.
Norms are taken over the last dimension in float32 for float16/bfloat16 inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normact._checks import check_eps, check_float, check_tensor, shape_str, upcast

__all__ = ["msg_norm"]


def _p_norm(t: Tensor, p: float) -> Tensor:
    """``||t||_p`` over the last dim as ``m ||t / m||_p`` with ``m = max |t|`` (held constant: the identity
    holds for any m, so the gradient is exact): ``sum |t|^p`` would overflow float32 from ``|t| ~ 2^42`` for
    p = 3 although the norm itself is representable."""
    m = t.detach().abs().amax(-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    return m * torch.linalg.vector_norm(t / m, ord=p, dim=-1, keepdim=True)


def msg_norm(x: Tensor, msg: Tensor, scale: Tensor | float = 1.0, p: float = 2.0, eps: float = 1e-12) -> Tensor:
    r"""MsgNorm (Li, Xiong, Thabet & Ghanem, 2020, arXiv:2006.07739) of node features ``x`` and aggregated
    messages ``msg`` of the same shape ``(*, F)``:

    .. math::
        y = s \cdot \lVert x \rVert_p \cdot \frac{m}{\max(\lVert m \rVert_p, \epsilon)}

    per node (the norms over the last dimension). ``scale`` is the scalar s (a tensor of one element or a
    float). The caller adds the result to ``x`` (DeeperGCN's ``h + MsgNorm(h, m)``), as with PyG."""
    name = "msg_norm"
    check_tensor(x, name)
    check_tensor(msg, f"{name} (msg)")
    if x.dim() < 1:
        raise ValueError(f"{name} expects x of shape (*, F), got shape {shape_str(x.shape)}")
    if msg.shape != x.shape:
        raise ValueError(
            f"{name} expects msg of the shape of x, {shape_str(x.shape)}, got shape {shape_str(msg.shape)}"
        )
    check_float("p", p, positive=True)
    check_eps(eps)
    if isinstance(scale, Tensor) and scale.numel() != 1:
        raise ValueError(f"{name}: scale must have 1 element, got shape {shape_str(scale.shape)}")
    xf, mf = upcast(x), upcast(msg).to(upcast(x).dtype)
    x_norm = _p_norm(xf, p)
    m_norm = _p_norm(mf, p).clamp_min(eps)
    s = scale.reshape(()).to(xf.dtype) if isinstance(scale, Tensor) else scale
    return (mf / m_norm * x_norm * s).to(x.dtype)
