"""AdaBN (Li, Wang, Shi, Liu & Hou, 2016, arXiv:1603.04779): the running statistics of every batch-norm layer
re-estimated on new data (:func:`recalibrate_batchnorm`). Public through :mod:`normact.surgery.adapt`, whose
docstring says which layers are batch norms here."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from normact._checks import check_momentum
from normact.surgery._feed import Forward, Moments, check_forward, modes, run_batches
from normact.surgery._match import is_batchnorm_layer, plain_batchnorm_classes
from normact.surgery._rewrite import Rewrite

__all__ = ["find_batchnorms", "recalibrate_batchnorm"]


def untracked_batchnorms(model: nn.Module) -> list[str]:
    """torch BatchNorms built with ``track_running_stats=False`` (they always normalize with batch statistics)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and getattr(m, "running_mean", None) is None
    ]


def find_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """The BN layers of ``model`` (modules with a ``running_mean``/``running_var`` tensor and a ``momentum``,
    instance norms excepted), by qualified name, in registration order (each shared module once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if is_batchnorm_layer(m)}


def _reset(module: nn.Module) -> None:
    """The layer's own ``reset_running_stats``, else running_mean = 0, running_var = 1, count = 0."""
    if callable(getattr(module, "reset_running_stats", None)):
        module.reset_running_stats()
        return
    with torch.no_grad():
        if isinstance(getattr(module, "running_mean", None), Tensor):
            module.running_mean.zero_()
        if isinstance(getattr(module, "running_var", None), Tensor):
            module.running_var.fill_(1.0)
        if isinstance(getattr(module, "num_batches_tracked", None), Tensor):
            module.num_batches_tracked.zero_()


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Forward | None = None,
    reset: bool = True,
    momentum: float | None = None,
    strict: bool = True,
) -> int:
    r"""AdaBN (Li et al., 2016, arXiv:1603.04779): re-estimate the running statistics of every BN layer of
    ``model`` on ``batches`` (unlabeled data of the new domain); the affine parameters are kept.

    One pass over ``batches`` under ``torch.no_grad()`` with the BN layers in training mode (they normalize
    with the batch statistics, as in training) and **every other module in eval mode** (dropout off, other
    norms' states untouched); afterwards every module's training flag and every BN's ``momentum`` are restored.

    With ``reset=True`` and ``momentum=None`` (the default) the statistics are those of the concatenated data,
    as in the paper's Algorithm 1 (:math:`\mu_j = E[x_j]`, :math:`\sigma_j^2 = Var[x_j]` over all target
    responses, merged batch by batch with its Eq. 2, mean difference term included). For plain BN layers
    (see the module docstring) the per-channel moments of each layer's input are pooled exactly in float64
    (Chan's merge, weighted by the number of values, so batches may differ in size): ``running_mean`` = the
    pooled mean, ``running_var`` = the pooled *unbiased* variance (torch's convention: what one training-mode
    forward over the concatenated batches stores with momentum 1), ``num_batches_tracked`` = the number of
    calls. Other BN layers keep their own update rule, driven with ``momentum = 1/k`` at their k-th call:
    the cumulative average of their per-batch statistics (the pooled mean for equal batch sizes; their
    variance is the average of the per-batch variances).

    Args:
        model: the network (changed in place).
        batches: an iterable of batches (tensors, mappings of keyword inputs, or ``(inputs, labels)``
            tuples, whose first element is fed); read once. Tensors are moved to the model's device.
        forward: ``forward(model, batch)`` to feed a batch the default cannot (see above).
        reset: start from reset statistics (the layer's ``reset_running_stats``). With ``reset=False`` the
            current statistics are continued: ``momentum=None`` continues torch's cumulative average, the
            current values counting as ``num_batches_tracked`` batches.
        momentum: ``None`` for the cumulative average (above), or a number in [0, 1]: an exponential moving
            average with that factor per batch, by each layer's own rule.
        strict: a BN layer that no batch reached is restored to its original statistics and, with
            ``strict=True``, everything is restored and ``ValueError`` raised; with ``strict=False`` a
            warning names it.

    Returns:
        The number of BN layers recalibrated. ``ValueError`` when ``model`` has no BN layer.

    Layers frozen with :func:`freeze_batchnorm` are recalibrated too (their training flag is forced on for the
    pass). Under data parallelism the plain layers' pooled moments are those of this process's batches.
    """
    found = find_batchnorms(model)
    bns = list(dict.fromkeys(found.values()))
    if not bns:
        raise ValueError(
            f"recalibrate_batchnorm: {type(model).__name__} has no batch-norm layer with running statistics "
            "(modules with running_mean/running_var and momentum)"
        )
    forward = check_forward(forward)
    momentum = check_momentum(momentum)
    names = {m: n for n, m in reversed(list(found.items()))}  # first name of shared layers
    plain_classes = plain_batchnorm_classes()
    pooled = momentum is None and reset
    rw = Rewrite(model)
    snap = rw.protect_buffers(*bns)
    saved_momentum = {m: m.momentum for m in bns}
    calls = dict.fromkeys(bns, 0)
    moments: dict[nn.Module, Moments] = {}
    start = {}
    for m in bns:
        tracked = getattr(m, "num_batches_tracked", None)
        start[m] = 0 if reset or not isinstance(tracked, Tensor) else int(tracked)

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        module.training = True  # also through freeze_batchnorm's hook, which runs first
        calls[module] += 1
        if module in moments:
            x = args[0] if args else None
            if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[1] != module.running_mean.numel():
                raise ValueError(
                    f"recalibrate_batchnorm: {names[module]} ({type(module).__name__}) expected an (N, C, *) "
                    f"tensor with C = {module.running_mean.numel()}, got "
                    f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
                )
            moments[module].update(x, 1)
        elif momentum is None:
            module.momentum = 1.0 / (start[module] + calls[module])
        else:
            module.momentum = momentum

    handles = []
    try:
        for m in bns:
            if reset:
                _reset(m)
            if pooled and isinstance(m, plain_classes) and isinstance(getattr(m, "running_var", None), Tensor):
                moments[m] = Moments()
            handles.append(m.register_forward_pre_hook(pre_hook))
        with modes(model, bns):
            run_batches(model, batches, forward)
        with torch.no_grad():
            for m, acc in moments.items():
                if acc.mean is None:
                    continue
                m.running_mean.copy_(acc.mean.to(m.running_mean.dtype))
                var = acc.m2 / (acc.count - 1) if acc.count > 1 else torch.zeros_like(acc.m2)
                m.running_var.copy_(var.to(m.running_var.dtype))
                if isinstance(getattr(m, "num_batches_tracked", None), Tensor):
                    m.num_batches_tracked.fill_(calls[m])
    except BaseException:
        rw.rollback()
        raise
    finally:
        for h in handles:
            h.remove()
        for m, value in saved_momentum.items():
            m.momentum = value
    missed = [m for m in bns if calls[m] == 0]
    if missed:
        listed = ", ".join(f"{names[m]} ({type(m).__name__})" for m in missed)
        if strict:
            rw.rollback()
            raise ValueError(
                f"recalibrate_batchnorm: no batch reached {listed}; every BN layer was restored. Pass strict=False "
                "to recalibrate the others and keep these unchanged"
            )
        snap.restore(missed)
        warnings.warn(f"recalibrate_batchnorm: no batch reached {listed}; left unchanged", stacklevel=2)
    return len(bns) - len(missed)
