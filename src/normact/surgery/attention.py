"""Switch the attention of a Hugging Face model to any registered attention normalizer: :func:`use_attention`.

transformers routes the attention of its models through a registry of attention functions
(``AttentionInterface``, selected by the model config's attention implementation) and builds their masks through
``AttentionMaskInterface``. :func:`use_attention` registers a function there that runs normact's normalizer (one
instance per attention module, a submodule named ``normact_attention``, so learnable normalizers train and save
with the model), registers transformers' boolean SDPA mask under the same name, and switches the model to it.
``use_attention(model, "softmax_attention")`` reproduces the model's own outputs; any other normalizer changes
them. A model whose attention modules do not call the interface (older or custom code) is refused with a
``ValueError`` that says so.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from normact.registry import get_info
from normact.surgery._match import class_label, forward_source
from normact.surgery._rewrite import Rewrite, RewriteReport, Row, param_count

__all__ = ["AttentionReport", "use_attention"]

_SUBMODULE = "normact_attention"
_PREFIX = "normact_"


@dataclass
class AttentionReport(RewriteReport):
    """What :func:`use_attention` did: the implementation name set on the model, the attention modules switched
    (each with its normalizer's repr), the notes (ignored call arguments), parameter counts."""

    implementation: str
    previous: str | None
    switched: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    def rows(self) -> list[Row]:
        return [Row("switched", name, "", layer) for name, layer in self.switched]

    def summary(self) -> str:
        lines = [
            f"attention {self.previous} -> {self.implementation}: {len(self.switched)} modules; parameters "
            f"{self.params_before:,} -> {self.params_after:,}"
        ]
        lines += [f"  {name}: {layer}" for name, layer in self.switched]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _uses_interface(module: nn.Module) -> bool:
    src = forward_source(type(module))
    return "ALL_ATTENTION_FUNCTIONS" in src or "attention_interface(" in src


def _keep_mask(attention_mask: Tensor | None) -> Tensor | None:
    """transformers' mask as normact's (True = attend): boolean masks as they are, additive ones where 0."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask == 0


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D), each key/value head repeated for its group of query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _attention_function(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """transformers' attention-function signature: (B, H, T, D) query, (B, Hkv, S, D) key/value; returns the
    output as (B, T, H, Dv) and the weights when ``output_attentions``."""
    layer = getattr(module, _SUBMODULE, None)
    if layer is None:
        raise RuntimeError(f"{type(module).__name__} has no normact attention: call normact.use_attention(model, ...)")
    n_rep = getattr(module, "num_key_value_groups", 1) or 1
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and query.shape[2] > 1 and attention_mask is None
    need = bool(kwargs.get("output_attentions", False))
    result = layer(query, key, value, causal=causal, mask=_keep_mask(attention_mask), need_weights=need)
    out, weights = result if need else (result, None)
    return out.transpose(1, 2).contiguous(), weights


def _register(implementation: str) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(implementation, _attention_function)
    ALL_MASK_ATTENTION_FUNCTIONS.register(implementation, sdpa_mask)


def _build(name: str, module: nn.Module, kwargs: dict[str, Any], ref: Tensor | None) -> nn.Module:
    info = get_info(name)
    accepted = inspect.signature(info.factory).parameters
    args = dict(kwargs)
    scaling = getattr(module, "scaling", None)
    if "scale" in accepted and "scale" not in args and isinstance(scaling, float):
        args["scale"] = scaling  # the model's own score scale (1/sqrt(head_dim) or its config's)
    if "head_dim" in accepted and "head_dim" not in args and isinstance(getattr(module, "head_dim", None), int):
        args["head_dim"] = module.head_dim
    if ref is not None:
        args.update({k: v for k, v in (("device", ref.device), ("dtype", ref.dtype)) if k in accepted})
    return info.factory(**args)


def use_attention(model: nn.Module, name: str, **kwargs: Any) -> AttentionReport:
    """Make every attention module of the transformers model ``model`` use the registered attention normalizer
    ``name`` (``normact list --kind attention``), in place.

    Each attention module gets its own normalizer (built with ``kwargs``; a ``scale`` defaults to the module's
    ``scaling``, a ``head_dim`` to its head size) as the submodule ``normact_attention``; the model's config is set
    to the implementation ``"normact_<name>"``, registered with transformers' ``AttentionInterface`` together with
    its SDPA-style boolean masks. Grouped-query key/value heads are repeated; attention dropout is not applied
    (noted in the report when the model has any); the weights are returned under ``output_attentions=True`` (so
    :func:`normact.probe` reads them). Raises ``ValueError`` for a model without transformers' attention interface
    and ``TypeError`` for a name that is not an attention normalizer.
    """
    info = get_info(name)
    if info.kind != "attention":
        raise TypeError(f"{info.name!r} is a {info.kind}, not an attention normalizer (normact list --kind attention)")
    config = getattr(model, "config", None)
    if not callable(getattr(model, "set_attn_implementation", None)) or config is None:
        raise ValueError(f"{type(model).__name__} is not a transformers model (no set_attn_implementation)")
    targets = [(n, m) for n, m in model.named_modules() if _uses_interface(m)]
    if not targets:
        raise ValueError(
            f"{type(model).__name__}'s attention modules do not go through transformers' AttentionInterface "
            "(their forward never calls ALL_ATTENTION_FUNCTIONS): their attention cannot be switched"
        )
    implementation = _PREFIX + info.name
    _register(implementation)
    previous = getattr(config, "_attn_implementation", None)
    report = AttentionReport(implementation, previous, params_before=param_count(model))
    ref = next(iter(model.parameters()), None)
    with Rewrite(model) as rw:
        for qual, module in targets:
            layer = _build(info.name, module, kwargs, ref)
            rw.set_attr(module, _SUBMODULE, layer)
            report.switched.append((qual, f"{class_label(type(module))} -> {layer!r}"))
        model.set_attn_implementation(implementation)
        if getattr(model.config, "_attn_implementation", None) != implementation:
            raise ValueError(f"{type(model).__name__} did not accept the attention implementation {implementation!r}")
    dropout = {float(getattr(m, "attention_dropout", 0.0) or 0.0) for _, m in targets}
    if any(p > 0 for p in dropout):
        report.notes.append(f"attention dropout {sorted(dropout)} is not applied by normact's normalizers")
    report.params_after = param_count(model)
    return report
