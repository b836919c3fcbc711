r"""Linear attentions without softmax, normalized elsewhere: Galerkin and Fourier attention (Cao, 2021,
arXiv:2105.14995) layer-normalize two of q, k, v and divide by the number of keys; TransNormer's NormAttention
(Qin et al., 2022, arXiv:2210.10340; TransNormerLLM, arXiv:2307.14995) normalizes the output instead, with
TransNormerLLM's exponential decay :math:`\lambda^{|t-s|}`.

The shapes, masks and causal convention are those of :mod:`normact.functional.attention`. Each function has two
forms that give the same result:

* ``mode="parallel"`` (default): the explicit (B, H, T, S) weight matrix, any mask; loop-free (compiles with
  ``fullgraph=True``).
* ``mode="recurrent"``: the O(n) form. Without ``causal`` and decay, :math:`q\,(k^\top v)` (keys first); with
  ``causal``, a running (D, Dv) state over the tokens (a Python loop); with a decay and no ``causal``, a forward
  and a backward scan. It takes key masks only ((B, S), or a mask of size 1 along the queries).

The weights returned with ``return_weights=True`` are the explicit linear weights: signed and not normalized
(their rows do not sum to 1), and for TransNormer taken before the output normalization.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import upcast
from normact.functional._attention import attention_keep_mask, check_qkv, default_scale

__all__ = ["fourier_attention", "galerkin_attention", "norm_linear_attention", "transnormer_decay"]

MODES = ("parallel", "recurrent")
FEATURE_MAPS = ("silu", "elu_plus_one", "relu", "identity")
OUTPUT_NORMS = ("rms", "layer")


def _check_mode(mode: str, name: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")


def _check_eps(eps: float, name: str) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{name}: eps must be a positive number, got {eps!r}")


def _key_mask(keep: Tensor | None, name: str) -> Tensor | None:
    """The (B|1, H|1, S, 1) float mask of the keys of a key-only ``keep`` (size 1 along the queries)."""
    if keep is None:
        return None
    if keep.shape[2] != 1:
        raise ValueError(
            f"{name}: mode='recurrent' takes a key mask ((batch, keys), or size 1 along the queries) and the causal "
            f"flag, got a mask of shape {tuple(keep.shape)}; use mode='parallel' for other masks"
        )
    return keep.transpose(-2, -1)


def _distance_decay(decay: Tensor, t: int, s: int) -> Tensor:
    """:math:`\\lambda_h^{|t-s|}` of shape (1, H, T, S) for the per-head decay ``decay`` (H,)."""
    pos_t = torch.arange(t, device=decay.device, dtype=decay.dtype)
    pos_s = torch.arange(s, device=decay.device, dtype=decay.dtype)
    dist = (pos_t[:, None] - pos_s[None, :]).abs()
    return decay.reshape(1, -1, 1, 1) ** dist


def _parallel(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, decay: Tensor | None, per_key_mean: bool
) -> tuple[Tensor, Tensor]:
    """The explicit form: weights ``w_ts = lambda^|t-s| q_t . k_s`` (divided by the number of kept keys of row t
    when ``per_key_mean``), zero where not kept, and ``w @ v``."""
    weights = q @ k.transpose(-2, -1)
    if decay is not None:
        weights = weights * _distance_decay(decay.to(weights.dtype), q.shape[2], k.shape[2])
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    if per_key_mean:
        if keep is None:
            weights = weights / k.shape[2]
        else:
            weights = weights / keep.sum(-1, keepdim=True).clamp_min(1).to(weights.dtype)
    return weights @ v, weights


def _causal_scan(q: Tensor, k: Tensor, v: Tensor, lam: Tensor | None) -> Tensor:
    """``o_t = q_t S_t`` with ``S_t = lam S_{t-1} + k_t^T v_t`` over t < T (keys beyond S add nothing)."""
    b, h, t_len, _ = q.shape
    state = q.new_zeros(b, h, k.shape[3], v.shape[3])
    outs = []
    for t in range(t_len):
        if lam is not None:
            state = lam * state
        if t < k.shape[2]:
            state = state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(q[:, :, t, None, :] @ state)
    return torch.cat(outs, dim=2)


def _anticausal_scan(q: Tensor, k: Tensor, v: Tensor, lam: Tensor) -> Tensor:
    """``o_t = q_t sum_{s > t} lam^(s-t) k_s^T v_s``: a backward scan."""
    b, h, t_len, _ = q.shape
    length = max(t_len, k.shape[2])
    state = q.new_zeros(b, h, k.shape[3], v.shape[3])  # sum_{s >= p} lam^(s - p) k_s^T v_s
    outs: list[Tensor] = []
    for p in range(length, 0, -1):  # state holds position p on entry: the output of query p - 1
        if p - 1 < t_len:
            outs.append(q[:, :, p - 1, None, :] @ (lam * state))
        state = lam * state
        if p - 1 < k.shape[2]:
            state = state + k[:, :, p - 1, :, None] * v[:, :, p - 1, None, :]
    return torch.cat(outs[::-1], dim=2)


def _recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep: Tensor | None,
    causal: bool,
    decay: Tensor | None,
    per_key_mean: bool,
    name: str,
) -> Tensor:
    """The O(n) form of :func:`_parallel` for a key-only ``keep`` and the causal flag."""
    key_keep = _key_mask(keep, name)
    if key_keep is not None:
        k = k * key_keep.to(k.dtype)
        v = v * key_keep.to(v.dtype)
    lam = None if decay is None else decay.to(q.dtype).reshape(1, -1, 1, 1)
    if causal:
        out = _causal_scan(q, k, v, lam)
    elif lam is None:
        out = q @ (k.transpose(-2, -1) @ v)  # keys first: O(S D Dv + T D Dv)
    else:
        out = _causal_scan(q, k, v, lam) + _anticausal_scan(q, k, v, lam)
    if per_key_mean:
        s_len, t_len = k.shape[2], q.shape[2]
        ones = q.new_ones(1, 1, s_len, 1) if key_keep is None else key_keep.to(q.dtype)
        if causal:  # kept keys among s <= min(t, S - 1)
            counts = ones.cumsum(2)
            counts = counts[:, :, torch.arange(t_len, device=q.device).clamp_max(s_len - 1)]
        else:
            counts = ones.sum(2, keepdim=True)
        out = out / counts.clamp_min(1)
    return out


def _linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    mask: Tensor | None,
    decay: Tensor | None,
    per_key_mean: bool,
    mode: str,
    return_weights: bool,
    name: str,
) -> tuple[Tensor, Tensor | None]:
    """The shared body of the three functions: ``(output, weights or None)`` in q's (upcast) dtype."""
    if mode == "parallel" or return_weights:
        keep = attention_keep_mask(q, k, causal, mask, name)
        out, weights = _parallel(q, k, v, keep, decay, per_key_mean)
        if mode == "parallel":
            return out, weights if return_weights else None
        key_only = attention_keep_mask(q, k, False, mask, name)
        return _recurrent(q, k, v, key_only, causal, decay, per_key_mean, name), weights
    keep = attention_keep_mask(q, k, False, mask, name)
    return _recurrent(q, k, v, keep, causal, decay, per_key_mean, name), None


