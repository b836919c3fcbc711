"""REPAIR-style per-channel rescale / reshift of activations after merging or pruning (Qu & Horvath, 2024,
arXiv:2402.05966; REPAIR: Jordan, Sedghi, Saukh, Entezari & Neyshabur, 2022, arXiv:2211.08403):
:func:`channel_stats` and :func:`renormalize`. Public through :mod:`normact.surgery.adapt`."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from normact.surgery._adabn import recalibrate_batchnorm
from normact.surgery._feed import Forward, Moments, check_forward, modes, run_batches
from normact.surgery._graph import call_order
from normact.surgery._match import TORCH_NORMS_FIRST, TORCH_NORMS_LAST, channel_axis, select
from normact.surgery._rewrite import Rewrite

__all__ = ["MODES", "ChannelStats", "Mode", "channel_stats", "renormalize"]

Mode = Literal["both", "rescale", "reshift"]
MODES = ("both", "rescale", "reshift")


class ChannelStats(NamedTuple):
    """Per-channel statistics of a module's output: ``mean`` and ``std`` (population standard deviation over
    every position but the channel axis), float64 tensors of shape (C,)."""

    mean: Tensor | None
    std: Tensor | None


def _measure(
    model: nn.Module, batches: Iterable[Any], modules: Mapping[str, nn.Module], forward: Forward
) -> dict[str, Moments]:
    """Pooled per-channel moments of each module's output over ``batches``, the model in eval mode."""
    acc = {name: Moments() for name in modules}
    handles = []
    for name, m in modules.items():
        axis, _ = channel_axis(name, m)

        def hook(module: nn.Module, args: Any, out: Any, name: str = name, axis: int = axis) -> None:
            if not isinstance(out, Tensor):
                raise TypeError(f"{name} ({type(module).__name__}) returned {type(out).__name__}, not a tensor")
            acc[name].update(out, axis)

        handles.append(m.register_forward_hook(hook))
    try:
        with modes(model):
            run_batches(model, batches, forward)
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
    forward = check_forward(forward)
    chosen = select(model, modules)
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


_CREATES_AFFINE = (*TORCH_NORMS_FIRST, *TORCH_NORMS_LAST)  # forward reads self.weight / self.bias


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
    forward = check_forward(forward)
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
    with Rewrite(model) as rw:
        rw.protect(*(m for m, _ in plan.values()), attrs=("affine", "elementwise_affine"))
        for name in order:
            module, stats = plan[name]
            acc = _measure(model, data, {name: module}, forward)[name]
            scale, shift = _correction(name, acc, stats, mode)
            _fold(module, channel_axis(name, module)[1], scale, shift)
        if verify:
            acc_all = _measure(model, data, {n: plan[n][0] for n in order}, forward)
            bad = [n for n in order if not _on_target(acc_all[n], plan[n][1], mode)]
            if bad:
                raise RuntimeError(
                    f"renormalize: after correction the statistics of {', '.join(bad)} miss the targets (an output "
                    "that is not affine in the module's weight and bias, or a module called more than once per "
                    "forward); the model was restored"
                )
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
        _, kind = channel_axis(name, module)
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

    def run() -> None:
        with modes(model):
            run_batches(model, [batch], forward)

    order = call_order(modules, run)
    missed = [n for n in modules if n not in order]
    if missed:
        raise ValueError(f"renormalize: the forward pass does not reach {', '.join(missed)}")
    return order


def _correction(name: str, acc: Moments, stats: ChannelStats, mode: str) -> tuple[Tensor, Tensor | None]:
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


def _on_target(acc: Moments, stats: ChannelStats, mode: str, rtol: float = 1e-4) -> bool:
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
