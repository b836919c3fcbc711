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

import contextlib
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from normact._checks import check_float, check_momentum
from normact.probing.probe import module_kind
from normact.registry import get_info
from normact.surgery._state import ParamSnapshot

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

Forward = Callable[[nn.Module, Any], Any]
Mode = Literal["both", "rescale", "reshift"]
MODES = ("both", "rescale", "reshift")

# ------------------------------------------------------------------------------------------------ helpers


def _plain_bn_classes() -> tuple[type[nn.Module], ...]:
    """Classes whose running statistics are torch's (mean and unbiased variance over dim 1, per channel)."""
    return (nn.modules.batchnorm._BatchNorm, *(get_info(n).cls for n in ("batchnorm1d", "batchnorm2d", "alpha_bn")))


def _is_instance_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.instancenorm._InstanceNorm) or "InstanceNorm" in type(module).__name__


def _is_bn(module: nn.Module) -> bool:
    """A batch-norm layer with running statistics (see the module docstring)."""
    stats = any(isinstance(getattr(module, k, None), Tensor) for k in ("running_mean", "running_var"))
    return stats and hasattr(module, "momentum") and not _is_instance_norm(module)


def _untracked_bns(model: nn.Module) -> list[str]:
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
    return {name: m for name, m in model.named_modules() if _is_bn(m)}


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def _to_device(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch) if not hasattr(batch, "_fields") else batch
    return batch


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(**batch)`` for a mapping, ``model(batch[0])`` for an
    ``(inputs, labels, ...)`` tuple or list (a DataLoader's batches)."""
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return model(batch[0])
    raise TypeError(
        "a batch is a tensor, a mapping of keyword inputs or an (inputs, labels) tuple; got "
        f"{type(batch).__name__}: pass forward=lambda model, batch: ... to feed it to the model"
    )


def _check_forward(forward: Forward | None) -> Forward:
    if forward is None:
        return _default_forward
    if not callable(forward):
        raise TypeError(f"forward must be a callable (model, batch) -> output, got {type(forward).__name__}")
    return forward


def _run(model: nn.Module, batches: Iterable[Any], forward: Forward) -> int:
    """Feed every batch to ``model`` (no grad) and count them; ValueError when there is none."""
    if isinstance(batches, (Tensor, Mapping)) or not isinstance(batches, Iterable):
        raise TypeError(
            "batches must be an iterable of batches (a list of tensors, a DataLoader...), got "
            f"{type(batches).__name__}; wrap a single batch in a list"
        )
    device = _model_device(model)
    n = 0
    with torch.no_grad():
        for batch in batches:
            forward(model, _to_device(batch, device))
            n += 1
    if n == 0:
        raise ValueError("batches is empty: give at least one batch")
    return n


@contextlib.contextmanager
def _modes(model: nn.Module, train: Iterable[nn.Module] = ()) -> Iterator[None]:
    """Every module of ``model`` in eval mode except ``train`` (those alone, not their children); every
    training flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        for m in train:
            m.training = True
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Moments:
    """Exact pooled per-channel count, mean and sum of squared deviations (Chan et al.'s merge, float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, y: Tensor, axis: int) -> None:
        v = y.detach().movedim(axis, -1)
        v = v.reshape(-1, v.shape[-1]).to(torch.float64)
        n = v.shape[0]
        if n == 0:
            return
        mean = v.mean(0)
        m2 = (v - mean).square().sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        if mean.shape != self.mean.shape:
            raise ValueError(f"channel count changed between calls: {tuple(self.mean.shape)} then {tuple(mean.shape)}")
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def std(self) -> Tensor:
        """Population (biased) standard deviation."""
        assert self.m2 is not None
        return (self.m2 / self.count).sqrt()


def _snapshot_buffers(modules: Iterable[nn.Module]) -> dict[nn.Module, dict[str, Tensor]]:
    return {m: {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in modules}


def _restore_buffers(snap: Mapping[nn.Module, Mapping[str, Tensor]]) -> None:
    with torch.no_grad():
        for m, bufs in snap.items():
            for k, v in bufs.items():
                getattr(m, k).copy_(v)


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


# ------------------------------------------------------------------------------------------- AdaBN


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
    forward = _check_forward(forward)
    momentum = check_momentum(momentum)
    names = {m: n for n, m in reversed(list(found.items()))}  # first name of shared layers
    plain_classes = _plain_bn_classes()
    pooled = momentum is None and reset
    snap = _snapshot_buffers(bns)
    saved_momentum = {m: m.momentum for m in bns}
    calls = dict.fromkeys(bns, 0)
    moments: dict[nn.Module, _Moments] = {}
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
                moments[m] = _Moments()
            handles.append(m.register_forward_pre_hook(pre_hook))
        with _modes(model, bns):
            _run(model, batches, forward)
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
        _restore_buffers(snap)
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
            _restore_buffers(snap)
            raise ValueError(
                f"recalibrate_batchnorm: no batch reached {listed}; every BN layer was restored. Pass strict=False "
                "to recalibrate the others and keep these unchanged"
            )
        _restore_buffers({m: snap[m] for m in missed})
        warnings.warn(f"recalibrate_batchnorm: no batch reached {listed}; left unchanged", stacklevel=2)
    return len(bns) - len(missed)


# ---------------------------------------------------------------------------------------- REPAIR


class ChannelStats(NamedTuple):
    """Per-channel statistics of a module's output: ``mean`` and ``std`` (population standard deviation over
    every position but the channel axis), float64 tensors of shape (C,)."""

    mean: Tensor | None
    std: Tensor | None


_TORCH_NORMS_FIRST = (nn.modules.batchnorm._NormBase, nn.GroupNorm)  # channel axis 1, self.weight/bias in forward
_TORCH_NORMS_LAST = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def _channel_axis(name: str, module: nn.Module) -> tuple[int, str]:
    """(channel axis of the output, kind) with kind ``"proj"`` (conv/linear) or ``"norm"``; TypeError for
    other modules."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return 1, "proj"
    if isinstance(module, nn.Linear):
        return -1, "proj"
    if isinstance(module, _TORCH_NORMS_FIRST):
        return 1, "norm"
    if isinstance(module, _TORCH_NORMS_LAST) and len(module.normalized_shape) == 1:
        return -1, "norm"
    if not isinstance(module, _TORCH_NORMS_LAST) and module_kind(module) == "norm":
        try:
            layout = get_info(type(module)).input_layout
        except KeyError:  # a third-party norm (LlamaRMSNorm, T5LayerNorm): features last
            layout = "tokens"
        if layout == "channels_first":
            return 1, "norm"
        shape = getattr(module, "normalized_shape", None)
        one_dim = shape is None or isinstance(shape, int) or len(tuple(shape)) == 1
        if layout in ("tokens", "last_dims") and one_dim:
            return -1, "norm"
    raise TypeError(
        f"{name} ({type(module).__name__}): per-channel statistics and corrections are defined for the outputs "
        "of torch.nn.Conv1d/2d/3d (channel axis 1), torch.nn.Linear (last axis) and normalization layers "
        "(channel-first norms: axis 1; LayerNorm/RMSNorm over one dim and transformers-style *Norm: last axis)"
    )


def _select(model: nn.Module, modules: Any) -> dict[str, nn.Module]:
    """Modules chosen by names / fnmatch patterns / classes / instances / predicates (name, module) -> bool."""
    named = dict(model.named_modules())
    items = [modules] if isinstance(modules, (str, type, nn.Module)) or callable(modules) else modules
    if not isinstance(items, Iterable):
        raise TypeError(f"modules must be a name, pattern, class, module, predicate or a list of them, got {modules!r}")
    out: dict[str, nn.Module] = {}
    for sel in items:
        if isinstance(sel, str):
            hits = [sel] if sel in named else [n for n in named if n and fnmatch.fnmatchcase(n, sel)]
        elif isinstance(sel, type) and issubclass(sel, nn.Module):
            hits = [n for n, m in named.items() if isinstance(m, sel)]
        elif isinstance(sel, nn.Module):
            hits = [n for n, m in named.items() if m is sel][:1]
        elif callable(sel):
            hits = [n for n, m in named.items() if sel(n, m)]
        else:
            raise TypeError(f"a module selector is a name, pattern, class, module or predicate, got {sel!r}")
        if not hits:
            raise ValueError(f"no module of {type(model).__name__} matches {sel!r}")
        out.update((n, named[n]) for n in hits)
    return out


def _measure(
    model: nn.Module, batches: Iterable[Any], modules: Mapping[str, nn.Module], forward: Forward
) -> dict[str, _Moments]:
    """Pooled per-channel moments of each module's output over ``batches``, the model in eval mode."""
    acc = {name: _Moments() for name in modules}
    handles = []
    for name, m in modules.items():
        axis, _ = _channel_axis(name, m)

        def hook(module: nn.Module, args: Any, out: Any, name: str = name, axis: int = axis) -> None:
            if not isinstance(out, Tensor):
                raise TypeError(f"{name} ({type(module).__name__}) returned {type(out).__name__}, not a tensor")
            acc[name].update(out, axis)

        handles.append(m.register_forward_hook(hook))
    try:
        with _modes(model):
            _run(model, batches, forward)
    finally:
        for h in handles:
            h.remove()
    missed = [n for n, a in acc.items() if a.mean is None]
    if missed:
        raise ValueError(f"no batch reached {', '.join(missed)}: no statistics")
    return acc


def channel_stats(
    model: nn.Module, batches: Iterable[Any], modules: Any, *, forward: Forward | None = None
) -> dict[str, ChannelStats]:
    r"""Per-channel mean and standard deviation of the outputs of ``modules`` over ``batches``, the model in
    eval mode under ``no_grad`` (training flags restored): the targets of :func:`renormalize`.

    :math:`\mu_c = E[y_c]`, :math:`\sigma_c = \sqrt{E[(y_c - \mu_c)^2]}` (population std), over every sample
    and position of every batch (exact, pooled in float64). Supported modules and their channel axis:
    ``Conv1d/2d/3d`` (1), ``Linear`` (last), channel-first norms (1: BatchNorm, GroupNorm, normact's
    ``channels_first`` norms), LayerNorm/RMSNorm over one dim, normact's token norms and transformers-style
    ``*Norm`` classes (last).

    ``modules``: a qualified name or fnmatch pattern (``"features.*"``), a module class or instance, a
    predicate ``(name, module) -> bool``, or a list of these. Returns ``{name: ChannelStats(mean, std)}``
    (float64 tensors on the model's device). REPAIR's target for a model interpolated between endpoints A and
    B with weight ``t`` is ``(1 - t) * stats_A + t * stats_B``, mean and std each (Jordan et al., 2022).
    """
    forward = _check_forward(forward)
    chosen = _select(model, modules)
    acc = _measure(model, batches, chosen, forward)
    return {n: ChannelStats(a.mean, a.std()) for n, a in acc.items()}


def _as_stats(name: str, value: Any) -> ChannelStats:
    if isinstance(value, ChannelStats):
        return value
    if isinstance(value, Mapping):
        return ChannelStats(value.get("mean"), value.get("std"))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return ChannelStats(value[0], value[1])
    raise TypeError(f"targets[{name!r}] must be ChannelStats(mean, std), a (mean, std) pair or a dict, got {value!r}")


_CREATES_AFFINE = (*_TORCH_NORMS_FIRST, *_TORCH_NORMS_LAST)  # forward reads self.weight / self.bias


def _check_foldable(name: str, module: nn.Module, kind: str, mode: str) -> None:
    if kind == "proj":
        return
    creatable = isinstance(module, _CREATES_AFFINE)
    if getattr(module, "weight", None) is None and not creatable:
        raise TypeError(f"{name} ({type(module).__name__}) has no weight to rescale its output with")
    no_bias = not creatable or "bias" not in module._parameters
    if mode != "rescale" and getattr(module, "bias", None) is None and no_bias:
        raise TypeError(
            f"{name} ({type(module).__name__}) has no bias to shift its output with: use mode='rescale', or "
            "correct the layer that follows it"
        )


def _fold(module: nn.Module, kind: str, scale: Tensor, shift: Tensor | None) -> None:
    """y <- scale * y + shift per channel, written into the module's weight and bias."""
    c = scale.numel()
    with torch.no_grad():
        if module.weight is None:  # a torch norm built without affine: start from the identity affine
            dtype = next((b.dtype for b in module.buffers() if b.is_floating_point()), torch.get_default_dtype())
            module.weight = nn.Parameter(torch.ones(c, dtype=dtype, device=scale.device))
            if "bias" in module._parameters:
                module.bias = nn.Parameter(torch.zeros(c, dtype=dtype, device=scale.device))
            for flag in ("affine", "elementwise_affine"):
                if hasattr(module, flag):
                    setattr(module, flag, True)
        w = module.weight
        if kind == "proj":
            view: tuple[int, ...] = (-1,) + (1,) * (w.dim() - 1)
        elif w.numel() == c:
            view = tuple(w.shape)
        else:
            raise TypeError(
                f"{type(module).__name__}: its weight has shape {tuple(w.shape)}, not one value per output "
                f"channel ({c})"
            )
        w.mul_(scale.to(w.dtype).reshape(view))
        b = getattr(module, "bias", None)
        if b is None and shift is not None and bool((shift != 0).any()):
            module.bias = nn.Parameter(torch.zeros(c, dtype=w.dtype, device=w.device))
            module.bias.requires_grad_(w.requires_grad)
            b = module.bias
        if b is not None:
            new = scale.reshape(b.shape) * b.to(torch.float64)
            if shift is not None:
                new = new + shift.reshape(b.shape)
            b.copy_(new.to(b.dtype))


def renormalize(
    model: nn.Module,
    batches: Iterable[Any],
    targets: Mapping[str, Any] | None = None,
    *,
    mode: Mode = "both",
    forward: Forward | None = None,
    verify: bool = True,
) -> int:
    r"""Per-channel affine correction of activations after merging or pruning (REPAIR, arXiv:2211.08403;
    rescale / reshift, Qu & Horvath, 2024, arXiv:2402.05966).

    ``targets=None``: for BN networks the correction is resetting the BN statistics on ``batches``
    (:func:`recalibrate_batchnorm`, ``mode="both"`` only); returns its count.

    ``targets={name: ChannelStats(mean, std)}`` (or ``(mean, std)`` pairs, per-channel tensors, e.g.
    interpolated :func:`channel_stats` of the endpoint models): the output :math:`y_c` of each named module,
    with current per-channel mean :math:`\mu_c` and std :math:`\sigma_c` on ``batches`` (eval mode), becomes

    - ``"both"``: :math:`(y_c - \mu_c)\,t^\sigma_c/\sigma_c + t^\mu_c` (mean and std equal the targets),
    - ``"rescale"``: :math:`y_c\,t^\sigma_c/\sigma_c` (std = target, mean/std ratio unchanged; the official
      code's ``BatchScale2d``, no centering),
    - ``"reshift"``: :math:`y_c - \mu_c + t^\mu_c` (mean = target, std unchanged),

    written into the module's weights (nothing is inserted, the state-dict keys stay; a missing bias is
    created): ``Conv1d/2d/3d`` and ``Linear`` (weight rows and bias), norms with a per-channel affine
    (weight and bias: torch's BatchNorm/GroupNorm/InstanceNorm/LayerNorm, created when built without affine;
    normact's norms and transformers-style ``*Norm`` whose output is ``z * weight + bias``; weight-only
    norms such as RMSNorm support ``"rescale"`` alone). Modules are corrected one at a time in the order
    the forward pass reaches them, each measured with the earlier corrections in place, so the statistics
    on ``batches`` equal the targets exactly (one pass over ``batches`` per module; ``batches`` is kept in
    a list). Channels with zero std cannot be rescaled: their scale stays 1 (a warning names them).

    ``verify=True`` re-measures every corrected module and, where the statistics miss the targets (a norm
    whose output is not affine in its weight and bias, such as FRN's TLU, or a module used twice), restores
    the model and raises ``RuntimeError``. Returns the number of modules corrected.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    forward = _check_forward(forward)
    if targets is None:
        if mode != "both":
            raise ValueError(
                f"mode={mode!r} needs targets (per-channel mean/std per module); without targets renormalize "
                "resets the BN statistics, which corrects mean and std together (mode='both')"
            )
        return recalibrate_batchnorm(model, batches, forward=forward)
    plan = _renormalize_plan(model, targets, mode)
    if isinstance(batches, (Tensor, Mapping)) or not isinstance(batches, Iterable):
        raise TypeError(f"batches must be an iterable of batches, got {type(batches).__name__}")
    data = list(batches)
    if not data:
        raise ValueError("batches is empty: give at least one batch")
    order = _forward_order(model, {n: m for n, (m, _) in plan.items()}, data[0], forward)
    saved = ParamSnapshot((m for m, _ in plan.values()), ("affine", "elementwise_affine"))
    try:
        for name in order:
            module, stats = plan[name]
            acc = _measure(model, data, {name: module}, forward)[name]
            scale, shift = _correction(name, acc, stats, mode)
            _fold(module, _channel_axis(name, module)[1], scale, shift)
        if verify:
            acc_all = _measure(model, data, {n: plan[n][0] for n in order}, forward)
            bad = [n for n in order if not _on_target(acc_all[n], plan[n][1], mode)]
            if bad:
                raise RuntimeError(
                    f"renormalize: after correction the statistics of {', '.join(bad)} miss the targets (an output "
                    "that is not affine in the module's weight and bias, or a module called more than once per "
                    "forward); the model was restored"
                )
    except BaseException:
        saved.restore()
        raise
    return len(order)


def _renormalize_plan(model: nn.Module, targets: Any, mode: str) -> dict[str, tuple[nn.Module, ChannelStats]]:
    """Validate ``targets`` against the model's modules: {name: (module, stats)}."""
    if not isinstance(targets, Mapping) or not targets:
        raise TypeError(
            f"targets must be a non-empty mapping {{module name: ChannelStats(mean, std)}}, got {targets!r}"
        )
    named = dict(model.named_modules())
    need = {"both": ("mean", "std"), "rescale": ("std",), "reshift": ("mean",)}[mode]
    plan = {}
    for name, value in targets.items():
        if name not in named:
            raise ValueError(f"targets names {name!r}, which is not a module of {type(model).__name__}")
        module = named[name]
        _, kind = _channel_axis(name, module)
        _check_foldable(name, module, kind, mode)
        stats = _as_stats(name, value)
        for field in need:
            t = getattr(stats, field)
            if not isinstance(t, Tensor) or t.dim() != 1:
                raise TypeError(f"targets[{name!r}].{field} must be a 1-d tensor (per channel), got {t!r}")
        if "std" in need and bool((stats.std < 0).any()):
            raise ValueError(f"targets[{name!r}].std must be >= 0")
        plan[name] = (module, stats)
    return plan


def _forward_order(model: nn.Module, modules: Mapping[str, nn.Module], batch: Any, forward: Forward) -> list[str]:
    """The names of ``modules`` in the order one forward pass first calls them; ValueError for those it skips."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, a, o, n=name: None if n in order else order.append(n))
        for name, m in modules.items()
    ]
    try:
        with _modes(model):
            _run(model, [batch], forward)
    finally:
        for h in handles:
            h.remove()
    missed = [n for n in modules if n not in order]
    if missed:
        raise ValueError(f"renormalize: the forward pass does not reach {', '.join(missed)}")
    return order


def _correction(name: str, acc: _Moments, stats: ChannelStats, mode: str) -> tuple[Tensor, Tensor | None]:
    """Per-channel (scale, shift) taking the measured moments to the targets (float64)."""
    mu, sigma = acc.mean, acc.std()
    c = mu.numel()
    for field in ("mean", "std"):
        t = getattr(stats, field)
        if t is not None and t.numel() != c:
            raise ValueError(f"targets[{name!r}].{field} has {t.numel()} channels, the output has {c}")
    scale = torch.ones_like(mu)
    if mode in ("both", "rescale"):
        degenerate = sigma <= 1e-12 * (1.0 + mu.abs())
        t_std = stats.std.to(mu)
        scale = torch.where(degenerate, scale, t_std / torch.where(degenerate, 1.0, sigma))
        if bool((degenerate & (t_std > 0)).any()):
            warnings.warn(
                f"renormalize: {int(degenerate.sum())} channel(s) of {name} are constant on the batches (std 0) and "
                "cannot be rescaled to their target std",
                stacklevel=3,
            )
    shift = stats.mean.to(mu) - scale * mu if mode in ("both", "reshift") else None
    return scale, shift


def _on_target(acc: _Moments, stats: ChannelStats, mode: str, rtol: float = 1e-4) -> bool:
    """Whether the measured moments equal the targets (relative to the channel's target std + |mean|)."""
    mean, std = acc.mean, acc.std()
    check_std, check_mean = mode in ("both", "rescale"), mode in ("both", "reshift")
    scale = (stats.std.to(std) if check_std else std) + (stats.mean.to(mean).abs() if check_mean else 0.0)
    tol = rtol * scale + 1e-6
    ok = True
    if check_std:
        live = std > 1e-12 * (1.0 + mean.abs())  # constant channels were left unscaled (warned)
        ok = ok and bool(((std - stats.std.to(std)).abs() <= tol)[live].all())
    if check_mean:
        ok = ok and bool(((mean - stats.mean.to(mean)).abs() <= tol).all())
    return ok


# ------------------------------------------------------------------------------------- BN-only training


def _is_norm(module: nn.Module) -> bool:
    return module_kind(module) == "norm"


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
        if not _is_norm(m):
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


def _replace_children(
    model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]
) -> list[tuple[str, nn.Module, nn.Module]]:
    """Swap each child for which ``make(name, child)`` returns a module (shared children once)."""
    done: dict[int, nn.Module | None] = {}
    swaps = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) not in done:
                done[id(child)] = make(name, child)
            new = done[id(child)]
            if new is not None and new is not child:
                setattr(parent, child_name, new)
                swaps.append((name, child, new))
    return swaps


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
    plain = _plain_bn_classes()
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
        if _is_bn(child) or isinstance(child, nn.modules.batchnorm._BatchNorm):
            others.append(f"{name} ({type(child).__name__})")
        return None

    _replace_children(model, make)
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

    return len(_replace_children(model, make))


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
    untracked = _untracked_bns(model)
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
