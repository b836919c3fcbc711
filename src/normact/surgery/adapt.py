r"""Batch-statistics adaptation: re-estimate, correct, mix or freeze the statistics of normalization layers.

- :func:`recalibrate_batchnorm`: AdaBN (Li, Wang, Shi, Liu & Hou, 2016, arXiv:1603.04779), the running
  statistics of every batch-norm layer re-estimated on new (unlabeled) data.
- :func:`renormalize` and :func:`channel_stats`: REPAIR-style per-channel rescale/reshift of activations after
  merging or pruning (Qu & Horvath, 2024, "Rethinking Model Re-Basin and Linear Mode Connectivity",
  arXiv:2402.05966; REPAIR: Jordan, Sedghi, Saukh, Entezari & Neyshabur, 2022, arXiv:2211.08403).
- :func:`train_norm_affine_only`: "Training BatchNorm and only BatchNorm" (Frankle, Schwab & Morcos, 2021,
  arXiv:2003.00152): only the normalization layers' affine parameters (and optionally the head) stay trainable.
- :func:`calibrate_batchnorm` / :func:`uncalibrate_batchnorm`: alpha-BN test-time calibration (You, Li & Zhao,
  2021, arXiv:2110.04065), each BatchNorm swapped for normact's registered ``alpha_bn`` layer
  (:class:`normact.layers.norm.adaptive_batch.AlphaBatchNorm`) and back.
- :func:`freeze_batchnorm` / :func:`unfreeze_batchnorm`: batch-norm layers kept in evaluation mode (frozen
  running statistics) even when ``model.train()`` is called later.

**Which layers are batch norms here** ("BN layers"): modules with a ``running_mean`` or ``running_var`` tensor
and a ``momentum`` attribute, instance norms excepted. That is torch's ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``
and lazy variants, normact's registered batch norms with running statistics (``batchnorm2d``, ``alpha_bn``,
``batchrenorm``, ``ibn``, ``evonorm_b0``...) and third-party classes with torch's buffer names (duck typing).
Layers with running statistics but no ``momentum`` (``online_norm``) are other norms: they are never changed.
Among the BN layers, the *plain* ones (torch's ``_BatchNorm`` subclasses, normact's ``batchnorm1d``,
``batchnorm2d`` and ``alpha_bn``) are known to keep torch's statistics: the mean and the unbiased variance over
dim 1 of their input, per channel.

Nothing here imports a third-party model library; transformers/timm norms are matched by class name
(:func:`normact.probing.module_kind`).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from torch import nn

from normact._checks import check_float
from normact.registry import get_info
from normact.surgery._adabn import find_batchnorms, recalibrate_batchnorm, untracked_batchnorms
from normact.surgery._match import is_batchnorm_layer, is_norm, plain_batchnorm_classes
from normact.surgery._repair import ChannelStats, channel_stats, renormalize
from normact.surgery._rewrite import Rewrite

__all__ = [
    "ChannelStats",
    "calibrate_batchnorm",
    "channel_stats",
    "find_batchnorms",
    "freeze_batchnorm",
    "recalibrate_batchnorm",
    "renormalize",
    "train_norm_affine_only",
    "uncalibrate_batchnorm",
    "unfreeze_batchnorm",
]


# ------------------------------------------------------------------------------------- BN-only training


def train_norm_affine_only(
    model: nn.Module,
    *,
    include_head: bool = False,
    head: nn.Module | str | None = None,
    params: Literal["affine", "all"] = "affine",
) -> int:
    r"""Frankle, Schwab & Morcos (2021, arXiv:2003.00152), "Training BatchNorm and only BatchNorm": every
    parameter frozen (``requires_grad=False``) except the normalization layers' affine parameters and,
    optionally, the classification head.

    Normalization layers are those of :func:`normact.probing.module_kind` (kind ``norm``): normact's
    registered norms, torch's BatchNorm/InstanceNorm/LayerNorm/GroupNorm/RMSNorm/LocalResponseNorm and any
    class named ``*Norm``/``*Normalization`` (transformers' ``LlamaRMSNorm``, timm's ``LayerNorm2d``).
    ``params="affine"``: their own parameters named ``weight`` and ``bias`` (:math:`\gamma`, :math:`\beta`);
    a norm that has parameters but none of these names (normact's ``ibn``: ``in_weight``...; DyT's ``alpha``
    is not affine and stays frozen) is named in a warning. ``params="all"``: every parameter of the norm
    modules, their children included.

    The head: ``head`` (a module of ``model`` or its qualified name), or with ``include_head=True`` the last
    ``torch.nn.Linear`` in registration order; all its parameters train (tied weights train with it).

    Returns the number of trainable parameter values (shared parameters counted once): for a BN ResNet,
    :math:`2\sum_l C_l`. ``ValueError`` when the model has no norm with parameters.
    """
    if params not in ("affine", "all"):
        raise ValueError(f"params must be 'affine' or 'all', got {params!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_modules())
    head_module: nn.Module | None = None
    if head is not None:
        if isinstance(head, str):
            if head not in named:
                raise ValueError(f"head={head!r} is not a module name of {type(model).__name__}")
            head_module = named[head]
        elif isinstance(head, nn.Module):
            if not any(m is head for m in named.values()):
                raise ValueError(f"head ({type(head).__name__}) is not a module of {type(model).__name__}")
            head_module = head
        else:
            raise TypeError(f"head must be a module or a module name, got {type(head).__name__}")
    elif include_head:
        linears = [m for m in named.values() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"include_head=True but {type(model).__name__} has no torch.nn.Linear: pass head=")
        head_module = linears[-1]
    chosen: list[nn.Parameter] = []
    without: list[str] = []
    for name, m in named.items():
        if not is_norm(m):
            continue
        if params == "all":
            chosen += list(m.parameters())
            continue
        own = dict(m.named_parameters(recurse=False))
        picked = [p for k, p in own.items() if k in ("weight", "bias") and p is not None]
        chosen += picked
        if not picked and any(True for _ in m.parameters()):
            without.append(f"{name or '<model>'} ({type(m).__name__})")
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no normalization layer with affine parameters")
    if without:
        warnings.warn(
            "train_norm_affine_only: these norms have parameters but none named weight/bias, so they stay frozen "
            f"(params='all' trains them): {', '.join(without)}",
            stacklevel=2,
        )
    if head_module is not None:
        chosen += list(head_module.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -------------------------------------------------------------------------------------------- alpha-BN

_SOURCE = "_normact_calibrated_from"


def calibrate_batchnorm(model: nn.Module, alpha: float) -> int:
    r"""alpha-BN (You, Li & Zhao, 2021, arXiv:2110.04065): every plain BatchNorm of ``model`` (torch's
    ``BatchNorm1d/2d/3d``/``SyncBatchNorm`` and normact's ``batchnorm1d``/``batchnorm2d``) replaced in place by
    normact's ``alpha_bn`` layer (``AlphaBatchNorm.from_batchnorm``: same weights, running statistics, eps,
    momentum, device, dtype and mode). In eval mode each uses

    .. math::
        \hat\mu = \alpha\,\mu_{source} + (1 - \alpha)\,\mu_{batch}, \qquad
        \hat\sigma^2 = \alpha\,\sigma^2_{source} + (1 - \alpha)\,\sigma^2_{batch}

    (source = the running statistics, batch = the test batch's mean and biased variance) and updates
    nothing; ``alpha=1`` is eval-mode BatchNorm, ``alpha=0`` test-time normalization. In training mode the
    layers are torch's BatchNorm. ``AlphaBatchNorm`` layers already in the model get the new ``alpha``.

    ``alpha`` has no default: the paper's value could not be read (neither its text nor an official
    implementation was available), and it is tuned to the shift and the test batch size.

    Other BN layers (batch renorm, IBN, ...) are left unchanged and named in a warning, as are torch
    BatchNorms without running statistics. :func:`uncalibrate_batchnorm` restores the original classes.
    Returns the number of alpha-BN layers set. ``ValueError`` when there is none; ``TypeError`` when
    ``model`` itself is a BatchNorm (use ``AlphaBatchNorm.from_batchnorm``).
    """
    alpha = check_float("alpha", alpha, low=0.0, high=1.0)
    alpha_cls = get_info("alpha_bn").cls
    plain = plain_batchnorm_classes()
    if isinstance(model, plain):
        raise TypeError(
            "calibrate_batchnorm replaces the BatchNorm layers inside a model; for a single layer use "
            "normact.layers.norm.adaptive_batch.AlphaBatchNorm.from_batchnorm(bn, alpha)"
        )
    count = 0
    others: list[str] = []

    def make(name: str, child: nn.Module) -> nn.Module | None:
        nonlocal count
        if isinstance(child, alpha_cls):
            child.alpha = alpha
            count += 1
            return None
        if isinstance(child, plain) and getattr(child, "running_mean", None) is not None:
            new = alpha_cls.from_batchnorm(child, alpha=alpha)
            new.__dict__[_SOURCE] = child  # not a submodule: outside the state dict and named_modules
            count += 1
            return new
        if is_batchnorm_layer(child) or isinstance(child, nn.modules.batchnorm._BatchNorm):
            others.append(f"{name} ({type(child).__name__})")
        return None

    Rewrite(model).replace_each(make)
    if others:
        warnings.warn(
            "calibrate_batchnorm: left unchanged (not a plain BatchNorm with running statistics): " + ", ".join(others),
            stacklevel=2,
        )
    if count == 0:
        raise ValueError(f"calibrate_batchnorm: {type(model).__name__} has no BatchNorm with running statistics")
    return count


def uncalibrate_batchnorm(model: nn.Module) -> int:
    """Undo :func:`calibrate_batchnorm`: each alpha-BN layer it created becomes its original BatchNorm again
    (same class and attributes), with the alpha-BN layer's current parameters, running statistics, device,
    dtype, mode and ``requires_grad`` flags. ``AlphaBatchNorm`` layers that were part of the model stay.
    Returns the number of layers restored."""
    alpha_cls = get_info("alpha_bn").cls

    def make(name: str, child: nn.Module) -> nn.Module | None:
        source = child.__dict__.get(_SOURCE) if isinstance(child, alpha_cls) else None
        if source is None:
            return None
        ref = child.running_mean
        source.to(device=ref.device, dtype=ref.dtype)
        source.load_state_dict(child.state_dict(), strict=True)
        for (_, p_new), (_, p_old) in zip(child.named_parameters(), source.named_parameters(), strict=True):
            p_old.requires_grad_(p_new.requires_grad)
        source.momentum = child.momentum
        source.eps = child.eps
        return source.train(child.training)

    return len(Rewrite(model).replace_each(make))


# --------------------------------------------------------------------------------------------- freezing


def _keep_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of :func:`freeze_batchnorm`: the layer runs in eval mode whatever ``train()`` set."""
    module.training = False


