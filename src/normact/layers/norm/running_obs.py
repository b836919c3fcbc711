"""RSNorm: observation normalization by running statistics over every sample seen (SimBa, Lee et al., 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_channel_input, check_eps, check_int
from normact.layers.norm._channel import set_sync
from normact.registry import Paper, Param, register

__all__ = ["RSNorm"]

SIMBA = Paper(
    "SimBa: Simplicity Bias for Scaling Up Parameters in Deep Reinforcement Learning",
    2024,
    "2410.09754",
    "Lee, Hwang, Kim, Kim, Tai, Subramanian, Wurman, Choo, Stone, Seno",
)


@register(
    "rsnorm",
    kind="norm",
    paper=SIMBA,
    formula=(
        "y = (x - mu_t) / sqrt(var_t + eps) per feature; training: mu_t, var_t first absorb the batch (exact "
        "merge, c = samples seen: mu_t = (c mu + n mean_B) / (c + n), var_t = (c var + n var_B) / (c + n) "
        "+ c n / (c + n)^2 (mean_B - mu)^2; Welford's recursion for n = 1); eval: the frozen statistics; "
        "backward: the statistics are constants (stop-gradient)"
    ),
    functional=NF.rs_norm,
    params=(
        Param("running_mean", "(C,)", "0", buffer=True),
        Param("running_var", "(C,)", "1", buffer=True),
        Param("num_samples_tracked", "()", "0 (int64)", buffer=True),
    ),
    batch_dependent=True,
    stateful=True,
    custom_backward=True,
    input_layout="tokens",
    aliases=("running_stats_norm",),
)
class RSNorm(nn.Module):
    r"""RSNorm, running-statistics normalization (SimBa, Lee et al., 2024, arXiv:2410.09754), features last.

    SimBa (Lee, Hwang, Kim, Kim, Tai, Subramanian, Wurman, Choo, Stone & Seno, 2024) standardizes the observations
    of (N, C) or (N, L, C) inputs by running statistics:

    .. math::
        \hat o_t = \frac{o_t - \mu_t}{\sqrt{\sigma_t^2 + \epsilon}}, \qquad
        \delta = o_t - \mu_{t-1}, \quad \mu_t = \mu_{t-1} + \frac{\delta}{t}, \quad
        \sigma_t^2 = \frac{t-1}{t}\left(\sigma_{t-1}^2 + \frac{\delta^2}{t}\right)

    :math:`\mu_t, \sigma_t^2` the mean and population variance of all t samples seen, per feature. A batch of n
    samples is absorbed at once by the exact merge of moments (:func:`normact.functional.rs_norm`), which equals n
    Welford steps: streaming a data set one sample at a time or in batches ends with its mean and population
    variance.

    **Train and eval.** In training the statistics absorb the batch first and then normalize it, as the official
    code does when the agent acts (``ObservationNormalizer.sample_actions``: ``obs_rms.update`` before
    ``_normalize``). In evaluation the statistics are frozen: use ``eval()`` to normalize replayed batches, as the
    official ``update`` does.

    **Backward.** Autograd treats the statistics as constants, in training too (a stop-gradient: the input
    gradient is :math:`g/\sqrt{\sigma_t^2 + \epsilon}`; registered ``custom_backward``). In the official code
    the normalizer sits outside the differentiated network (NumPy, on the observations), so no gradient goes
    through it at all; the exact derivative would add the batch's share n / t of the statistics, which vanishes as
    t grows.

    **Differences from the official code** (SonyResearch/simba, ``scale_rl/agents/wrappers``, after Gymnasium's
    ``RunningMeanStd``): its count starts at a pseudo-count of 1e-4 with mean 0 and variance 1, which enter the
    statistics with weight 1e-4 / t; here the count starts at 0 so that the statistics are exactly those of the
    data (the paper's recursion). Same :math:`\epsilon = 10^{-8}` inside the root, no affine, no clipping.
    float16/bfloat16 inputs are normalized in float32; the statistics are kept in the module's dtype (keep a
    float32 module for long streams).

    Args:
        num_features: C, the features (last dim).
        eps: added to the variance inside the root. Default: 1e-8.
        sync: in training, the batch moments over the whole ``process_group`` when torch.distributed is
            initialized (every process then holds the same statistics). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C) or (N, L, C); output the same shape. Every position of every sample is one sample of the
        statistics.
    """

    __constants__ = ["num_features", "eps"]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-8,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features)
        self.eps = check_eps(eps)
        set_sync(self, sync, process_group)
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.empty(self.num_features, **kw))
        self.register_buffer("running_var", torch.empty(self.num_features, **kw))
        self.register_buffer("num_samples_tracked", torch.empty((), dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_samples_tracked = 0."""
        with torch.no_grad():
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_samples_tracked.zero_()

    def reset_parameters(self) -> None:
        """The running statistics reset (RSNorm has no parameters)."""
        self.reset_running_stats()

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, "RSNorm", self.num_features, ranks=(2, 3), axis=-1, layout="(N, {C}) or (N, L, {C})")
        return NF.rs_norm(
            x,
            self.running_mean,
            self.running_var,
            self.num_samples_tracked,
            self.training,
            self.eps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}" + (", sync=True" if self.sync else "")
