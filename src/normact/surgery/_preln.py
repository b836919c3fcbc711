"""The exact Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm conversion of Jiang, Gu, Zhu & Pan (2023, arXiv:2305.14858):
:func:`convert_preln_to_rmsnorm` and the layers it installs (:class:`RMSNormWithBias`, :class:`CRMSNormDecompress`).
Public through :mod:`normact.surgery.fold`.

The residual writers are found from the data flow (:mod:`normact.surgery._graph`: the terms of each LayerNorm's
input, followed back through additions), every edit goes through one :class:`~normact.surgery._rewrite.Rewrite`,
and the converted model is checked against the original's output on the example input.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from normact.functional._affine import affine
from normact.layers.norm.layer import RMSNorm
from normact.registry import create
from normact.surgery._graph import (
    Graph,
    Node,
    alias_count,
    build_graph,
    call_model,
    default_example,
    describe,
    module_names,
    param_users,
    shared_with,
    unique_modules,
)
from normact.surgery._match import affine_params, is_hf_conv1d, is_linear, role
from normact.surgery._reports import ConversionReport, Folded, Skipped
from normact.surgery._rewrite import (
    Rewrite,
    fold_affine_into_linear,
    layernorm_check,
    max_abs_diff,
    output_scale,
    param_count,
    set_param,
)

__all__ = ["CRMSNormDecompress", "RMSNormWithBias", "convert_preln_to_rmsnorm"]


class RMSNormWithBias(RMSNorm):
    r"""RMSNorm with a bias: :math:`y = x / \sqrt{\operatorname{mean}(x^2) + \epsilon} \odot \gamma + \beta`.

    normact's ``rmsnorm`` (torch semantics) has no bias; this subclass adds the bias that a converted Pre-LN model
    needs: for zero-mean :math:`x` it equals ``LayerNorm(x)`` with the same :math:`\gamma, \beta, \epsilon`
    (Jiang et al., 2023, arXiv:2305.14858).
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.bias

    def extra_repr(self) -> str:
        return super().extra_repr() + ", bias=True"


class CRMSNormDecompress(nn.Module):
    r"""CRMSNorm on the compressed (d-1)-vector, then the full d-vector with gain and bias.

    A zero-mean :math:`z \in \mathbb{R}^d` is stored as :math:`x = z_{1..d-1}` (:math:`z_d = -\sum_i x_i`).
    normact's ``crmsnorm`` (no affine) gives :math:`n = x / \sqrt{(\lVert x\rVert^2 + (\sum_i x_i)^2)/d +
    \epsilon} = \mathrm{RMSNorm}(z)_{1..d-1}`; this module returns

    .. math::
        y = [n, -\textstyle\sum_i n_i] \odot \gamma + \beta = \mathrm{LayerNorm}(z)

    (Jiang et al., 2023, arXiv:2305.14858). Used when the layers after the norm cannot take the compressed vector.
    Input ``(*, d-1)``, output ``(*, d)``.
    """

    def __init__(self, d: int, eps: float, weight: Tensor | None, bias: Tensor | None) -> None:
        super().__init__()
        self.d = int(d)
        ref = weight if weight is not None else bias
        self.norm = create("crmsnorm", self.d - 1, eps=eps, elementwise_affine=False)
        if ref is not None:
            self.norm.to(device=ref.device)
        self.weight = nn.Parameter(weight.detach().clone()) if weight is not None else None
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm(x)
        y = torch.cat([n, -n.sum(-1, keepdim=True)], dim=-1)
        return affine(y, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.d - 1} -> {self.d}, affine={self.weight is not None}, bias={self.bias is not None}"


@dataclass
class _Plan:
    converted: dict[str, tuple[int, float]]  # LN name -> (d, eps)
    recenter: dict[str, str]  # module name -> kind (embedding, linear, conv1d)
    consumers: dict[str, list[str] | None]  # LN name -> linear readers (None: not only linears)
    skipped: list[Skipped]


