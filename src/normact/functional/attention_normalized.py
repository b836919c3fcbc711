r"""Attention score normalizers that keep a row normalization but drop the softmax: normalized attention
(Richter & Wattenhofer: each row of scores standardized to mean 0, variance 1), length-scaled Softplus
attention LSSA and its re-weighted LSSAR (Gao & Spratling: Softplus and an :math:`\ell_1` normalization, then a
:math:`\mathrm{ReLU}^p` sharpening), and linear log-normal attention LLN (Nahshan et al.: exponential feature
maps moment-matched to softmax attention, computed in O(n)).

The conventions are those of :mod:`normact.functional.attention`: q (B, H, T, D), k (B, H, S, D),
v (B, H, S, Dv), ``causal`` aligned top left, ``mask`` boolean (True = attend, (B, S) or broadcasting to
(B, H, T, S)); a row with no key to attend gives zero weights and a zero output; float16/bfloat16 inputs are
computed in float32 and returned in their dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import upcast
from normact.functional._attention import attend, attention_keep_mask, check_qkv, score_matrix

__all__ = ["lln_attention", "lssa_attention", "lssar_attention", "normalized_attention"]

LLN_FIT_A = 0.14855178144710912
r"""Slope a of the fit :math:`\sigma^2_{sm} \approx a\, \sigma^2_{lln} + b` (authors' lln/lln_attention.py)."""
LLN_FIT_B = -0.35487039130661086
"""Intercept b of that fit."""


def _per_head(value: Tensor | None, default: float, q: Tensor, what: str, name: str) -> Tensor | float:
    """A one-element or per-head (H,) tensor as (1, H or 1, 1, 1), or ``default`` when None."""
    if value is None:
        return default
    if not isinstance(value, Tensor) or value.numel() not in (1, q.shape[1]):
        raise ValueError(
            f"{name}: {what} must be a tensor of 1 or heads = {q.shape[1]} elements, "
            f"got {getattr(value, 'shape', value)}"
        )
    return value.reshape(1, -1, 1, 1)


def _nonzero(x: Tensor) -> Tensor:
    """``x`` with its zeros replaced by 1 (a safe divisor for rows that are all zero)."""
    return x.masked_fill(x == 0, 1.0)


def _kept_count(keep: Tensor | None, scores: Tensor) -> Tensor:
    """The number of kept keys of each row, (B|1, H|1, T, 1), in the scores' dtype."""
    if keep is None:
        return torch.full((1, 1, 1, 1), float(scores.shape[-1]), dtype=scores.dtype, device=scores.device)
    return keep.sum(-1, keepdim=True).to(scores.dtype)


def normalized_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gain: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-3,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Normalized attention (Richter & Wattenhofer, 2020, arXiv:2005.09561): each row of scores
    :math:`s_{ts} = q_t \cdot k_s` standardized over its kept keys,

    .. math::
        w_{ts} = g\, \frac{s_{ts} - \mu_t}{\sigma_t + \epsilon} + b, \qquad
        \mu_t = \tfrac{1}{N_t} \sum_s s_{ts}, \quad \sigma_t^2 = \tfrac{1}{N_t} \sum_s (s_{ts} - \mu_t)^2,

    masked keys weigh 0; the weights are not a probability distribution (negative, unbounded sums). ``gain``
    g and ``bias`` b are one-element or per-head (H,) tensors (default 1 and 0); ``eps`` is added to the
    standard deviation, as in the authors' code (1e-3). No :math:`1/\sqrt{D}`: the standardization removes
    the scale."""
    name = "normalized_attention"
    check_qkv(q, k, v, name)
    g = _per_head(gain, 1.0, q, "gain", name)
    b = _per_head(bias, 0.0, q, "bias", name)
    scores = score_matrix(q, k, 1.0)
    keep = attention_keep_mask(q, k, causal, mask, name)
    if keep is not None:
        scores = scores.masked_fill(~keep, 0.0)
    count = _kept_count(keep, scores).clamp_min(1.0)
    centered = scores - scores.sum(-1, keepdim=True) / count
    if keep is not None:
        centered = centered.masked_fill(~keep, 0.0)
    var = (centered * centered).sum(-1, keepdim=True) / count
    spread = var > 0  # sqrt has no derivative at 0: constant rows (one key) get sigma = 0 and a zero gradient
    std = torch.where(spread, torch.sqrt(torch.where(spread, var, 1.0)), 0.0)
    weights = g * (centered / (std + eps)) + b
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    return attend(weights, v, return_weights)


def _lssa_weights(q: Tensor, k: Tensor, keep: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """LSSA's weights (B, H, T, S) and the kept-key counts N (B|1, H|1, T, 1)."""
    qn = F.normalize(upcast(q), dim=-1, eps=eps)
    kn = F.normalize(upcast(k), dim=-1, eps=eps)
    cosine = qn @ kn.transpose(-2, -1)
    count = _kept_count(keep, cosine)
    scale = math.log(q.shape[-1]) * torch.log(count.clamp_min(1.0))
    positive = F.softplus(scale * cosine)
    if keep is not None:
        positive = positive.masked_fill(~keep, 0.0)
    return positive / _nonzero(positive.sum(-1, keepdim=True)), count


def lssa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-12,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Length-scaled Softplus attention LSSA (Gao & Spratling, 2025, arXiv:2501.13428): queries and keys
    L2-normalized (``F.normalize``, ``eps``), then

    .. math::
        w_{ts} = \frac{\mathrm{softplus}(\log D\, \log N_t\; \hat q_t \cdot \hat k_s)}
        {\sum_{s'} \mathrm{softplus}(\log D\, \log N_t\; \hat q_t \cdot \hat k_{s'})}

    over the :math:`N_t` keys row t attends (its position + 1 under a causal mask): the temperature grows with
    the log of the number of keys. Exact :math:`\ell_1` normalization (Softplus is positive)."""
    name = "lssa_attention"
    check_qkv(q, k, v, name)
    keep = attention_keep_mask(q, k, causal, mask, name)
    weights, _ = _lssa_weights(q, k, keep, eps)
    return attend(weights, v, return_weights)


def lssar_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    power: float = 15.0,
    offset: float = 1.0,
    exempt_keys: int = 3,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-12,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""LSSA with re-weighting, LSSAR (Gao & Spratling, 2025, arXiv:2501.13428): the LSSA weights
    :math:`a_{ts}` sharpened and renormalized,

    .. math::
        w_{ts} = \frac{\mathrm{ReLU}(N_t a_{ts} - o_t)^p}{\sum_{s'} \mathrm{ReLU}(N_t a_{ts'} - o_t)^p},

    so only keys above the uniform weight :math:`o_t / N_t` survive and :math:`p \to \infty` tends to the argmax.
    ``offset`` o (the paper's all-ones O) is 0 for rows attending at most ``exempt_keys`` keys (the paper zeroes
    the first three rows of O). A row whose LSSA weights are all at or below :math:`o_t/N_t` (a uniform row)
    gets zero weights. Computed as :math:`(r / \max r)^p` for range."""
    name = "lssar_attention"
    check_qkv(q, k, v, name)
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power < 1:
        raise ValueError(f"{name}: power must be a number >= 1, got {power!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset) or offset < 0:
        raise ValueError(f"{name}: offset must be a number >= 0, got {offset!r}")
    if isinstance(exempt_keys, bool) or not isinstance(exempt_keys, int) or exempt_keys < 0:
        raise ValueError(f"{name}: exempt_keys must be an integer >= 0, got {exempt_keys!r}")
    keep = attention_keep_mask(q, k, causal, mask, name)
    lssa, count = _lssa_weights(q, k, keep, eps)
    row_offset = (count > exempt_keys).to(count.dtype) * float(offset)
    excess = torch.relu(lssa * count - row_offset)
    peak = excess.amax(-1, keepdim=True)
    sharpened = (excess / _nonzero(peak)) ** power
    weights = sharpened / _nonzero(sharpened.sum(-1, keepdim=True))
    return attend(weights, v, return_weights)


def lln_feature_scales(sigma_q: float | Tensor, sigma_k: float | Tensor) -> tuple[Tensor | float, Tensor | float]:
    r"""LLN's moment matching: the feature-map temperatures :math:`(\alpha, \beta)` for queries and keys of
    standard deviations :math:`\sigma_q, \sigma_k`,

    .. math::
        \tilde\sigma^2 = \frac{\sigma_q^2 \sigma_k^2 - b}{2a}, \qquad \alpha = \tilde\sigma / \sigma_q, \quad
        \beta = \tilde\sigma / \sigma_k,

    with the authors' fitted a = 0.14855..., b = -0.35487..., so that
    :math:`a(\alpha^2\sigma_q^2 + \beta^2\sigma_k^2) + b = \sigma_q^2\sigma_k^2`: the log-normal LLN weights get
    the spread of softmax attention."""
    tilde = ((sigma_q**2 * sigma_k**2 - LLN_FIT_B) / (2 * LLN_FIT_A)) ** 0.5
    return tilde / sigma_q, tilde / sigma_k


def _masked_std(x: Tensor, kept: Tensor | None) -> Tensor:
    """The standard deviation (Bessel-corrected, as ``Tensor.std``) of the entries of x (B, H, N, D) in the
    kept rows (B|1, H|1, N); 1 where fewer than two entries."""
    if kept is None:
        return x.std() if x.numel() > 1 else x.new_ones(())
    w = kept[..., None].expand_as(x).to(x.dtype)
    n = w.sum()
    mean = (x * w).sum() / n.clamp_min(1.0)
    var = (((x - mean) * w) ** 2).sum() / (n - 1).clamp_min(1.0)
    return torch.where(n > 1, var.sqrt(), torch.ones_like(var))


def _lln_scales(
    qf: Tensor, kf: Tensor, sigma_q: float | None, sigma_k: float | None, keep: Tensor | None
) -> tuple[Tensor | float, Tensor | float]:
    if sigma_q is not None and sigma_k is not None:
        return lln_feature_scales(sigma_q, sigma_k)
    with torch.no_grad():  # the authors' code: statistics of this call, no gradient through them
        tiny = torch.finfo(qf.dtype).tiny
        sq = (
            _masked_std(qf, None if keep is None else keep.any(-1)).clamp_min(tiny)
            if sigma_q is None
            else torch.tensor(sigma_q, dtype=qf.dtype, device=qf.device)
        )
        sk = (
            _masked_std(kf, None if keep is None else keep.any(-2)).clamp_min(tiny)
            if sigma_k is None
            else torch.tensor(sigma_k, dtype=qf.dtype, device=qf.device)
        )
        return lln_feature_scales(sq, sk)


def _lln_log_weights(lq: Tensor, lk: Tensor, keep: Tensor | None) -> Tensor:
    """The explicit LLN weights (B, H, T, S) from the exponents a q (B, H, T, D) and b k (B, H, S, D):
    softmax over the kept keys of logsumexp_d(a q_td + b k_sd), the log of phi_Q(q_t) . phi_K(k_s)."""
    logits = torch.logsumexp(lq.unsqueeze(-2) + lk.unsqueeze(-3), dim=-1)
    if keep is None:
        return torch.softmax(logits, dim=-1)
    empty = ~keep.any(-1, keepdim=True)
    logits = logits.masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0)
    return torch.softmax(logits, dim=-1).masked_fill(empty, 0.0)


