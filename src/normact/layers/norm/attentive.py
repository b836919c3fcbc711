"""Attentive Batch Normalization (Ding, Guo, Dai & Du, 2020) for frame sequences of acoustic models."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["AttentiveBatchNorm"]

ATTENTIVE_BN = Paper(
    "Attentive batch normalization for LSTM-based acoustic modeling of speech recognition",
    2020,
    "2001.00129",
    "Ding, Guo, Dai, Du",
)


@register(
    "attentive_bn",
    kind="norm",
    input_layout="tokens",
    paper=ATTENTIVE_BN,
    formula=(
        "x_hat = (x - mu_B) / sqrt(var_B + eps) per feature over (N, T) (running statistics in eval); "
        "h_t = tanh(W_h x_hat_t + b_h); a_t = softmax_t(v . h_t); s = sum_t a_t h_t (level='utterance') or "
        "s_t = T a_t h_t (level='frame'); y = (weight + W_gamma s) * x_hat + bias + W_beta s"
    ),
    functional=NF.attentive_batch_norm,
    params=(
        Param("weight", "(C,)", "1 (gamma_0; affine=True only)"),
        Param("bias", "(C,)", "0 (beta_0; affine=True only)"),
        Param("gamma_weight", "(C, A)", "0 (W_gamma)"),
        Param("beta_weight", "(C, A)", "0 (W_beta)"),
        Param("aux_weight", "(A, C)", "U(-1/sqrt(C), 1/sqrt(C)) (W_h; torch.nn.Linear's)"),
        Param("aux_bias", "(A,)", "U(-1/sqrt(C), 1/sqrt(C)) (b_h)"),
        Param("att_vector", "(A,)", "U(-1/sqrt(A), 1/sqrt(A))"),
        *_channel.BN_BUFFERS,
    ),
    batch_dependent=True,
    stateful=True,
    verified_against=("torch.nn.BatchNorm1d",),
)
class AttentiveBatchNorm(RunningStatsNorm):
    r"""Attentive Batch Normalization (Ding, Guo, Dai & Du, 2020, arXiv:2001.00129) of frame sequences
    (N, T, C): batch normalization whose scale and shift are generated from the utterance by an auxiliary
    network with attention over the frames.

    .. math::
        \hat x_t = \frac{x_t - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}, \quad
        h_t = \tanh(W_h \hat x_t + b_h), \quad
        a_t = \mathrm{softmax}_t(v^\top h_t), \quad
        y_t = (\gamma_0 + W_\gamma s_t) \odot \hat x_t + \beta_0 + W_\beta s_t

    with :math:`s_t = s = \sum_{t'} a_{t'} h_{t'}` (``level="utterance"``: one attention-weighted summary
    per utterance) or :math:`s_t = T\,a_t\,h_t` (``level="frame"``: each frame's own hidden features,
    weighted by its attention relative to the uniform 1/T). :math:`\mu_B, \sigma_B^2` are the per-feature batch mean and
    biased variance over all N x T frames in training (over the process group with ``sync``); the running
    statistics follow torch's BatchNorm (momentum, unbiased variance, cumulative average with
    ``momentum=None``) and normalize in evaluation.

    From the paper (abstract; the full text could not be consulted): BN statistics with the scale and shift
    generated dynamically by an auxiliary network, attention to regularize them, utterance-level and
    frame-level variants, LSTM acoustic models. The auxiliary network is a deliberate choice, documented
    here because its exact architecture could not be established: one tanh hidden layer
    (:math:`W_h` of shape (A, C), ``attention_dim`` A, default C) on the **normalized** frames, whose
    features both score the frames (additive attention, vector v) and are pooled by the attention, then
    linear maps :math:`W_\gamma, W_\beta` (C, A) initialized to zero, so that at initialization the layer is
    exactly BatchNorm with affine :math:`\gamma_0 = 1, \beta_0 = 0` (``weight``, ``bias``). Reading
    :math:`\hat x` rather than x keeps the layer invariant, like BN, to a per-feature shift and scale of its
    input; pooling the bounded tanh features (as Dynamic Layer Normalization, Kim et al. 2017, summarizes an
    utterance) rather than :math:`\hat x` itself keeps the generated scale and shift bounded, so the output
    stays linear in the size of :math:`\hat x` (frames far from the running statistics in evaluation would
    otherwise be scaled by their own size). The
    input layout is (N, T, C), frames then features, as an LSTM with ``batch_first=True`` produces; there is
    no padding mask (utterances of one batch have T frames each). float16/bfloat16 inputs are computed in
    float32.

    Args:
        num_features: the feature count C (last dimension).
        level: ``"utterance"`` or ``"frame"``. Default: ``"utterance"``.
        attention_dim: the hidden size A of the auxiliary network; None: C.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0); otherwise they are fixed at 1 and 0.
            Default: True.
        sync: in training, combine the batch moments over ``process_group`` when torch.distributed is
            initialized (the attention is per utterance). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, T, C); output the same shape. Training needs N * T > 1.
    """

    def __init__(
        self,
        num_features: int,
        level: str = "utterance",
        attention_dim: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = c = check_int("num_features", num_features)
        if level not in ("utterance", "frame"):
            raise ValueError(f"level must be 'utterance' or 'frame', got {level!r}")
        self.level = level
        self.attention_dim = c if attention_dim is None else check_int("attention_dim", attention_dim)
        _channel.set_batch_options(self, eps, momentum, sync, process_group, affine=affine)
        _channel.add_channel_affine(self, c, self.affine, factory_kwargs)
        self.gamma_weight = nn.Parameter(torch.empty(c, self.attention_dim, **factory_kwargs))
        self.beta_weight = nn.Parameter(torch.empty(c, self.attention_dim, **factory_kwargs))
        self.aux_weight = nn.Parameter(torch.empty(self.attention_dim, c, **factory_kwargs))
        self.aux_bias = nn.Parameter(torch.empty(self.attention_dim, **factory_kwargs))
        self.att_vector = nn.Parameter(torch.empty(self.attention_dim, **factory_kwargs))
        _channel.add_running_stats(self, c, True, factory_kwargs, count=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics reset; weight = 1, bias = 0, W_gamma = W_beta = 0 (the layer is BatchNorm);
        the hidden layer as torch.nn.Linear: W_h, b_h ~ U(-1/sqrt(C), 1/sqrt(C)); v ~ U(-1/sqrt(A), 1/sqrt(A))."""
        super().reset_parameters()
        nn.init.zeros_(self.gamma_weight)
        nn.init.zeros_(self.beta_weight)
        nn.init.kaiming_uniform_(self.aux_weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.num_features)
        nn.init.uniform_(self.aux_bias, -bound, bound)
        bound = 1.0 / math.sqrt(self.attention_dim)
        nn.init.uniform_(self.att_vector, -bound, bound)

    def _check(self, x: Tensor) -> None:
        _channel.check_input(self, x, (3,), "(N, T, {C})", axis=-1)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        momentum = self._update_factor()
        return NF.attentive_batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.gamma_weight,
            self.beta_weight,
            self.aux_weight,
            self.aux_bias,
            self.att_vector,
            self.training,
            momentum,
            self.eps,
            self.level,
            self.sync,
            self.process_group,
        )

    def attention_weights(self, x: Tensor) -> Tensor:
        """The attention weights a (N, T) the layer would use for ``x`` in its current mode (they sum to 1 over
        the frames of each utterance); the running statistics are not updated."""
        self._check(x)
        return NF.attentive_bn_attention(
            x,
            self.running_mean,
            self.running_var,
            self.aux_weight,
            self.aux_bias,
            self.att_vector,
            self.training,
            self.eps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        options = ("level", "attention_dim", "eps", "momentum", "affine")
        return _channel.options_repr(self, *options) + _channel.sync_repr(self)
