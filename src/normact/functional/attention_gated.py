r"""Linear attentions with a norm-aware kernel or a refined forget gate: NaLaFormer's norm-aware linear attention
(Meng et al., 2025, arXiv:2506.21137) and ReGLA, refining gated linear attention (Lu et al., 2025,
arXiv:2502.01578).

The shapes, masks and causal convention are those of :mod:`normact.functional.attention`. Each function has two
forms that give the same result (as :mod:`normact.functional.attention_linear`):

* ``mode="parallel"`` (default): the explicit (B, H, T, S) weight matrix, any mask; loop-free (compiles with
  ``fullgraph=True``).
* ``mode="recurrent"``: the O(n) form: keys first, or a running (D, Dv) state over the positions (a Python loop;
  without ``causal`` a forward and a backward scan). It takes key masks only ((B, S), or a mask of size 1 along
  the queries).

ReGLA's forget gate comes from the token (:math:`g_t = \sigma(W_g x_t + b_g)`), which a q/k/v normalizer does not
see: the gate and refiner logits are tensor arguments broadcasting to (B, H, P, D), P = max(T, S) positions and D
the key features (a per-head constant, a per-token scalar, or GLA's per-feature gate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import upcast
from normact.functional._attention import attention_keep_mask, check_qkv
from normact.functional.attention_linear import (
    OUTPUT_NORMS,
    _check_eps,
    _check_mode,
    _finish,
    _key_mask,
    _linear_attention,
    _output_norm,
)

__all__ = ["nala_attention", "nala_features", "regla_attention", "regla_feature_scale", "regla_refined_gate"]

NALA_POWER = 3.0
"""p = 3 (0.5 + tanh |q|): the query power's scale (authors' NaLaformer/NALA.py)."""
NALA_KEY_POWER = 3
"""Keys are cubed before the ReLU split (authors' NaLaformer/NALA.py: ``k = k ** 3``)."""


def _power(x: Tensor, p: Tensor) -> Tensor:
    """``x ** p`` for ``x >= 0`` with finite first and second derivatives at ``x = 0`` (where it is 0)."""
    positive = x > 0
    return torch.where(positive, torch.exp(p * torch.log(torch.where(positive, x, torch.ones_like(x)))), 0.0)


def nala_features(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    r"""NaLaFormer's feature maps (2D features from D): :math:`\phi_q(q) = [(\mathrm{ReLU}(q)/\lVert q\rVert)^p;
    (\mathrm{ReLU}(-q)/\lVert q\rVert)^p]` with the query-norm-aware power :math:`p = 3(0.5 + \tanh\lVert q\rVert)`,
    and :math:`\phi_k(k) = [\mathrm{ReLU}(k^3); \mathrm{ReLU}(-k^3)]`. Both are non-negative, and
    :math:`\phi_q\cdot\phi_k` keeps only the same-sign products of each dimension."""
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    power = NALA_POWER * (0.5 + torch.tanh(norm))
    unit = q / norm.clamp_min(torch.finfo(q.dtype).tiny)
    phi_q = torch.cat([_power(F.relu(unit), power), _power(F.relu(-unit), power)], dim=-1)
    cubed = k**NALA_KEY_POWER
    phi_k = torch.cat([F.relu(cubed), F.relu(-cubed)], dim=-1)
    return phi_q, phi_k


def nala_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-6,
    mode: str = "parallel",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Norm-aware linear attention, NaLa (Meng et al., 2025, arXiv:2506.21137), as the authors' code:
    :math:`o_t = \phi_q(q_t)\,\big(\frac{1}{n_t}\sum_s \phi_k(k_s)^\top v_s\big)\, /\, \big(\phi_q(q_t)\cdot
    \frac{1}{n_t}\sum_s\phi_k(k_s) + \epsilon\big)` with the features of :func:`nala_features` and :math:`n_t` the
    keys query t attends. The weights :math:`w_{ts} = \phi_q(q_t)\cdot\phi_k(k_s) / (\sum_{s'}
    \phi_q(q_t)\cdot\phi_k(k_{s'}) + n_t\epsilon)` are non-negative and sum to 1 up to :math:`\epsilon`. The
    block's RoPE (on the features, numerator only), LePE, LayerNorm, SiLU gate and projections are left out."""
    name = "nala_attention"
    check_qkv(q, k, v, name)
    _check_mode(mode, name)
    _check_eps(eps, name)
    phi_q, phi_k = nala_features(upcast(q), upcast(k))
    vf = upcast(v)
    values = torch.cat([vf, vf.new_ones(*vf.shape[:-1], 1)], dim=-1)  # the last column sums the weights
    out, weights = _linear_attention(phi_q, phi_k, values, causal, mask, None, True, mode, return_weights, name)
    inverse = 1.0 / (out[..., -1:] + eps)  # z of the code: 1 / (phi_q . mean_s phi_k + eps)
    return _finish(out[..., :-1] * inverse, None if weights is None else weights * inverse, v.dtype)


def regla_refined_gate(gate_logits: Tensor, refine_logits: Tensor | None = None) -> Tensor:
    r"""ReGLA's refined forget gate :math:`F = r\,(1 - (1-g)^2) + (1-r)\,g^2 = g\,(g + 2r(1-g))` with
    :math:`g = \sigma(a)`, :math:`r = \sigma(b)`, returned as :math:`\log F` (finite: floored at the log of the
    dtype's smallest normal). F lies in :math:`[g^2, 1-(1-g)^2]`; ``refine_logits=None`` is r = 1/2, F = g."""
    log_g = F.logsigmoid(gate_logits)
    if refine_logits is None:
        return log_g
    g, r = torch.sigmoid(gate_logits), torch.sigmoid(refine_logits)
    tiny = torch.finfo(log_g.dtype).tiny
    return (log_g + torch.log((g + 2.0 * r * torch.sigmoid(-gate_logits)).clamp_min(tiny))).clamp_min(math.log(tiny))


def regla_feature_scale(features: int) -> float:
    r"""ReGLA's variance-reduction factor :math:`1/(e\sqrt{m(e^2-1)})` for m features: the standard deviation of
    :math:`\sum_i e^{x_i} e^{y_i}`, :math:`x, y \sim N(0, I_m)`, is :math:`e\sqrt{m(e^2-1)}`."""
    return 1.0 / (math.e * math.sqrt(features * (math.e**2 - 1.0)))


def _gate_tensor(logits: Tensor | None, q: Tensor, k: Tensor, what: str, name: str) -> Tensor | None:
    if logits is None:
        return None
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"{name}: {what} must be a floating tensor, got {getattr(logits, 'dtype', type(logits))}")
    target = (q.shape[0], q.shape[1], max(q.shape[2], k.shape[2]), q.shape[3])
    try:
        if logits.dim() > 4:
            raise RuntimeError
        torch.broadcast_shapes(logits.shape, target)
    except RuntimeError:
        raise ValueError(
            f"{name}: {what} must broadcast to (batch, heads, positions, head_dim) = {target} (positions = "
            f"max(queries, keys)), got {tuple(logits.shape)}"
        ) from None
    return upcast(logits).to(q.device)


def _log_gates(gate: Tensor | None, refine: Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """log F of shape (B|1, H|1, P, D|1): the refined gate at every position."""
    if gate is None:
        return None
    log_f = regla_refined_gate(gate, refine)
    log_f = log_f.reshape((1,) * (4 - log_f.dim()) + tuple(log_f.shape))
    positions = max(q.shape[2], k.shape[2])
    return log_f.expand(*log_f.shape[:2], positions, log_f.shape[3])


def _row_key_max(k: Tensor, keep: Tensor | None) -> Tensor:
    """(B|1, H, T|1, 1): the largest key entry among the keys each query attends (0 for rows without one)."""
    top = k.amax(-1)[:, :, None, :]  # (B, H, 1, S)
    if keep is not None:
        top = torch.where(keep, top, float("-inf"))
    top = top.amax(-1, keepdim=True)
    return torch.where(torch.isfinite(top), top, 0.0)


def _regla_parallel(
    phi_q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, log_f: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Weights ``w_ts = scale sum_i phi_q[t, i] exp(k[s, i] - M_t) prod_{r in (min(t,s), max(t,s)]} F[r, i]``."""
    t_len, s_len = phi_q.shape[2], k.shape[2]
    exponent = k[:, :, None, :, :] - _row_key_max(k, keep)[..., None]  # (B, H, T, S, D)
    if log_f is not None:
        cum = log_f.cumsum(2)  # C_p = sum_{r <= p} log F_r; prod_{r in (a, b]} F_r = exp(-|C_b - C_a|)
        exponent = exponent - (cum[:, :, :t_len, None, :] - cum[:, :, None, :s_len, :]).abs()
    if keep is not None:
        exponent = torch.where(keep[..., None], exponent, float("-inf"))
    weights = torch.einsum("bhtd,bhtsd->bhts", phi_q, torch.exp(exponent)) * scale
    return weights @ v, weights


def _regla_recurrent(
    phi_q: Tensor,
    k: Tensor,
    v: Tensor,
    keep: Tensor | None,
    causal: bool,
    log_f: Tensor | None,
    scale: float,
    name: str,
) -> Tensor:
    """The O(n) form of :func:`_regla_parallel` for a key-only ``keep``: a running state ``S_p = F_p * S_{p-1} +
    phi_k(k_p)^T v_p`` (and the mirror scan without ``causal``), rebased when the running key maximum grows."""
    key_keep = _key_mask(keep, name)  # (B|1, H|1, S, 1)
    b, h, t_len, d = phi_q.shape
    s_len = k.shape[2]
    top = k.amax(-1, keepdim=True)  # (B, H, S, 1)
    if key_keep is not None:
        top = torch.where(key_keep, top, float("-inf"))
    if causal:  # M_t over the kept keys s <= t: rebase the state by exp(M_{t-1} - M_t)
        running = torch.cummax(top, dim=2).values
        running = running[:, :, torch.arange(t_len, device=k.device).clamp_max(s_len - 1)]
    else:
        running = top.amax(2, keepdim=True).expand(-1, -1, t_len, -1)
    defined = torch.isfinite(running)
    running = torch.where(defined, running, 0.0)
    gates = None if log_f is None else torch.exp(log_f)  # (B|1, H|1, P, D|1)
    batch, heads = max(b, k.shape[0]), max(h, k.shape[1])
    state = phi_q.new_zeros(batch, heads, d, v.shape[3])

    def contribution(p: int, offset: Tensor) -> Tensor:
        exponent = k[:, :, p] - offset  # (B, H, D)
        if key_keep is not None:
            exponent = torch.where(key_keep[:, :, p], exponent, float("-inf"))
        return torch.exp(exponent)[..., :, None] * v[:, :, p, None, :]

    outs = []
    if causal:
        previous = running[:, :, 0]
        for t in range(t_len):
            current = running[:, :, t]
            if t > 0:
                # a state with no kept key yet is zero: rebase it by 1 (no overflow) instead of exp(M_{t-1} - M_t)
                base = torch.where(defined[:, :, t - 1], previous, current)
                state = torch.exp(base - current)[..., None] * state
                if gates is not None:
                    state = gates[:, :, t, :, None] * state
            if t < s_len:
                state = state + contribution(t, current)
            outs.append(phi_q[:, :, t, None, :] @ state)
            previous = current
        return torch.cat(outs, dim=2) * scale
    offset = running[:, :, 0]
    positions = max(t_len, s_len)
    forward = []
    for p in range(positions):  # S_p = F_p S_{p-1} + phi_k(k_p)^T v_p: the keys s <= p
        if gates is not None and p > 0:
            state = gates[:, :, p, :, None] * state
        if p < s_len:
            state = state + contribution(p, offset)
        if p < t_len:
            forward.append(state)
    mirror = phi_q.new_zeros(batch, heads, d, v.shape[3])
    backward: list[Tensor] = []
    for p in range(positions - 1, -1, -1):  # B_p = F_{p+1} (phi_k(k_{p+1})^T v_{p+1} + B_{p+1}): the keys s > p
        if p + 1 < positions:
            if p + 1 < s_len:
                mirror = mirror + contribution(p + 1, offset)
            if gates is not None:
                mirror = gates[:, :, p + 1, :, None] * mirror
        if p < t_len:
            backward.append(mirror)
    backward = backward[::-1]
    for t in range(t_len):
        outs.append(phi_q[:, :, t, None, :] @ (forward[t] + backward[t]))
    return torch.cat(outs, dim=2) * scale


def _empty_rows(q: Tensor, k: Tensor, causal: bool, mask: Tensor | None, name: str) -> Tensor | None:
    """(B|1, H|1, T, 1) True for the queries without a key to attend, or None when every query has one."""
    if mask is None:
        return None if k.shape[2] > 0 else q.new_ones(1, 1, q.shape[2], 1, dtype=torch.bool)
    keep = attention_keep_mask(q, k, causal, mask, name)
    assert keep is not None
    return ~keep.any(-1, keepdim=True)


def regla_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate_logits: Tensor | None = None,
    refine_logits: Tensor | None = None,
    causal: bool = False,
    mask: Tensor | None = None,
    norm: str = "layer",
    per_head: bool = True,
    eps: float = 1e-5,
    scale: float | None = None,
    mode: str = "parallel",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""ReGLA, refining gated linear attention (Lu et al., 2025, arXiv:2502.01578): the safe exponential feature
    maps :math:`\phi(q_t)_i = e^{q_{ti} - \max_j q_{tj}}`, :math:`\phi(k_s)_i = e^{k_{si} - M_t}` (:math:`M_t` the
    largest entry of the keys query t attends), the refined gate :math:`F_p` of :func:`regla_refined_gate` along
    the key features (GLA's outer-product gating), and a norm on the output instead of a denominator:

    .. math::
        o_t = \mathrm{Norm}\Big(c \sum_s \sum_i \phi(q_t)_i\, \phi(k_s)_i \prod_{s < p \le t} F_{p,i}\; v_s\Big),
        \qquad c = \frac{1}{e\sqrt{D(e^2-1)}}

    causal: :math:`S_t = \mathrm{Diag}(F_t) S_{t-1} + \phi(k_t)^\top v_t`, :math:`o_t = \mathrm{Norm}(c\,\phi(q_t)
    S_t)`. Without ``causal``, the same decay both ways (the gates strictly after the earlier position up to the
    later one). ``gate_logits`` a and ``refine_logits`` b broadcast to (B, H, max(T, S), D); None: no forgetting
    (F = 1) and r = 1/2 (F = g). ``norm``: "layer" (LayerNorm, no affine) or "rms", per head or over all heads of
    a token; ``scale`` c defaults to the paper's variance reduction. The weights returned are those inside the
    norm; rows with no key to attend are zero."""
    name = "regla_attention"
    check_qkv(q, k, v, name)
    _check_mode(mode, name)
    _check_eps(eps, name)
    if norm not in OUTPUT_NORMS:
        raise ValueError(f"{name}: norm must be one of {OUTPUT_NORMS}, got {norm!r}")
    if scale is None:
        scale = regla_feature_scale(q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{name}: scale must be a positive number or None, got {scale!r}")
    gate = _gate_tensor(gate_logits, q, k, "gate_logits", name)
    refine = _gate_tensor(refine_logits, q, k, "refine_logits", name)
    if refine is not None and gate is None:
        gate = torch.full((1,), float("inf"), dtype=refine.dtype, device=refine.device)  # g = 1
    qf, kf, vf = upcast(q), upcast(k), upcast(v)
    phi_q = torch.exp(qf - qf.amax(-1, keepdim=True))
    log_f = _log_gates(gate, refine, q, k)
    weights = None
    if mode == "parallel" or return_weights:
        keep = attention_keep_mask(q, k, causal, mask, name)
        out, weights = _regla_parallel(phi_q, kf, vf, keep, log_f, float(scale))
    if mode == "recurrent":
        key_only = attention_keep_mask(q, k, False, mask, name)
        out = _regla_recurrent(phi_q, kf, vf, key_only, causal, log_f, float(scale), name)
    out = _output_norm(out, norm, per_head, eps)
    empty = _empty_rows(q, k, causal, mask, name)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return _finish(out, weights if return_weights else None, v.dtype)