def _freeze_hooks(module: nn.Module) -> list[int]:
    return [k for k, h in module._forward_pre_hooks.items() if h is _keep_eval]


def freeze_batchnorm(model: nn.Module, *, affine: bool = True) -> int:
    """Freeze every BN layer of ``model`` (see the module docstring) in evaluation mode: it normalizes with its
    running statistics and never updates them, also after a later ``model.train()``.

    Mechanism: each layer is put in eval mode and gets a forward pre-hook that sets ``training = False``
    before every call (so ``layer.training`` reads True between ``model.train()`` and the next forward, but
    the forward always runs in eval mode). The module classes and the state dict are unchanged, the model
    still pickles and deep-copies (the hook is a module-level function). :func:`unfreeze_batchnorm` removes
    the hooks. ``affine=False`` also sets ``requires_grad=False`` on the layers' own parameters (their
    affine); ``affine=True`` leaves them as they are. Freezing twice adds no second hook.

    Returns the number of layers frozen; ``ValueError`` when there is none. torch BatchNorms built with
    ``track_running_stats=False`` have no statistics to freeze: a warning names them.
    """
    bns = list(dict.fromkeys(find_batchnorms(model).values()))
    if not bns:
        raise ValueError(f"freeze_batchnorm: {type(model).__name__} has no batch-norm layer with running statistics")
    untracked = untracked_batchnorms(model)
    if untracked:
        warnings.warn(
            "freeze_batchnorm: these BatchNorms track no running statistics and keep normalizing with batch "
            f"statistics: {', '.join(untracked)}",
            stacklevel=2,
        )
    for m in bns:
        if not _freeze_hooks(m):
            m.register_forward_pre_hook(_keep_eval)
        m.training = False
        if not affine:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    return len(bns)


def unfreeze_batchnorm(model: nn.Module) -> int:
    """Remove the hooks of :func:`freeze_batchnorm`; the layers follow ``train()``/``eval()`` again (their
    current mode is the model's: call ``model.train()`` to resume). ``requires_grad`` flags are not touched.
    Returns the number of layers unfrozen."""
    count = 0
    for m in dict.fromkeys(model.modules()):
        keys = _freeze_hooks(m)
        for k in keys:
            del m._forward_pre_hooks[k]
        if keys:
            count += 1
    return count