def _finish(out: Tensor, weights: Tensor | None, dtype: torch.dtype) -> Tensor | tuple[Tensor, Tensor]:
    return out.to(dtype) if weights is None else (out.to(dtype), weights.to(dtype))


def _layer_norm_last(x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def galerkin_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-5,
    mode: str = "parallel",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Galerkin attention (Cao, 2021, arXiv:2105.14995): :math:`o_t = \frac{1}{n_t}\sum_s (q_t\cdot\tilde k_s)\,
    \tilde v_s = q_t\,(\tilde K^\top \tilde V)/n` with :math:`\tilde k_s`, :math:`\tilde v_s` layer-normalized
    over the head dimension (no affine, ``eps``) and :math:`n_t` the number of keys query t attends; no softmax,
    no :math:`1/\sqrt{D}`. The weights are :math:`q_t\cdot\tilde k_s / n_t` (signed) and multiply the normalized
    values :math:`\tilde v_s`."""
    check_qkv(q, k, v, "galerkin_attention")
    _check_mode(mode, "galerkin_attention")
    _check_eps(eps, "galerkin_attention")
    kn, vn = _layer_norm_last(upcast(k), eps), _layer_norm_last(upcast(v), eps)
    out, weights = _linear_attention(
        upcast(q), kn, vn, causal, mask, None, True, mode, return_weights, "galerkin_attention"
    )
    return _finish(out, weights, v.dtype)


def fourier_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
    eps: float = 1e-5,
    mode: str = "parallel",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Fourier attention (Cao, 2021, arXiv:2105.14995): :math:`o_t = \frac{\sigma}{n_t}\sum_s (\tilde q_t\cdot
    \tilde k_s)\, v_s` with :math:`\tilde q_t`, :math:`\tilde k_s` layer-normalized over the head dimension (no
    affine, ``eps``), :math:`n_t` the number of keys query t attends and :math:`\sigma` = ``scale`` (default
    :math:`1/\sqrt{D}`, as the authors' code; the paper writes :math:`(\tilde Q\tilde K^\top)V/n`, ``scale=1``).
    The weights :math:`\sigma\,\tilde q_t\cdot\tilde k_s/n_t` are signed."""
    check_qkv(q, k, v, "fourier_attention")
    _check_mode(mode, "fourier_attention")
    _check_eps(eps, "fourier_attention")
    scale = default_scale(q, scale, "fourier_attention")
    qn, kn = _layer_norm_last(upcast(q), eps) * scale, _layer_norm_last(upcast(k), eps)
    out, weights = _linear_attention(
        qn, kn, upcast(v), causal, mask, None, True, mode, return_weights, "fourier_attention"
    )
    return _finish(out, weights, v.dtype)


def transnormer_decay(
    num_heads: int, layer_index: int = 0, num_layers: int = 1, device: torch.device | str | None = None
) -> Tensor:
    r"""TransNormerLLM's per-head decay :math:`\lambda_h = \exp(-m_h\,(1 - l/(L-1) + 10^{-5}))` (H,) in float64:
    the ALiBi slopes :math:`m_h = 2^{-8(h+1)/H}` (H a power of 2; otherwise the ALiBi interleaving) scaled down
    from the first layer (l = 0) to the last (l = L - 1, almost no decay)."""
    for what, value in (("num_heads", num_heads), ("layer_index", layer_index), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"transnormer_decay: {what} must be an int, got {value!r}")
    if num_heads < 1 or num_layers < 1 or not 0 <= layer_index < num_layers:
        raise ValueError(
            f"transnormer_decay: need num_heads >= 1, num_layers >= 1 and 0 <= layer_index < num_layers, got "
            f"{num_heads}, {num_layers} and {layer_index}"
        )

    def slopes(n: int) -> list[float]:
        power = 2 ** math.floor(math.log2(n))
        start = 2.0 ** (-8.0 / power)
        base = [start ** (i + 1) for i in range(power)]
        return base if power == n else base + slopes(2 * power)[0::2][: n - power]

    depth = 1.0 - (layer_index / (num_layers - 1) if num_layers > 1 else 0.0) + 1e-5
    rates = torch.tensor(slopes(num_heads), dtype=torch.float64, device=device) * depth
    return torch.exp(-rates)


def _feature(x: Tensor, feature_map: str) -> Tensor:
    if feature_map == "silu":
        return F.silu(x)
    if feature_map == "elu_plus_one":
        return F.elu(x) + 1.0
    if feature_map == "relu":
        return F.relu(x)
    return x


def _output_norm(out: Tensor, norm: str, per_head: bool, eps: float) -> Tensor:
    """SRMSNorm ``x / sqrt(mean(x^2) + eps)`` or LayerNorm without affine, over each head's features or over
    all heads' features of a token together (``per_head=False``, as the concatenated hidden state)."""
    b, h, t, e = out.shape
    x = out if per_head else out.transpose(1, 2).reshape(b, t, h * e)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) if norm == "rms" else _layer_norm_last(x, eps)
    return x if per_head else x.reshape(b, t, h, e).transpose(1, 2)


