"""Per-channel parameters and running statistics shared by the channel norms (BatchNorm, GroupNorm,
InstanceNorm, and the catalog's later channel norms): torch's names, shapes and initial values, the
running-average factor, the input check, and the options (eps, momentum, switches, sync) and ``extra_repr``
of the batch-statistics norms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normact._checks import check_channel_input, check_eps, check_momentum
from normact.registry import Param

# Registry metadata of the parameters and buffers above (affine switchable, running statistics always kept).
AFFINE_PARAMS = (Param("weight", "(C,)", "1 (affine=True only)"), Param("bias", "(C,)", "0 (affine=True only)"))
BN_BUFFERS = (
    Param("running_mean", "(C,)", "0", buffer=True),
    Param("running_var", "(C,)", "1", buffer=True),
    Param("num_batches_tracked", "()", "0", buffer=True),
)

# The layouts most channel norms accept, as check_channel_input spells them ({C}: the channel count).
LAYOUT_1D_2D = "(N, {C}), (N, {C}, L) or (N, {C}, H, W)"
LAYOUT_2D = "(N, {C}, H, W)"


def add_channel_affine(
    module: nn.Module,
    num_features: int | tuple[int, ...],
    affine: bool,
    factory_kwargs: dict[str, Any],
    names: Sequence[str] = ("weight", "bias"),
) -> None:
    """Register the parameters ``names`` (``weight`` and ``bias``), each of shape (C,) (or the given shape),
    uninitialized, or ``None`` without ``affine``; filled by :func:`reset_channel_affine`."""
    for name in names:
        value = nn.Parameter(torch.empty(num_features, **factory_kwargs)) if affine else None
        module.register_parameter(name, value)


def reset_channel_affine(
    module: nn.Module, weights: Sequence[str] = ("weight",), biases: Sequence[str] = ("bias",)
) -> None:
    """weight = 1, bias = 0 (when present); ``weights`` and ``biases`` name the parameters of each kind."""
    for name in weights:
        if getattr(module, name) is not None:
            nn.init.ones_(getattr(module, name))
    for name in biases:
        if getattr(module, name) is not None:
            nn.init.zeros_(getattr(module, name))


def add_learnable(module: nn.Module, name: str, value: Tensor, learn: bool) -> None:
    """Register ``value`` under ``name`` as a parameter when ``learn``, else as a buffer (a fixed constant that
    still follows ``.to()`` and the state dict)."""
    if learn:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


def add_running_stats(
    module: nn.Module,
    num_features: int | tuple[int, ...],
    track: bool,
    factory_kwargs: dict[str, Any],
    *,
    count: bool,
    count_shape: tuple[int, ...] = (),
    var_name: str = "running_var",
) -> None:
    """Register ``running_mean`` (0) and ``running_var`` (1; ``var_name`` renames it) of shape (C,) (or the given
    shape) and, with ``count``, ``num_batches_tracked`` (0, int64, of shape ``count_shape``), or ``None``
    buffers when not tracking."""
    module.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs) if track else None)
    module.register_buffer(var_name, torch.ones(num_features, **factory_kwargs) if track else None)
    if count:
        tracked = torch.zeros(count_shape, dtype=torch.long, device=factory_kwargs.get("device")) if track else None
        module.register_buffer("num_batches_tracked", tracked)


def reset_running_stats(module: nn.Module, var_name: str = "running_var") -> None:
    """running_mean = 0, running_var (or ``var_name``) = 1, num_batches_tracked = 0 (when tracked; a module
    without running statistics is left alone)."""
    if getattr(module, "running_mean", None) is not None:
        module.running_mean.zero_()
        getattr(module, var_name).fill_(1)
    if getattr(module, "num_batches_tracked", None) is not None:
        module.num_batches_tracked.zero_()


def momentum_factor(module: nn.Module) -> float | Tensor:
    """Counts a training batch (``num_batches_tracked += 1``) and returns the running-average factor:
    ``module.momentum``, or for ``momentum=None`` the cumulative average's 1/num_batches_tracked as a float64
    tensor (no host read, so torch.compile(fullgraph=True) captures it)."""
    module.num_batches_tracked.add_(1)
    if module.momentum is None:
        return 1.0 / module.num_batches_tracked.to(torch.float64)
    return module.momentum


def check_input(module: nn.Module, x: object, ranks: Sequence[int], layout: str, *, axis: int = 1) -> None:
    """:func:`normact._checks.check_channel_input` with the module's class name and ``num_features``."""
    check_channel_input(x, type(module).__name__, module.num_features, ranks=ranks, axis=axis, layout=layout)


def sync_repr(module: nn.Module) -> str:
    """The ``extra_repr`` suffix of the layers with a ``sync`` switch: ``", sync=True"`` when on."""
    return ", sync=True" if module.sync else ""


def set_batch_options(
    module: nn.Module,
    eps: float,
    momentum: float | None,
    sync: bool,
    process_group: Any,
    *,
    affine: bool | None = None,
    track_running_stats: bool | None = None,
) -> None:
    """Validate and keep the options of a batch-statistics norm: ``eps``, ``momentum`` (None: cumulative
    average), the ``affine`` and ``track_running_stats`` switches of the layers that have them (given, not
    None), and the data-parallel ``sync`` and ``process_group``."""
    module.eps = check_eps(eps)
    module.momentum = check_momentum(momentum)
    if affine is not None:
        module.affine = bool(affine)
    if track_running_stats is not None:
        module.track_running_stats = bool(track_running_stats)
    set_sync(module, sync, process_group)


def set_sync(module: nn.Module, sync: bool, process_group: Any) -> None:
    """Keep the data-parallel options: the ``sync`` switch (batch statistics over ``process_group`` when
    torch.distributed is initialized, see :mod:`normact.distributed`) and the group (None: the default one)."""
    module.sync = bool(sync)
    module.process_group = process_group


def options_repr(module: nn.Module, *names: str) -> str:
    """The start of an ``extra_repr``: ``num_features``, then ``name=value`` for each of ``names`` (strings
    quoted)."""
    parts = [str(module.num_features)]
    for name in names:
        value = getattr(module, name)
        parts.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
    return ", ".join(parts)


def batch_norm_repr(module: nn.Module) -> str:
    """The ``extra_repr`` of BatchNorm's options: C, eps, momentum, affine, track_running_stats (and sync)."""
    return options_repr(module, "eps", "momentum", "affine", "track_running_stats") + sync_repr(module)
