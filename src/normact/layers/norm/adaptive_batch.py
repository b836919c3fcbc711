"""BatchNorm variants that adapt their statistics: alpha-BN, test-time calibration mixing source and test-batch
statistics (You, Li & Zhao, 2021), and AdaB2N, task-balanced statistics for continual learning (Lyu et al.,
2023). Both take ``sync=`` / ``process_group=`` for data parallelism."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int, shape_str
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["AdaB2N", "AlphaBatchNorm"]

ALPHA_BN = Paper("Test-time Batch Statistics Calibration for Covariate Shift", 2021, "2110.04065", "You, Li, Zhao")
ADAB2N = Paper(
    "Overcoming Recency Bias of Normalization Statistics in Continual Learning: Balance and Adaptation",
    2023,
    "2310.08855",
    "Lyu, Wang, Zhang, Sun, Su, Zhu, Jing",
)

# ------------------------------------------------------------------------------------------------- alpha-BN


@register(
    "alpha_bn",
    kind="norm",
    paper=ALPHA_BN,
    formula=(
        "training: BatchNorm (batch mean and biased variance over (N, *spatial), running statistics updated "
        "with momentum, unbiased variance); eval: mu = alpha * running_mean + (1 - alpha) * mean_B(x), "
        "var = alpha * running_var + (1 - alpha) * var_B(x) (biased, the test batch), "
        "y = (x - mu) / sqrt(var + eps) * weight + bias"
    ),
    functional=NF.alpha_batch_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        *_channel.BN_BUFFERS,
    ),
    batch_dependent=True,
    stateful=True,
)
class AlphaBatchNorm(RunningStatsNorm):
    r"""alpha-BN, test-time batch statistics calibration (You, Li & Zhao, 2021, arXiv:2110.04065) of (N, C),
    (N, C, L), (N, C, H, W) or (N, C, D, H, W) inputs: a drop-in BatchNorm whose evaluation mixes the source
    (running) statistics with the statistics of the test batch.

    .. math::
        \hat\mu = \alpha\,\mu_s + (1 - \alpha)\,\mu_B, \qquad
        \hat\sigma^2 = \alpha\,\sigma_s^2 + (1 - \alpha)\,\sigma_B^2, \qquad
        y = \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}}\,\gamma + \beta

    In evaluation :math:`\mu_s, \sigma_s^2` are ``running_mean``/``running_var`` and :math:`\mu_B,
    \sigma_B^2` the per-channel mean and biased variance of the test batch over N and the spatial dims
    (differentiable, so test-time objectives such as the paper's Core loss can backpropagate through them;
    over the whole process group with ``sync``); no buffer changes. ``alpha=1`` is BatchNorm in eval mode,
    ``alpha=0`` test-time normalization (batch statistics without a running update). In training the layer
    is torch's BatchNorm: batch statistics, running averages with ``momentum`` and the unbiased variance,
    and it has torch's buffers and parameters, so a BatchNorm state dict loads into it;
    :meth:`from_batchnorm` converts a trained ``torch.nn.BatchNorm1d/2d/3d`` (or ``SyncBatchNorm``).

    From the paper: the mixing of means and of variances (variances, not standard deviations) with one
    :math:`\alpha` per network. Not established (neither the paper's text nor an official implementation
    could be read for this layer): the default :math:`\alpha` and whether the test-batch variance is
    biased. Deliberate choices: ``alpha=0.9`` (the source statistics dominate, the paper's argument against
    pure test-time normalization; pass the value tuned for the shift at hand) and the biased batch variance
    (what BatchNorm normalizes with in training, so that ``alpha=0`` is exactly test-time normalization).
    float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        alpha: the weight of the source statistics in [0, 1]. Default: 0.9 (see above).
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1] in training, or None for a cumulative average.
            Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        sync: combine the batch moments over ``process_group`` when torch.distributed is initialized, in
            training and for the test-batch statistics in evaluation. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C, *) with 0 to 3 spatial dims; output the same shape. Training needs N * spatial > 1.
    """

    def __init__(
        self,
        num_features: int,
        alpha: float = 0.9,
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
        self.num_features = check_int("num_features", num_features)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0)
        _channel.set_batch_options(self, eps, momentum, sync, process_group, affine=affine)
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        _channel.add_running_stats(self, self.num_features, True, factory_kwargs, count=True)
        self.reset_parameters()

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, alpha: float = 0.9) -> AlphaBatchNorm:
        """An AlphaBatchNorm with the weights, running statistics, eps, momentum, device, dtype and mode of
        ``bn`` (a torch or normact BatchNorm with running statistics)."""
        if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
            raise ValueError(f"from_batchnorm needs a BatchNorm with running statistics, got {type(bn).__name__}")
        ref = bn.running_mean
        layer = cls(
            bn.num_features,
            alpha=alpha,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=getattr(bn, "weight", None) is not None,
            device=ref.device,
            dtype=ref.dtype,
        )
        state = {k: v for k, v in bn.state_dict().items() if k in layer.state_dict()}
        layer.load_state_dict(state, strict=True)
        if layer.weight is not None:
            layer.weight.requires_grad_(bn.weight.requires_grad)
            layer.bias.requires_grad_(bn.bias.requires_grad)
        return layer.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (2, 3, 4, 5), "(N, {C}) or (N, {C}, *)")
        factor = self._update_factor()
        return NF.alpha_batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            factor,
            self.eps,
            self.alpha,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "alpha", "eps", "momentum", "affine") + _channel.sync_repr(self)


# --------------------------------------------------------------------------------------------------- AdaB2N


@register(
    "adab2n",
    kind="norm",
    paper=ADAB2N,
    formula=(
        "training: y = (x - mu) / sqrt(var + eps) * weight + bias with the batch mean and biased variance over "
        "(N, *spatial); with task_ids and cur_tasks > 0 the task-balanced statistics mu = sum_i p_{t_i} / n_{t_i} "
        "* mean_s(x_i), var = sum_i p_{t_i} / n_{t_i} * mean_s((x_i - mu)^2), p = c / sum(c), "
        "c_t = exp(task_weight_t) + n_t for t <= cur_tasks (0 otherwise); running statistics lerped with the "
        "modified momentum eta_1 = momentum^kappa, eta_k = eta_{k-1} / (eta_{k-1} + (1 - momentum)^kappa) "
        "(kappa = 0: 1 / num_batches_tracked; kappa = 1: momentum); loss = MSE(mu, running_mean) + "
        "MSE(var, running_var) kept in .loss; eval: BatchNorm with the running statistics"
    ),
    functional=NF.adab2n,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("task_weight", "(num_tasks,)", "init_weight (adapt=True only)"),
        *_channel.BN_BUFFERS,
        Param("cur_tasks", "()", "0", buffer=True),
        Param("last_eta", "()", "0 (no step yet)", buffer=True),
    ),
    defaults={"num_tasks": 5},
    batch_dependent=True,
    stateful=True,
)
class AdaB2N(RunningStatsNorm):
    r"""AdaB2N, Adaptive Balance of BN (Lyu, Wang, Zhang, Sun, Su, Zhu & Jing, 2023, arXiv:2310.08855) of
    (N, C), (N, C, L) or (N, C, H, W) inputs: a BatchNorm for continual learning whose training statistics
    balance the tasks with a Bayesian (Dirichlet) weighting and whose running statistics use a modified
    momentum between an EMA and a cumulative average.

    .. math::
        c_t = e^{w_t} + n_t\ (t \le \tau_{cur}), \quad p = \frac{c}{\sum_t c_t}, \quad
        \mu = \sum_i \frac{p_{t_i}}{n_{t_i}} \bar x_i, \quad
        \sigma^2 = \sum_i \frac{p_{t_i}}{n_{t_i}} \overline{(x_i - \mu)^2}, \quad
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

    :math:`t_i` is sample i's task (``task_ids``, passed to ``forward``), :math:`n_t` the number of samples of
    task t in the batch, :math:`w` the learned ``task_weight`` (the log prior concentrations), :math:`\tau_{cur}`
    the ``cur_tasks`` buffer (tasks ended so far, :meth:`end_task`), bars means over the spatial dims. The
    weighting is on in training when ``task_ids`` is given and ``cur_tasks > 0``; otherwise the statistics
    are the plain batch mean and biased variance over (N, *spatial). Running statistics, in every training
    step: ``running_mean <- (1 - eta) running_mean + eta mu`` and likewise ``running_var`` with
    :math:`\sigma^2` (biased), with the modified momentum
    :math:`\eta_1 = m^\kappa`, :math:`\eta_k = \eta_{k-1} / (\eta_{k-1} + (1 - m)^\kappa)` (m = ``momentum``):
    ``kappa=1`` is the EMA with momentum m, ``kappa=0`` the cumulative average :math:`1/k`. The
    regularizer :math:`\mathrm{MSE}(\mu, \text{running\_mean}) + \mathrm{MSE}(\sigma^2, \text{running\_var})`
    (against the updated running statistics) is kept in ``self.loss`` after each training forward, for the
    training loop to add with its weight :math:`\lambda` (the official code sums it over the layers from task
    ``ada_t0`` on). Evaluation is BatchNorm with the running statistics.

    Everything above is taken from the official code (lvyilin/AdaB2N, ``models/utils/adab2n.py``,
    ``AdaB2N.training_forward``/``get_eta``, with ``set_counts`` in ``models/er_ace_ada.py``); the paper
    (abstract) names the two parts, the Bayesian adaptation of task contributions in training and the modified
    momentum for testing. Defaults from the official constructor: ``kappa=1.0``, ``init_weight=0.0``, and
    torch's BatchNorm ``eps=1e-5``, ``momentum=0.1``, weight 1, bias 0; the official runs sweep kappa in
    {0.1, 0.4, 0.7, 1.0} and lambda per dataset. ``num_tasks`` (official: the dataset's task count) has no
    default in the class; ``normact.create("adab2n", C)`` uses 5.

    Deliberate differences from the official code: the task ids are a ``forward`` argument (official: a
    ``set_counts`` side channel, set by the training loop, that persists between calls); tasks after
    ``cur_tasks`` (or ids outside [0, num_tasks)) get weight 0 instead of an indexing error; the eta state is
    a buffer (``last_eta``, 0 before the first step) so that it is saved and restored with the state dict and
    captured by torch.compile (official: a Python attribute); ``adapt=False`` registers no ``task_weight`` and
    is the modified-momentum BatchNorm alone. Kept from the official code although it differs from torch's
    BatchNorm: the running variance averages the biased batch variance, and when a task <= cur_tasks is absent
    from the batch the sample weights sum to less than 1 (its share p_t multiplies no sample). Statistics are
    combined over the process group with ``sync`` (counts, weighted sums and moments). float16/bfloat16
    inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        num_tasks: the number of tasks T of the continual-learning sequence (size of ``task_weight``).
        kappa: the momentum modification in [0, 1]. Default: 1.0 (official default).
        init_weight: initial value of ``task_weight``. Default: 0.0.
        adapt: learn ``task_weight`` and balance the statistics over tasks given ``task_ids``. Default: True.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: the base momentum m in [0, 1]. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        sync: in training, combine the statistics over ``process_group`` when torch.distributed is
            initialized. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C), (N, C, L) or (N, C, H, W), ``task_ids`` (N,) integers (optional); output the input's
        shape. Training needs N * spatial > 1.
    """

    def __init__(
        self,
        num_features: int,
        num_tasks: int,
        kappa: float = 1.0,
        init_weight: float = 0.0,
        adapt: bool = True,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.num_tasks = check_int("num_tasks", num_tasks)
        self.kappa = check_float("kappa", kappa, low=0.0, high=1.0)
        self.init_weight = check_float("init_weight", init_weight)
        self.adapt = bool(adapt)
        self.eps = check_eps(eps)
        if momentum is None:
            raise TypeError("momentum must be a number in [0, 1] (kappa=0 gives the cumulative average), got None")
        self.momentum = check_float("momentum", momentum, low=0.0, high=1.0)
        self.affine = bool(affine)
        _channel.set_sync(self, sync, process_group)
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        tw = nn.Parameter(torch.empty(self.num_tasks, **factory_kwargs)) if self.adapt else None
        self.register_parameter("task_weight", tw)
        _channel.add_running_stats(self, self.num_features, True, factory_kwargs, count=True)
        self.register_buffer("cur_tasks", torch.tensor(0, dtype=torch.long, device=device))
        self.register_buffer("last_eta", torch.zeros((), **factory_kwargs))
        self.loss: Tensor | None = None
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running statistics, num_batches_tracked and the eta state reset (cur_tasks kept)."""
        super().reset_running_stats()
        self.last_eta.zero_()

    def reset_parameters(self) -> None:
        """Running statistics, eta state and cur_tasks reset; weight = 1, bias = 0, task_weight = init_weight."""
        super().reset_parameters()
        self.cur_tasks.zero_()
        if self.task_weight is not None:
            nn.init.constant_(self.task_weight, self.init_weight)
        self.loss = None

    def end_task(self) -> None:
        """Call at the end of each task: the next batches balance one more task (official ``end_task``)."""
        self.cur_tasks.add_(1)

    def _eta(self) -> float | Tensor:
        """The modified momentum of this step (official ``get_eta``); counts the batch."""
        self.num_batches_tracked.add_(1)
        m = self.momentum
        if self.kappa == 0.0:
            eta: float | Tensor = 1.0 / self.num_batches_tracked.to(self.last_eta.dtype)
        elif self.kappa == 1.0:
            eta = m
        else:
            prev = self.last_eta
            eta = torch.where(prev > 0, prev / (prev + (1.0 - m) ** self.kappa), torch.full_like(prev, m**self.kappa))
        with torch.no_grad():
            if isinstance(eta, Tensor):
                self.last_eta.copy_(eta)
            else:
                self.last_eta.fill_(eta)
        return eta

    def forward(self, x: Tensor, task_ids: Tensor | None = None) -> Tensor:
        _channel.check_input(self, x, (2, 3, 4), _channel.LAYOUT_1D_2D)
        if task_ids is not None:
            if not isinstance(task_ids, Tensor) or task_ids.is_floating_point() or task_ids.is_complex():
                raise TypeError(f"AdaB2N: task_ids must be an integer tensor, got {type(task_ids).__name__}")
            if task_ids.shape != (x.shape[0],):
                raise ValueError(
                    f"AdaB2N: task_ids must have shape ({x.shape[0]},) for input shape {shape_str(x.shape)}, "
                    f"got shape {shape_str(task_ids.shape)}"
                )
            if not self.adapt:
                raise ValueError("AdaB2N: task_ids given to a layer built with adapt=False")
        eta = self._eta() if self.training else 0.0
        y, mean, var = NF.adab2n(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.task_weight,
            task_ids,
            self.cur_tasks,
            self.training,
            eta,
            self.eps,
            self.sync,
            self.process_group,
            return_stats=True,
        )
        if self.training:
            self.loss = F.mse_loss(mean, self.running_mean.to(mean.dtype)) + F.mse_loss(
                var, self.running_var.to(var.dtype)
            )
        return y

    def __getstate__(self) -> dict[str, Any]:
        # the last regularizer holds the autograd graph of its forward: not copied, pickled or deep-copied
        state = self.__dict__.copy()
        state["loss"] = None
        return state

    def extra_repr(self) -> str:
        options = ("num_tasks", "kappa", "init_weight", "adapt", "eps", "momentum", "affine")
        return _channel.options_repr(self, *options) + _channel.sync_repr(self)
