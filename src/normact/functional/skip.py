r"""The middle-skip gates of Lawson & Aitchison (2025, "Learning to Skip the Middle Layers of Transformers",
arXiv:2506.21103; code tim-lawson/skip-middle), stateless: the gate from the accumulated soft masks, the gated
softmax attention that hides skipped positions, and the adaptive sparsity regularizer's loss, targets and
coefficient update (:class:`normact.layers.block.MiddleSkipStack` is built on them).

With L blocks, the first L/2 each have a router :math:`s_\ell = \mathrm{ReLU}(w_\ell \cdot h_\ell + b_\ell)` read
from the block's input; the accumulated mask :math:`S_\ell = \sum_{k \le \ell} s_k` gives the gate
:math:`g_\ell = 1 - \mathrm{clamp}(S_\ell, 0, 1)` of block :math:`\ell` and of its mirror :math:`L - 1 - \ell`, so
that a token skips a symmetric span of central blocks, wider as :math:`S` reaches 1 earlier.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normact.functional._attention import attend, attention_keep_mask, check_qkv, default_scale, score_matrix

__all__ = ["gated_softmax_attention", "skip_gate", "skip_gate_coef_update", "skip_gate_loss", "skip_gate_targets"]


def skip_gate(accumulated: Tensor) -> Tensor:
    r"""The gate :math:`g = 1 - \mathrm{clamp}(S, 0, 1)` of an accumulated soft mask :math:`S` (any shape): 1 keeps
    the block, 0 skips it."""
    if not isinstance(accumulated, Tensor) or not accumulated.is_floating_point():
        raise TypeError(f"skip_gate expects a floating-point tensor, got {type(accumulated).__name__}")
    return 1.0 - accumulated.clamp(0.0, 1.0)


def gated_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
    eps: float = 1e-6,
) -> Tensor:
    r"""Softmax attention in which each key position :math:`j` is weighted by its gate :math:`g_j` (B, S):

    .. math:: \mathrm{softmax}_j\big(\sigma\, q_t \cdot k_j + \log \max(g_j, \epsilon)\big)\, v_j

    (the paper's gated attention: a skipped position, :math:`g_j = 0`, is hidden from the tokens that attend to
    it, up to :math:`\epsilon`; the official code adds :math:`\log \mathrm{clamp}(g, 10^{-6}, 1)` to the scores).
    :math:`g = 1` adds exactly 0: the scores, hence the output, are those of softmax attention's explicit form
    (:func:`normact.functional.softmax_attention` in float64). Scores in float32 for half inputs; ``mask`` and
    ``causal`` as in :func:`normact.functional.softmax_attention`; queries without any key give 0."""
    check_qkv(q, k, v, "gated_softmax_attention")
    if not isinstance(gate, Tensor) or not gate.is_floating_point():
        raise TypeError(f"gated_softmax_attention: gate must be a floating-point tensor, got {type(gate).__name__}")
    if gate.shape != (k.shape[0], k.shape[2]):
        raise ValueError(
            f"gated_softmax_attention: gate must be (batch, keys) = {(k.shape[0], k.shape[2])}, got {tuple(gate.shape)}"
        )
    scale = default_scale(q, scale, "gated_softmax_attention")
    scores = score_matrix(q, k, scale)
    bias = torch.log(gate.to(scores.dtype).clamp(eps, 1.0))
    scores = scores + bias[:, None, None, :]
    keep = attention_keep_mask(q, k, causal, mask, "gated_softmax_attention")
    if keep is None:
        return attend(torch.softmax(scores, dim=-1), v, False)  # type: ignore[return-value]
    empty = ~keep.any(-1, keepdim=True)
    scores = scores.masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0)
    weights = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
    return attend(weights, v, False)  # type: ignore[return-value]


def skip_gate_loss(gates: Tensor, mean_coefs: Tensor, var_coefs: Tensor) -> Tensor:
    r"""The sparsity regularizer of the gates (L, B, T) with per-layer coefficients (L,):

    .. math:: \frac{1}{L}\sum_\ell c^{\mu}_\ell\, \overline{g_\ell} + \frac{1}{L}\sum_\ell c^{\sigma}_\ell\,
              \mathrm{Var}(g_\ell)

    (means and unbiased variances over the batch and the tokens), as the official code's adaptive gate
    controller; the coefficients follow :func:`skip_gate_coef_update` between steps."""
    if gates.dim() != 3:
        raise ValueError(f"skip_gate_loss: gates must be (layers, batch, tokens), got shape {tuple(gates.shape)}")
    return (mean_coefs * gates.mean((1, 2))).mean() + (var_coefs * gates.var((1, 2))).mean()


def skip_gate_targets(depth: int, mean_start: float, mean_end: float, var_delta: float = 0.0) -> tuple[Tensor, Tensor]:
    r"""Per-layer targets of the gate statistics: means linearly spaced from ``mean_start`` (first block) to
    ``mean_end`` (the middle) over the first L/2 blocks and mirrored, variances :math:`\max(\mu(1-\mu) + \delta,
    0)` (a Bernoulli gate's, plus ``var_delta``)."""
    half = torch.linspace(float(mean_start), float(mean_end), depth // 2, dtype=torch.float64)
    means = torch.cat([half, half.flip(0)])
    return means, (means * (1 - means) + var_delta).clamp_min(0.0)


def skip_gate_coef_update(
    coefs: Tensor, deltas: Tensor, step: float = 1e-3, delta_min: float = 0.01, proportional: bool = True
) -> Tensor:
    r"""The adaptive coefficients' update between steps, with :math:`\delta` = statistic - target:
    :math:`c \leftarrow c + \eta\, \delta\, [|\delta| > \delta_{\min}]` (``proportional``, the controller of the
    official training scripts, ``--gates proportional``) or :math:`c + \eta\, \mathrm{sign}(\delta)\,
    [|\delta| > \delta_{\min}]` (the code's ``adaptive`` controller); defaults :math:`\eta = 10^{-3}`,
    :math:`\delta_{\min} = 0.01` as there. A gate mean above its target raises its coefficient, so that
    :func:`skip_gate_loss` pushes the gates down."""
    significant = (deltas.abs() > delta_min).to(coefs.dtype)
    return coefs + step * significant * (deltas if proportional else deltas.sign())