def _plan_conversion(model: nn.Module, graph: Graph) -> _Plan:
    names = module_names(model)
    aliases = alias_count(model)
    lns = [m for m in model.modules() if role(m) == "ln"]
    skipped: list[Skipped] = []
    valid: dict[int, tuple[int, float]] = {}
    for ln in lns:
        chk = layernorm_check(ln)
        if isinstance(chk, str):
            skipped.append(Skipped(names[id(ln)], chk))
        elif aliases.get(id(ln), 1) > 1:
            skipped.append(Skipped(names[id(ln)], "registered under several names"))
        else:
            valid[id(ln)] = chk
    ln_ids = set(valid)

    # Candidate writers: the terms of every LayerNorm input.
    leaves_of: dict[int, list[Node]] = {}
    for ln_id in list(valid):
        calls = graph.calls.get(ln_id, [])
        name = names[ln_id]
        if not calls:
            skipped.append(Skipped(name, f"not called in the traced forward pass ({graph.method})"))
            del valid[ln_id]
            continue
        leaves = []
        for c in calls:
            leaves += Graph.residual_terms(c.inputs[0]) if c.inputs else [c]
        leaves_of[ln_id] = leaves

    cand_ok: dict[int, str | None] = {}
    for leaves in leaves_of.values():
        for leaf in leaves:
            if leaf.kind != "module" or role(leaf.module) not in ("embedding", "linear", "conv1d"):
                continue
            m = leaf.module
            if id(m) in cand_ok:
                continue
            cand_ok[id(m)] = _check_writer(graph, m, ln_ids, aliases)

    plan = _Plan({}, {}, {}, skipped)
    for ln_id, leaves in leaves_of.items():
        name = names[ln_id]
        bad = [leaf for leaf in leaves if leaf.kind != "module" or cand_ok.get(id(leaf.module), "") is not None]
        if bad:
            leaf = bad[0]
            why = cand_ok.get(id(leaf.module)) if leaf.kind == "module" else None
            reason = f"its input (the residual stream) has a term from {describe(leaf)}"
            reason += f", which cannot be recentered: {why}" if why else ", not an embedding or a linear layer"
            skipped.append(Skipped(name, reason))
            continue
        d = valid[ln_id][0]
        dims = {_out_dim(leaf.module) for leaf in leaves}
        if dims != {d}:
            skipped.append(Skipped(name, f"the terms of its input have widths {sorted(dims)}, the norm has {d}"))
            continue
        plan.converted[name] = valid[ln_id]
        for leaf in leaves:
            plan.recenter[names[id(leaf.module)]] = role(leaf.module) or ""
        readers: list[str] | None = []
        for c in graph.calls.get(ln_id, []):
            linears, others = graph.readers(c, is_linear)
            mods = unique_modules([n.module for n in linears])
            if others or not linears or any(len(graph.calls_of(m)) != 1 or aliases.get(id(m), 1) > 1 for m in mods):
                readers = None
                break
            readers += [names[id(m)] for m in mods]
        plan.consumers[name] = readers
    for m_id, why in cand_ok.items():
        if why is not None:
            skipped.append(Skipped(names[m_id], f"not recentered: {why}"))
    return plan


def _out_dim(m: nn.Module) -> int:
    if isinstance(m, nn.Embedding):
        return m.embedding_dim
    if is_hf_conv1d(m):
        return m.weight.shape[1]
    return m.out_features


def _check_writer(graph: Graph, m: nn.Module, ln_ids: set[int], aliases: dict[int, int]) -> str | None:
    """None when every value computed from ``m``'s output reaches only additions and LayerNorms (so that removing
    its per-token mean changes nothing but LayerNorm inputs, by a multiple of the ones vector)."""
    if aliases.get(id(m), 1) > 1:
        return "registered under several names"
    if isinstance(m, nn.Embedding) and m.max_norm is not None:
        return "an Embedding with max_norm (renormalized rows)"
    use = graph.first_other_use(m, lambda u, n: u.kind == "module" and id(u.module) in ln_ids and u.inputs[:1] == [n])
    return None if use is None else f"its output also reaches {describe(use)}"