def norm_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    decay: float | Tensor | None = None,
    causal: bool = False,
    mask: Tensor | None = None,
    feature_map: str = "silu",
    norm: str = "rms",
    per_head: bool = False,
    eps: float = 1e-6,
    mode: str = "parallel",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""TransNormer's NormAttention (Qin et al., 2022, arXiv:2210.10340) with TransNormerLLM's decay
    (arXiv:2307.14995): :math:`o_t = \mathrm{Norm}\big(\sum_s \lambda^{|t-s|}\,(\phi(q_t)\cdot\phi(k_s))\, v_s\big)`.

    ``feature_map`` :math:`\phi`: "silu" (TransNormerLLM), "elu_plus_one" (TransNormer), "relu" or "identity".
    ``decay`` :math:`\lambda \in (0, 1]`: None (no decay), a number, or one per head (H,) (see
    :func:`transnormer_decay`); causal, :math:`\lambda^{t-s}` is TransNormerLLM's Lightning-attention mask.
    ``norm``: "rms" (SRMSNorm :math:`x/\sqrt{\overline{x^2}+\epsilon}`, TransNormerLLM) or "layer" (LayerNorm
    without affine, TransNormer), over all heads of a token together (the authors' code) or per head. The
    returned weights are :math:`\lambda^{|t-s|}\phi(q_t)\cdot\phi(k_s)`, before the output normalization."""
    name = "norm_linear_attention"
    check_qkv(q, k, v, name)
    _check_mode(mode, name)
    _check_eps(eps, name)
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"{name}: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    if norm not in OUTPUT_NORMS:
        raise ValueError(f"{name}: norm must be one of {OUTPUT_NORMS}, got {norm!r}")
    lam = None
    if decay is not None:
        if isinstance(decay, Tensor):
            if decay.dim() > 1 or decay.numel() not in (1, q.shape[1]):
                raise ValueError(
                    f"{name}: decay must be a number or one value per head ({q.shape[1]},), got {tuple(decay.shape)}"
                )
            lam = upcast(decay).to(q.device).reshape(-1)
        elif isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"{name}: decay must be in (0, 1], got {decay!r}")
        else:
            lam = torch.full((1,), float(decay), dtype=upcast(q).dtype, device=q.device)
    qf, kf = _feature(upcast(q), feature_map), _feature(upcast(k), feature_map)
    out, weights = _linear_attention(qf, kf, upcast(v), causal, mask, lam, False, mode, return_weights, name)
    return _finish(_output_norm(out, norm, per_head, eps), weights, v.dtype)
