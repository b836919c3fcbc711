"""Harness entry of ``gpas_block`` (TransformerBlock with GPAS after each residual sum, Chen et al., 2025,
arXiv:2506.22049). The float64 reference rebuilds the block from its parameters with the float64 pieces of
tests/entries/block.py and writes GPAS out, G(t) = t - SiLU(alpha) sg(t) with sg = detach. GPAS's backward is
deliberately not the derivative of its forward (dG/dt = I, not (1 - SiLU(alpha)) I), so gradcheck against finite
differences does not apply: ``reference_grad`` differentiates the float64 reference (with its own stop-gradient)
instead."""

from __future__ import annotations

import math

import torch

from normact.testing import Case, LayerEntry
from tests.entries.block import (
    BAD_INIT,
    BASE,
    BLOCK,
    SHAPE,
    TOLERANCES,
    _attention,
    _ffn,
    _norm,
    functional_block,
    padding,
)


def _silu(a):
    return a / (1.0 + torch.exp(-a))


def _gpas(t, alpha):
    """G(t) = t - SiLU(alpha) sg(t)."""
    return t - _silu(alpha) * t.detach()


def ref_gpas_block(x, p, hp, *, mask=None):
    """Pre / Peri: GPAS after each residual sum; Post / DeepNorm: GPAS on the shortcut before the post-norm (the
    official code's deeppost_gpas)."""
    placement = hp["placement"]
    ga, gm = p["attn_gpas.alpha"], p["mlp_gpas.alpha"]

    def n(name, h):
        return _norm(h, p, name, hp)

    def a(h):
        return _attention(h, p, hp, mask)

    def m(h):
        return _ffn(h, p, hp)

    if placement == "pre":
        h = _gpas(x + a(n("attn_norm", x)), ga)
        y = _gpas(h + m(n("mlp_norm", h)), gm)
    elif placement == "peri":
        h = _gpas(x + n("attn_out_norm", a(n("attn_norm", x))), ga)
        y = _gpas(h + n("mlp_out_norm", m(n("mlp_norm", h))), gm)
    elif placement in ("post", "deepnorm"):
        alpha = 1.0
        if placement == "deepnorm":
            alpha = hp["deepnorm_alpha"] or (2.0 * hp["depth"]) ** 0.25
        h = n("attn_norm", alpha * _gpas(x, ga) + a(x))
        y = n("mlp_norm", alpha * _gpas(h, gm) + m(h))
    elif placement == "layernorm_scaling":
        s = 1.0 / math.sqrt(hp["layer_index"])
        h = _gpas(x + a(n("attn_norm", x) * s), ga)
        y = _gpas(h + m(n("mlp_norm", h) * s), gm)
    else:
        raise AssertionError(placement)
    return n("final_norm", y) if hp["final_norm"] else y


def ref_gpas_block_grad(x, grad_out, p, hp, *, mask=None):
    """The gradients GPAS's backward gives: autograd through the float64 reference and its stop-gradient."""
    xg = x.clone().requires_grad_(True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items() if v is not None and v.is_floating_point()}
    y = ref_gpas_block(xg, {**p, **leaves}, hp, mask=mask)
    names = list(leaves)
    grads = torch.autograd.grad(y, [xg, *leaves.values()], grad_out, allow_unused=True)
    out = {"input": grads[0]}
    for name, g in zip(names, grads[1:], strict=True):
        out[name] = torch.zeros_like(leaves[name]) if g is None else g
    return out


ENTRIES = [
    LayerEntry(
        name="gpas_block",
        reference=ref_gpas_block,
        reference_grad=ref_gpas_block_grad,
        cases=tuple(
            Case(init={**BASE, **c.init}, shape=c.shape, desc=c.desc, cond_fn=c.cond_fn)
            for c in (
                Case(shape=SHAPE),
                Case(init={"final_norm": True, "causal": True}, shape=SHAPE, desc="final_causal", cond_fn=padding),
                Case(init={"norm": "rmsnorm", "act": "swiglu"}, shape=SHAPE, desc="rms_swiglu"),
                Case(init={"placement": "peri"}, shape=SHAPE, desc="sandwich"),
                Case(init={"placement": "deepnorm", "depth": 4}, shape=SHAPE, desc="deepnorm"),
                Case(init={"placement": "layernorm_scaling", "depth": 3, "layer_index": 3}, shape=SHAPE, desc="lns"),
            )
        ),
        functional=functional_block,
        layout=BLOCK,
        tolerances=TOLERANCES,
        bad_init=(*BAD_INIT, {"gpas": 1}),
    )
]