def lln_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sigma_q: float | None = 1.0,
    sigma_k: float | None = 1.0,
    causal: bool = False,
    mask: Tensor | None = None,
    causal_prefix_sums: bool = False,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Linear log-normal attention LLN (Nahshan, Kampeas & Haleva, 2023, arXiv:2311.13541): linear attention
    with the elementwise feature maps :math:`\Phi_Q(q) = e^{\alpha q}`, :math:`\Phi_K(k) = e^{\beta k}`,

    .. math::
        o_t = \frac{\Phi_Q(q_t)^\top \sum_s \Phi_K(k_s) v_s^\top}{\Phi_Q(q_t)^\top \sum_s \Phi_K(k_s)},

    :math:`(\alpha, \beta)` from :func:`lln_feature_scales` for query/key standard deviations ``sigma_q``,
    ``sigma_k``; None estimates them from this call's kept queries and keys without gradient (the authors' code:
    one statistic over the whole batch, which also sees the future of a causal sequence).

    Without ``causal`` and with masks over keys only ((B, S) padding), the O(T + S) form
    :math:`\Phi_Q (\Phi_K^\top V)`, the key features shifted by their maxima over the keys (moved to the query
    side) and each query row by its maximum: every denominator is then >= 1. With ``causal_prefix_sums`` a
    causal call runs the O(T + S) prefix-sum form too (the authors' CausalDotProduct); it is exact in exact
    arithmetic, but a row whose visible keys all sit far below the head's maxima underflows to 0 (scores
    beyond about 80 in float32). Otherwise (causal, query-dependent masks, ``return_weights``) the explicit
    weights :math:`\mathrm{softmax}_s \log \sum_d e^{\alpha q_{td} + \beta k_{sd}}`, robust at any scale,
    in O(T S D) memory. Rows are normalized exactly: the authors add 1e-8 to the denominator, which does not
    cancel with the shifts and would let a future key's shift reach earlier rows."""
    name = "lln_attention"
    check_qkv(q, k, v, name)
    for what, sigma in (("sigma_q", sigma_q), ("sigma_k", sigma_k)):
        if sigma is not None and (
            isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0
        ):
            raise ValueError(f"{name}: {what} must be a positive number or None (estimated), got {sigma!r}")
    keep = attention_keep_mask(q, k, causal, mask, name)
    qf, kf = upcast(q), upcast(k)
    alpha, beta = _lln_scales(qf, kf, sigma_q, sigma_k, keep)
    lq, lk = alpha * qf, beta * kf
    key_mask = attention_keep_mask(q, k, False, mask, name)
    per_query_mask = key_mask is not None and key_mask.shape[-2] != 1
    if return_weights or per_query_mask or (causal and not causal_prefix_sums):
        return attend(_lln_log_weights(lq, lk, keep), v, return_weights)
    if keep is not None:  # keys no query attends: out of the shift and weight 0
        lk = lk.masked_fill(~keep.any(-2)[..., None], float("-inf"))
    # exp(a q_td + b k_sd) = exp(a q_td + m_d - c_t) exp(b k_sd - m_d) exp(c_t): the feature shift m_d (max over
    # the keys) moves to the query side and c_t (max over d) cancels in the row's normalization
    feature_max = lk.amax(-2, keepdim=True)
    feature_max = torch.where(torch.isfinite(feature_max), feature_max, 0.0)
    phi_k = torch.exp(lk - feature_max)
    lq = lq + feature_max
    phi_q = torch.exp(lq - lq.amax(-1, keepdim=True))
    vf = upcast(v)
    if not causal:
        numerator = phi_q @ (phi_k.transpose(-2, -1) @ vf)
        denominator = phi_q @ phi_k.sum(-2).unsqueeze(-1)
    else:  # prefix sums over the keys; query t (aligned top left) reads the prefix up to key min(t, S - 1)
        t, s = q.shape[2], k.shape[2]
        upto = torch.arange(t, device=q.device).clamp(max=s - 1)
        kv_prefix = (phi_k.unsqueeze(-1) * vf.unsqueeze(-2)).cumsum(2).index_select(2, upto)
        numerator = torch.einsum("bhtd,bhtde->bhte", phi_q, kv_prefix)
        denominator = (phi_q * phi_k.cumsum(2).index_select(2, upto)).sum(-1, keepdim=True)
    return (numerator / _nonzero(denominator)).to(v.dtype)