def _recenter(m: nn.Module) -> None:
    """Subtract from each output vector its mean over the features (embedding rows, linear output columns)."""
    w = m.weight.detach().double()
    if isinstance(m, nn.Embedding) or is_hf_conv1d(m):
        set_param(m, "weight", w - w.mean(1, keepdim=True))  # (num, d) / (in, d)
    else:
        set_param(m, "weight", w - w.mean(0, keepdim=True))  # (d, in)
    b = getattr(m, "bias", None)
    if isinstance(b, Tensor):
        set_param(m, "bias", b.detach().double() - b.detach().double().mean())


def _compress(m: nn.Module) -> None:
    """Keep the first d-1 output features of a recentered writer (the last one is minus their sum)."""
    w = m.weight.detach()
    if isinstance(m, nn.Embedding):
        m.weight = nn.Parameter(w[:, :-1].clone(), requires_grad=m.weight.requires_grad)
        m.embedding_dim -= 1
    elif is_hf_conv1d(m):
        m.weight = nn.Parameter(w[:, :-1].clone(), requires_grad=m.weight.requires_grad)
        m.bias = nn.Parameter(m.bias.detach()[:-1].clone(), requires_grad=m.bias.requires_grad)
        m.nf -= 1
    else:
        m.weight = nn.Parameter(w[:-1].clone(), requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias.detach()[:-1].clone(), requires_grad=m.bias.requires_grad)
        m.out_features -= 1


_WRITER_SIZES = ("embedding_dim", "nf", "out_features")  # what _compress changes


def _untie_from_writers(rw: Rewrite, writers: dict[str, nn.Module]) -> list[str]:
    """Give every other holder of a writer's parameter (a tied LM head) its own copy; returns what was untied."""
    untied: list[str] = []
    users = param_users(rw.model)
    writer_ids = {id(m) for m in writers.values()}
    for name, m in writers.items():
        for p in m._parameters.values():
            if p is None:
                continue
            for oname, other, attr in users.get(id(p), []):
                if other is not m and id(other) not in writer_ids:
                    rw.protect(other, attrs=())
                    other._parameters[attr] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                    untied.append(f"{oname}.{attr} (was tied to {name})")
    config = getattr(rw.model, "config", None)
    if untied and getattr(config, "tie_word_embeddings", False):
        rw.set_attr(config, "tie_word_embeddings", False)
        untied.append("config.tie_word_embeddings = False")
    return untied


def _rms_layer(
    ln: nn.Module, d: int, eps: float, strategy: str, readers: list[str] | None, rw: Rewrite
) -> tuple[nn.Module, str, list[str]]:
    """The layer replacing the LayerNorm ``ln`` under ``strategy`` (folding its affine into ``readers`` for
    ``crms-fold``), its report detail and what was untied."""
    w, b = affine_params(ln)
    ref = w if w is not None else b
    kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    untied: list[str] = []
    if strategy == "rmsnorm":
        if b is not None:
            new: nn.Module = RMSNormWithBias(d, eps=eps, elementwise_affine=w is not None, **kw)
            with torch.no_grad():
                new.bias.copy_(b)
        else:
            new = create("rmsnorm", d, eps=eps, elementwise_affine=w is not None, **kw)
        if w is not None:
            with torch.no_grad():
                new.weight.copy_(w)
        return new, f"eps={eps:g}", untied
    if strategy == "crms-fold" and readers is not None:
        g = w.detach() if w is not None else torch.ones(d, **kw)
        for r in readers:
            reader = rw.model.get_submodule(r)
            if shared_with(rw.model, reader, param_users(rw.model)):
                untied += rw.untie(reader, r)
            rw.protect(reader)
            fold_affine_into_linear(reader, g, b.detach() if b is not None else None, compress=True)
        new = create("crmsnorm", d - 1, eps=eps, elementwise_affine=False, **kw)
        return new, f"d-1={d - 1}, gain/bias and the d-th coordinate folded into {', '.join(readers)}", untied
    return CRMSNormDecompress(d, eps, w, b), f"d-1={d - 1}, the d-th coordinate reconstructed", untied


