"""Exact model surgery on normalization layers: folding and equivalent conversions.

- :func:`fold_batchnorm`: eval-mode BatchNorm folded into the convolution or linear layer before it.
- :func:`fold_norm_affine`: a LayerNorm's / RMSNorm's gain and bias folded into the linear layers after it.
- :func:`convert_preln_to_rmsnorm`: the exact Pre-LN -> Pre-RMSNorm (or Pre-CRMSNorm) conversion of Jiang et al.
  (arXiv:2305.14858).
- :func:`freeze_layernorm_scale`: each LayerNorm replaced by a :class:`FakeLayerNorm` with a fixed, measured scale
  (Heimersheim, arXiv:2409.13710; Baroni et al., arXiv:2507.02559). Not exact: it changes the model a little.

How a function learns which layer feeds which (it never guesses from names):

1. ``torch.fx`` symbolic tracing, when the model traces (torchvision, timm and most plain ``nn.Module`` models);
2. else one recorded forward pass on ``example_inputs`` (by default a synthetic input: two rows of 8 token ids for a
   model with an ``nn.Embedding``, else random inputs shaped for its first conv/linear layer): module forward hooks
   plus a ``TorchFunctionMode`` record, for every tensor, the module or function that produced it and who consumed
   it (this is how Hugging Face models, which fx cannot trace, are handled);
3. else (BatchNorm and norm-affine folding only) adjacency inside an ``nn.Sequential``.

Every fold is then checked on a small random input against the unmodified layers, and undone if it does not
match (a layer that only looks like a BatchNorm or a plain linear, e.g. a weight-standardized convolution). Anything
not folded or not converted is listed in the returned report with the reason; nothing is skipped silently.
Third-party classes (transformers' ``Conv1D``, ``*RMSNorm``, timm layers) are recognized by duck typing; nothing
outside torch and normact is imported.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from normact.functional._affine import affine
from normact.surgery._graph import (
    alias_count,
    build_graph,
    call_model,
    module_names,
    param_users,
    shared_with,
)
from normact.surgery._match import affine_params, is_hf_conv1d, is_linear, norm_eps, role
from normact.surgery._preln import CRMSNormDecompress, RMSNormWithBias, convert_preln_to_rmsnorm
from normact.surgery._reports import ConversionReport, Folded, FoldReport, Skipped
from normact.surgery._rewrite import (
    Rewrite,
    affine_check,
    close,
    eval_mode,
    fold_affine_into_linear,
    layernorm_check,
    param_count,
    probe_vectors,
    set_param,
    unit_affine,
)

__all__ = [
    "CRMSNormDecompress",
    "ConversionReport",
    "FakeLayerNorm",
    "FoldReport",
    "Folded",
    "RMSNormWithBias",
    "Skipped",
    "convert_preln_to_rmsnorm",
    "fold_batchnorm",
    "fold_norm_affine",
    "freeze_layernorm_scale",
]


def _prepare(model: nn.Module, inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model if inplace else copy.deepcopy(model)


# ---------------------------------------------------------------------------------------------------- BatchNorm


def _bn_stats(bn: nn.Module) -> tuple[Tensor, Tensor] | str:
    """(scale, shift) of an eval-mode BatchNorm, y = x * scale + shift per channel (float64), or why not."""
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        return "no running statistics (track_running_stats=False): it normalizes with batch statistics in eval"
    if getattr(bn, "track_running_stats", True) is False:
        return "track_running_stats=False: it normalizes with batch statistics in eval"
    eps = norm_eps(bn)[1]
    if eps is None:
        return "no numeric eps attribute"
    weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
    scale = torch.rsqrt(var.double() + eps)
    if isinstance(weight, Tensor):
        scale = scale * weight.detach().double()
    shift = -mean.double() * scale
    if isinstance(bias, Tensor):
        shift = shift + bias.detach().double()
    return scale, shift


def _probe_input(layer: nn.Module) -> Tensor:
    """A small random input for a conv or linear layer."""
    gen = torch.Generator().manual_seed(1234)
    w = layer.weight
    if isinstance(layer, nn.Linear):
        x = torch.randn(3, layer.in_features, generator=gen)
    elif is_hf_conv1d(layer):
        x = torch.randn(3, w.shape[0], generator=gen)
    else:
        dims = w.dim() - 2
        k, dil, stride = layer.kernel_size, layer.dilation, layer.stride
        pad = layer.padding if isinstance(layer.padding, tuple) else (0,) * dims
        size = [max(dil[i] * (k[i] - 1) + 1, 2 * pad[i] + 1) + stride[i] + 1 for i in range(dims)]
        x = torch.randn(2, layer.in_channels, *size, generator=gen)
    return x.to(device=w.device, dtype=w.dtype)


def _fold_bn_into(rw: Rewrite, layer: nn.Module, bn: nn.Module) -> str | None:
    """Fold ``bn`` into ``layer`` (conv or linear), checked on a random input; None, or why it was not folded."""
    stats = _bn_stats(bn)
    if isinstance(stats, str):
        return stats
    scale, shift = stats
    out_features = layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features
    if scale.numel() != out_features:
        return f"{scale.numel()} channels but its producer has {out_features} outputs"
    try:
        x = _probe_input(layer)
        with torch.no_grad(), eval_mode(layer, bn):
            ref = bn(layer(x))
    except Exception as e:
        return f"its producer and it cannot be run together on a probe input ({type(e).__name__}: {e})"[:200]
    mark = rw.mark()
    rw.protect(layer)
    w = layer.weight.detach().double()
    view = (-1,) + (1,) * (w.dim() - 1)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        set_param(layer, "weight", w * scale.to(w.device).view(view))
        set_param(layer, "bias", b * scale.to(w.device) + shift.to(w.device))
        got = layer(x)
    if not close(got, ref):
        rw.rollback(mark)
        return "folding does not reproduce its output on a probe input (the layer is not a plain conv/linear)"
    return None


def fold_batchnorm(model: nn.Module, *, inplace: bool = True, example_inputs: Any = None) -> FoldReport:
    r"""Fold every eval-mode BatchNorm into the convolution or linear layer that feeds it.

    For a producer :math:`z = W x + b` (``nn.Conv1d/2d/3d`` of any ``groups``, depthwise included, or
    ``nn.Linear``; with or without bias) followed by :math:`y = \gamma (z - \mu) / \sqrt{\sigma^2 + \epsilon} +
    \beta` with the running statistics :math:`\mu, \sigma^2`, per output channel :math:`s = \gamma /
    \sqrt{\sigma^2 + \epsilon}`:

    .. math::
        W' = W \cdot s, \qquad b' = (b - \mu)\, s + \beta

    and the BatchNorm is replaced by ``nn.Identity``. BatchNorm classes are matched by type
    (``torch.nn.modules.batchnorm._BatchNorm``) or by duck typing (``running_mean``, ``running_var``, ``eps``,
    ``affine``/``weight``: normact's and timm's). A BatchNorm is folded only when its input is the output of
    exactly one conv/linear call that nothing else reads (found by ``torch.fx``, else a forward pass on
    ``example_inputs``, else direct adjacency in an ``nn.Sequential``), and only when the folded layer reproduces
    ``bn(layer(x))`` on a random probe input; every other BatchNorm is listed in ``report.skipped`` with the reason.

    A Linear followed by BatchNorm1d is folded as if the BatchNorm's channels were the Linear's features (true for
    ``(N, C)`` input, the usual MLP case).

    Args:
        model: the network. Its BatchNorms must be in eval mode: training-mode BatchNorm normalizes with batch
            statistics, which folding cannot reproduce, so a ``ValueError`` names them.
        inplace: modify ``model`` (default) or a deep copy (``report.model``).
        example_inputs: input(s) for one forward pass (a tensor, a tuple of positional inputs or a dict of keyword
            inputs), used only when ``torch.fx`` cannot trace the model; default: a synthetic input shaped for the
            first conv/linear layer (or token ids), and if the model does not accept it, Sequential adjacency.

    Returns:
        :class:`FoldReport` (``report.model`` is the folded model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [name or "<model>" for name, m in model.named_modules() if role(m) == "bn" and m.training]
    if training:
        raise ValueError(
            "fold_batchnorm needs eval-mode BatchNorm (running statistics); in training mode: "
            f"{', '.join(training[:5])}{' ...' if len(training) > 5 else ''}. Call model.eval() first"
        )
    model = _prepare(model, inplace)
    names, aliases, users = module_names(model), alias_count(model), param_users(model)
    graph, _, _ = build_graph(model, example_inputs, sequential=True)
    report = FoldReport(model, graph.method, params_before=param_count(model))
    with Rewrite(model) as rw:
        for bn in [m for m in model.modules() if role(m) == "bn"]:
            name = names[id(bn)]
            producer = graph.producer(bn, lambda m: role(m) in ("conv", "linear"), "a Conv1d/2d/3d or Linear")
            if isinstance(producer, str):
                report.skipped.append(Skipped(name, producer))
                continue
            pname = names[id(producer)]
            if aliases.get(id(bn), 1) > 1 or aliases.get(id(producer), 1) > 1:
                reason = f"it or its producer {pname} is registered under several names"
            elif shared := shared_with(model, producer, users):
                reason = f"the weights of its producer {pname} are shared with {shared}"
            else:
                reason = _fold_bn_into(rw, producer, bn)
            if reason is not None:
                report.skipped.append(Skipped(name, reason))
                continue
            rw.replace(bn, nn.Identity())
            report.folded.append(Folded(name, (pname,), type(bn).__name__))
    report.params_after = param_count(model)
    return report


# ---------------------------------------------------------------------------------------------------- norm affine


def fold_norm_affine(
    model: nn.Module, *, inplace: bool = True, example_inputs: Any = None, untie: bool = False
) -> FoldReport:
    r"""Fold the gain :math:`\gamma` and bias :math:`\beta` of LayerNorms and RMSNorms into the linear layers that
    read them, leaving each norm with weight 1 and bias 0.

    With :math:`y = u(x) \odot \gamma + \beta` (:math:`u` the normalized input) read only by linears
    :math:`W y + c`:

    .. math::
        W' = W \operatorname{diag}(\gamma), \qquad c' = c + W \beta

    (transformers' ``Conv1D``, weight (in, out), is handled transposed; a linear without bias gets one when
    :math:`\beta \ne 0`). Norms: ``nn.LayerNorm``, ``nn.RMSNorm``, normact's ``layernorm``/``rmsnorm`` and classes
    named ``*LayerNorm``/``*RMSNorm`` with a ``weight`` (Hugging Face's ``LlamaRMSNorm``...). A norm is folded only
    when its output, seen through reshapes that keep the last dimension and eval-mode dropout, is read by linear
    layers only, each called once and fed by nothing else; and only if the module really computes
    :math:`u(x) \odot \gamma + \beta` (checked numerically, which rules out e.g. Gemma's :math:`(1 + \gamma)`).
    The result is checked on a probe input; the rest is listed in ``report.skipped``.

    Args:
        model: the network.
        inplace: modify ``model`` (default) or a deep copy.
        example_inputs: input(s) for one forward pass when ``torch.fx`` cannot trace the model (default for models
            with an ``nn.Embedding``: two rows of token ids).
        untie: give a reading linear whose weight is tied to another module (an LM head tied to the token
            embedding) its own copy, instead of skipping that norm.
    """
    model = _prepare(model, inplace)
    names, aliases, users = module_names(model), alias_count(model), param_users(model)
    norms = [m for m in model.modules() if role(m) in ("ln", "rms")]
    graph, _, _ = build_graph(model, example_inputs, sequential=True)
    report = FoldReport(model, graph.method, params_before=param_count(model))
    with Rewrite(model) as rw:
        for norm in norms:
            found = graph.sole_readers(norm, is_linear, "linear")
            if isinstance(found, str):
                reason: str | None = found
            elif aliases.get(id(norm), 1) > 1 or any(aliases.get(id(m), 1) > 1 for m in found):
                reason = "it or a linear reading it is registered under several names"
            else:
                reason = _fold_norm_into(rw, norm, found, names, users, untie, report)
            if reason is None:
                report.folded.append(Folded(names[id(norm)], tuple(names[id(c)] for c in found), type(norm).__name__))
            else:
                report.skipped.append(Skipped(names[id(norm)], reason))
    report.params_after = param_count(model)
    return report


def _fold_norm_into(
    rw: Rewrite,
    norm: nn.Module,
    linears: list[nn.Module],
    names: dict[int, str],
    users: dict[int, list[tuple[str, nn.Module, str]]],
    untie: bool,
    report: FoldReport,
) -> str | None:
    """Fold ``norm``'s gain and bias into ``linears`` (untying their weights if allowed), checked on probe
    vectors; None, or why not (everything undone)."""
    params = affine_check(norm)
    if isinstance(params, str):
        return params
    g, beta = params
    d = g.shape[0]
    tied = [lin for lin in linears if shared_with(rw.model, lin, users)]
    for lin in linears:
        in_dim = lin.weight.shape[0] if is_hf_conv1d(lin) else lin.in_features
        if in_dim != d:
            return f"the linear {names[id(lin)]} reads {in_dim} features, the norm has {d}"
        if lin in tied and not untie:
            shared = shared_with(rw.model, lin, users)
            return f"the weights of {names[id(lin)]} are tied to {shared} (pass untie=True to give it its own copy)"
    x = probe_vectors(d, g)
    with torch.no_grad(), eval_mode(norm, *linears):
        refs = [lin(norm(x)) for lin in linears]
    mark = rw.mark()
    untied = [u for lin in tied for u in rw.untie(lin, names[id(lin)])]
    rw.protect(norm, *linears)
    with torch.no_grad():
        for lin in linears:
            fold_affine_into_linear(lin, g, beta)
        unit_affine(norm)
        with eval_mode(norm, *linears):
            got = [lin(norm(x)) for lin in linears]
    if not all(close(a, r, 1e-5) for a, r in zip(got, refs, strict=True)):
        rw.rollback(mark)
        return "folding does not reproduce the output on a probe input"
    report.untied += untied
    return None


# ---------------------------------------------------------------------------------------------------- frozen LN scale


class FakeLayerNorm(nn.Module):
    r"""LayerNorm with a fixed scale (LN-free inference; Heimersheim, 2024, arXiv:2409.13710; Baroni et al., 2025,
    "Transformers Don't Need LayerNorm at Inference Time", arXiv:2507.02559).

    .. math::
        y = \frac{x - \operatorname{mean}(x)}{\bar\sigma} \odot \gamma + \beta

    over the last dimension, where :math:`\bar\sigma` is a constant (the average of the LayerNorm's denominator
    :math:`\sqrt{\mathrm{Var}[x] + \epsilon}` measured on data) instead of the per-token standard deviation; with
    ``sigma_bos`` set, position 0 of the sequence axis (dim -2 of an input with 3 or more dims) uses
    :math:`\bar\sigma_0` instead (the first token's residual stream has a much larger norm in GPT-2). The result is
    affine in :math:`x`, so it could be folded into the next linear layer. Equal to LayerNorm for inputs whose
    :math:`\sqrt{\mathrm{Var}[x] + \epsilon}` is :math:`\bar\sigma`.

    Args:
        normalized_shape: the size d of the last dimension.
        sigma: the fixed scale :math:`\bar\sigma` (> 0).
        sigma_bos: the scale for position 0, or None to use ``sigma`` everywhere.
        weight, bias: :math:`\gamma`, :math:`\beta` (copied), or None.
    """

    def __init__(
        self,
        normalized_shape: int,
        sigma: float,
        sigma_bos: float | None = None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not (sigma > 0 and math.isfinite(sigma)) or (sigma_bos is not None and not sigma_bos > 0):
            raise ValueError(f"sigma and sigma_bos must be positive, got {sigma}, {sigma_bos}")
        self.normalized_shape = (int(normalized_shape),)
        ref = weight if weight is not None else bias
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.register_buffer("sigma", torch.tensor(float(sigma), **kw))
        self.register_buffer("sigma_bos", torch.tensor(float(sigma_bos), **kw) if sigma_bos is not None else None)
        self.weight = nn.Parameter(weight.detach().clone()) if weight is not None else None
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        xc = x - x.mean(-1, keepdim=True)
        if self.sigma_bos is not None and x.dim() >= 3 and x.shape[-2] > 0:
            y = torch.cat([xc[..., :1, :] / self.sigma_bos, xc[..., 1:, :] / self.sigma], dim=-2)
        else:
            y = xc / self.sigma
        return affine(y, self.weight, self.bias)

    def extra_repr(self) -> str:
        bos = "None" if self.sigma_bos is None else f"{float(self.sigma_bos):.4g}"
        return (
            f"{self.normalized_shape}, sigma={float(self.sigma):.4g}, sigma_bos={bos}, "
            f"elementwise_affine={self.weight is not None}, bias={self.bias is not None}"
        )


def freeze_layernorm_scale(
    model: nn.Module, batches: Iterable[Any], *, bos_separate: bool = True, inplace: bool = True
) -> FoldReport:
    r"""Replace every LayerNorm by a :class:`FakeLayerNorm` whose scale is its average input scale on ``batches``.

    For each LayerNorm, :math:`\bar\sigma` is the mean over all tokens seen of :math:`\sqrt{\mathrm{Var}[x] +
    \epsilon}` (the denominator LayerNorm uses); with ``bos_separate`` (default), position 0 of the sequence axis
    (dim -2 of inputs with 3 or more dims) gets its own :math:`\bar\sigma_0` and the others are averaged without it.
    Tokens masked out by an ``attention_mask`` in a dict batch are not counted. Heimersheim (2024,
    arXiv:2409.13710) and Baroni et al. (2025, arXiv:2507.02559) then fine-tune the model to recover; the authors'
    code averages, per position, the standard deviation pooled over the batch and hidden dimension without
    :math:`\epsilon`; the per-token average here makes FakeLayerNorm equal LayerNorm exactly on tokens at the
    average scale. This changes the model's outputs (by how much depends on how much the per-token scale varies);
    ``position 0`` means the first position of each call, so incremental decoding with a cache needs
    ``bos_separate=False``.

    Args:
        model: the network, in eval mode (dropout would randomize the statistics).
        batches: inputs: tensors (``model(x)``), tuples (``model(*x)``) or dicts (``model(**x)``).
        bos_separate: measure and use a separate scale for position 0.
        inplace: modify ``model`` (default) or a deep copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("freeze_layernorm_scale needs the model in eval mode (dropout off): call model.eval()")
    model = _prepare(model, inplace)
    names = module_names(model)
    report = FoldReport(model, "hooks", params_before=param_count(model))
    lns: dict[int, tuple[nn.Module, int, float]] = {}
    for m in model.modules():
        if role(m) != "ln":
            continue
        chk = layernorm_check(m)
        if isinstance(chk, str):
            report.skipped.append(Skipped(names[id(m)], chk))
        else:
            lns[id(m)] = (m, *chk)
    sums: dict[int, list[float]] = {k: [0.0, 0.0, 0.0, 0.0] for k in lns}  # sum, count, sum at pos 0, count at 0
    current_mask: list[Tensor | None] = [None]

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if not isinstance(x, Tensor):
            return
        _, _, eps = lns[id(module)]
        s = torch.sqrt(x.detach().double().var(-1, unbiased=False) + eps)  # (*lead)
        weight = torch.ones_like(s)
        mask = current_mask[0]
        if mask is not None and tuple(mask.shape) == tuple(s.shape):
            weight = mask.to(s)
        acc = sums[id(module)]
        if bos_separate and s.dim() >= 2:
            acc[2] += float((s[..., 0] * weight[..., 0]).sum())
            acc[3] += float(weight[..., 0].sum())
            s, weight = s[..., 1:], weight[..., 1:]
        acc[0] += float((s * weight).sum())
        acc[1] += float(weight.sum())

    handles = [m.register_forward_pre_hook(hook) for m, _, _ in lns.values()]
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                current_mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
                call_model(model, batch)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("batches is empty: freeze_layernorm_scale needs at least one batch to measure the scales")
    with Rewrite(model) as rw:
        for key, (m, d, _) in lns.items():
            name = names[key]
            total, count, total0, count0 = sums[key]
            if count == 0 and count0 == 0:
                report.skipped.append(Skipped(name, "never called on the batches (no input seen)"))
                continue
            sigma = total / count if count else total0 / count0
            sigma_bos = (total0 / count0 if count0 else None) if bos_separate else None
            w, b = affine_params(m)
            fake = FakeLayerNorm(d, sigma, sigma_bos, w, b)
            if w is not None:
                fake.weight.requires_grad_(w.requires_grad)
            rw.replace(m, fake)
            report.scales[name] = (sigma, sigma_bos)
            bos = "" if sigma_bos is None else f", sigma_bos={sigma_bos:.4g}"
            report.folded.append(Folded(name, ("FakeLayerNorm",), f"sigma={sigma:.4g}{bos}"))
    report.params_after = param_count(model)
    return report