def _apply_conversion(rw: Rewrite, plan: _Plan, strategy: str) -> tuple[list[Folded], list[str], list[str]]:
    """Untie, recenter, replace the LayerNorms (every edit through ``rw``); returns (converted, recentered,
    untied)."""
    writers = {name: rw.model.get_submodule(name) for name in plan.recenter}
    untied = _untie_from_writers(rw, writers)
    rw.protect(*writers.values(), attrs=_WRITER_SIZES)
    for m in writers.values():
        _recenter(m)
    converted = []
    for name, (d, eps) in plan.converted.items():
        ln = rw.model.get_submodule(name)
        new, detail, more = _rms_layer(ln, d, eps, strategy, plan.consumers.get(name), rw)
        untied += more
        w = affine_params(ln)[0]
        if w is not None and w.requires_grad is False:
            new.requires_grad_(False)
        rw.replace(ln, new)
        converted.append(Folded(name, (type(new).__name__,), detail))
    if strategy != "rmsnorm":
        for m in writers.values():
            _compress(m)
    return converted, list(plan.recenter), untied


def convert_preln_to_rmsnorm(
    model: nn.Module, *, crms: bool = False, inplace: bool = True, example_inputs: Any = None
) -> ConversionReport:
    r"""Convert a Pre-LN transformer into the equivalent Pre-RMSNorm (or Pre-CRMSNorm) one (Jiang, Gu, Zhu & Pan,
    "Pre-RMSNorm and Pre-CRMSNorm Transformers", 2023, arXiv:2305.14858).

    Make the residual stream zero-mean over the hidden dimension :math:`d`, then every LayerNorm reading it sees
    zero-mean input, for which :math:`\mathrm{LN}(x) = x / \sqrt{\overline{x^2} + \epsilon} \odot \gamma + \beta =
    \mathrm{RMSNorm}(x)` (same :math:`\gamma, \beta, \epsilon`):

    - recenter each embedding row (token, position): :math:`E \leftarrow E - \mathrm{mean}_d(E)`;
    - recenter the output projection of every residual branch (attention out-projection, MLP down-projection):
      :math:`W_o \leftarrow W_o - \tfrac1d \mathbf{1}\mathbf{1}^\top W_o`, :math:`b_o \leftarrow b_o -
      \mathrm{mean}(b_o)`;
    - replace each such LayerNorm by normact's ``rmsnorm`` (no bias) or :class:`RMSNormWithBias`.

    The structure is found from the data flow (``torch.fx``, else one recorded forward pass on ``example_inputs``,
    by default two rows of token ids): the terms of each LayerNorm's input, followed back through additions, are
    the residual writers; each must be an ``nn.Embedding``, ``nn.Linear`` or transformers' ``Conv1D`` whose output
    reaches only additions and LayerNorms (for GPT-2: ``wte``, ``wpe``, ``attn.c_proj``, ``mlp.c_proj``; for
    normact's GPT: ``tok``, ``pos``, ``attn.proj``, ``mlp.fc2``). A weight tied to a recentered one (GPT-2's LM
    head and ``wte``) is given its own copy (``report.untied``). LayerNorms whose input is not such a sum are left
    as they are (``report.skipped``); a model with none to convert raises ``ValueError``.

    ``crms=True``: the stream is stored compressed as its first d-1 coordinates (embeddings and writers lose their
    last output feature) and each norm becomes normact's ``crmsnorm``. Where the norm's output is read only by
    linear layers, :math:`\gamma`, :math:`\beta` and the reconstruction of the d-th coordinate are folded into
    them (``"crms-fold"``, the paper's form); if the model's code does not accept that (e.g. normact's GPT
    attention reads the width of its input), the d-th coordinate is reconstructed after the norm
    (:class:`CRMSNormDecompress`, ``"crms-decompress"``). The strategy is chosen by running the example input on
    copies (at most two deep copies of the model), so ``crms=True`` needs example inputs (given or default).

    The model must be in eval mode (dropout would break the zero mean). Exact up to floating point; the report's
    ``max_abs_diff`` is measured on the example input, and a difference above 1e-3 relative raises RuntimeError.
    Not converted: LayerNorms of models whose stream has other terms (post-LN, learned constant offsets...).
    Side effect: hidden states read from inside the stream (``output_hidden_states``) become zero-mean.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("convert_preln_to_rmsnorm needs the model in eval mode (dropout off): call model.eval()")
    graph, failures, inputs = build_graph(model, example_inputs)
    if graph is None:
        raise ValueError(
            "could not find the model's data flow ("
            + "; ".join(failures)
            + "); pass example_inputs for one forward pass"
        )
    plan = _plan_conversion(model, graph)
    if not plan.converted:
        raise ValueError(
            "expected a Pre-LN transformer: LayerNorms (nn.LayerNorm or normact layernorm) whose input is a sum of "
            "embeddings (nn.Embedding) and linear outputs (nn.Linear / Conv1D) read only by additions and "
            "LayerNorms; found none. " + "; ".join(f"{s.name}: {s.reason}" for s in plan.skipped[:4])
        )
    reference = graph.output if graph.method == "trace" else None
    if graph.method == "fx" and inputs is not None:
        with torch.no_grad():
            reference = call_model(model, inputs)
    elif graph.method == "fx":  # a default input, only for the self-check: skipped if the model does not take it
        try:
            with torch.no_grad():
                inputs = default_example(model)
                reference = call_model(model, inputs) if inputs is not None else None
        except Exception:
            inputs, reference = None, None
    strategy = "rmsnorm"
    if crms:
        if reference is None:
            raise ValueError("crms=True needs example_inputs (no default input fits this model)")
        _check_crms_complete(plan, graph, model)
        strategy = _choose_crms(model, plan, inputs, reference)
    target = model if inplace else copy.deepcopy(model)
    before = param_count(target)
    with Rewrite(target) as rw:
        converted, recentered, untied = _apply_conversion(rw, plan, strategy)
        report = ConversionReport(target, graph.method, strategy, converted, recentered, untied, list(plan.skipped))
        if reference is not None:
            hint = "the model's structure was not recognized correctly (the model was restored)"
            report.max_abs_diff = rw.check(inputs, reference, what="the converted model", hint=hint)
    report.params_before, report.params_after = before, param_count(target)
    return report


def _check_crms_complete(plan: _Plan, graph: Graph, model: nn.Module) -> None:
    """CRMS shrinks the whole stream: every LayerNorm it reaches must be converted."""
    names = module_names(model)
    reached = set()
    for name in plan.recenter:
        lns = graph.downstream(model.get_submodule(name), stop=lambda m: role(m) == "ln")
        reached.update(names[id(ln)] for ln in lns)
    missing = sorted(reached - set(plan.converted))
    if missing:
        raise ValueError(
            f"crms=True compresses the whole residual stream, but these LayerNorms reading it cannot be converted: "
            f"{', '.join(missing)}"
        )


def _choose_crms(model: nn.Module, plan: _Plan, inputs: Any, reference: Any) -> str:
    errors = []
    tol = 1e-3 * max(1.0, output_scale(reference))
    for strategy in ("crms-fold", "crms-decompress"):
        if strategy == "crms-fold" and all(r is None for r in plan.consumers.values()):
            continue
        trial = copy.deepcopy(model)
        try:
            _apply_conversion(Rewrite(trial), plan, strategy)
            with torch.no_grad():
                diff = max_abs_diff(call_model(trial, inputs), reference)
        except Exception as e:  # the model's code did not accept the compressed width
            errors.append(f"{strategy}: {type(e).__name__}: {e}"[:200])
            continue
        if diff <= tol:
            return strategy
        errors.append(f"{strategy}: output differs by {diff:.3g}")
    raise ValueError("crms=True is not feasible for this model's code: " + "; ".join(errors))
