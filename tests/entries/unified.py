"""Harness entry of Unified Normalization (Yang, Zhang, Lan, et al., 2022, arXiv:2208.01313), written from the
paper and the official UN1d / UN2dFunction (hikvision-research/Unified-Normalization,
image_classification/models/unified_normalization/unified_normalization.py; the translation copy is identical).

References are float64 formulas written here without calling normact. Conventions shared with the layer
(documented in its docstring): the windows are shift registers with the newest row last, ``momentum`` is
torch's (the weight of the new value; the official 0.9 is the weight of the old one), the outlier test
starts at t > window, and with a padding mask the backward statistic sums g*z over all tokens, divides by
the unpadded count and corrects only unpadded tokens.

The backward pass is deliberately not the gradient of the forward (the paper's gradient compensation), so
the entry gives ``reference_grad``: the official backward equations for ``gradient_compensation=True``, and
autograd through this float64 reference for ``gradient_compensation=False`` and for eval mode.

``_perturb`` moves the parameters and buffers away from their initial values and sets the iteration
counter to 2000, so that cases with ``warmup_iters=0`` run the full algorithm (geometric-mean smoothing,
the ratio r, the windowed/EMA backward statistic) and cases with the default warm-up (4000) the warm-up
path. Iteration 1 from the initial state is covered by tests/test_unified.py.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import affine

RATIO_WARMUP = 1000  # official: r = 1 while t <= max(1000, warmup_iters)
RATIO_BOUND = 5.0  # official: torch.clamp(r, 1/5, 5)
ITERATION = 2000  # the counter _perturb sets


def _sizes(window_size):
    return (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)


def forward_state(x, p, hp, pad_mask=None):
    """The training forward of UN1d/UN2dFunction in float64 (differentiable in x and the parameters); returns
    the output and a dict of the intermediate quantities and updated buffers."""
    eps, m, warmup = hp["eps"], hp["momentum"], hp["warmup_iters"]
    w_f, _ = _sizes(hp["window_size"])
    c = x.shape[-1]
    t = int(p["num_batches_tracked"]) + 1
    flat = x.reshape(-1, c)
    keep = torch.ones(flat.shape[0], dtype=torch.bool) if pad_mask is None else ~pad_mask.reshape(-1)
    tokens = flat[keep]  # official: mask_input = x[~pad_mask, :]
    x2 = (tokens**2).sum(0) / max(tokens.shape[0], 1)
    window, rv = p["x2_window"], p["running_var"]
    skip = w_f <= 1  # official: skip = False if fp_buffer_size > 1 else True
    filtered = False
    newest = x2
    if hp["outlier_filtration"] and w_f > 1 and t >= warmup and t > w_f:
        recorded = torch.var(torch.sqrt(window))  # variance of the sequence {sqrt(x2)} before the update
        candidate = torch.cat([window[1:], x2.detach()[None]])
        am = candidate.mean(0)
        gm = torch.exp(torch.log(candidate).mean(0))
        if bool(((am - gm) > recorded * w_f).any()):
            newest, skip, filtered = rv, True, True
    new_window = torch.cat([window[1:], newest[None]])
    # the batch statistic, or the geometric mean of the window (x2 included)
    var = x2 if t <= w_f or t < warmup or skip else torch.exp(torch.log(new_window).mean(0))
    if t <= max(RATIO_WARMUP, warmup) or skip:
        r = torch.ones(c, dtype=x.dtype)
    else:
        r = (torch.sqrt(var.detach() + eps) / torch.sqrt(rv + eps)).clamp(1 / RATIO_BOUND, RATIO_BOUND)
    z = x / torch.sqrt(var + eps)
    buffers = {
        "running_var": (1 - m) * rv + m * var.detach(),
        "x2_window": new_window.detach(),
        "num_batches_tracked": torch.tensor(t),
        "num_skipped": p["num_skipped"] + int(filtered),
    }
    state = {"t": t, "skip": skip, "r": r, "var": var.detach(), "z": z.detach(), "keep": keep, "count": keep.sum()}
    return affine(z, p), state, buffers


def ref_unified_norm(x, p, hp, pad_mask=None):
    """Eval: x / sqrt(running_var + eps) * weight + bias. Training: the official forward (see forward_state)."""
    if not hp["training"]:
        return affine(x / torch.sqrt(p["running_var"] + hp["eps"]), p)
    y, _, buffers = forward_state(x, p, hp, pad_mask)
    return y, buffers


def reference_backward(x, grad_out, p, hp, pad_mask=None):
    """The gradients (and, for the compensated backward, the updated ``ema_gz`` / ``gz_window``).

    Compensated (official UN2dFunction.backward): g = dy * weight * r; psi = sum(g * z) / count; the window
    receives ema_gz (skipped batch) or psi; psi_bar = psi while t <= W_b, t < warmup or skipped, else the
    window mean; ema_gz <- (1 - m) ema_gz + m psi_bar; dx = (g - nu z) / sqrt(var + eps), nu = psi_bar for
    a skipped batch else the new ema_gz; dweight = sum(dy * r * z); dbias = sum(dy)."""
    names = [n for n in ("weight", "bias") if p.get(n) is not None]
    if not hp["training"] or not hp["gradient_compensation"]:
        xg = x.detach().clone().requires_grad_(True)
        pg = {k: (v.detach().clone().requires_grad_(True) if k in names else v) for k, v in p.items()}
        y = ref_unified_norm(xg, pg, hp, pad_mask)
        y = y[0] if isinstance(y, tuple) else y
        grads = torch.autograd.grad(y, [xg, *[pg[n] for n in names]], grad_out)
        return dict(zip(["input", *names], grads, strict=True)), {}
    _, s, _ = forward_state(x.detach(), p, hp, pad_mask)
    m, warmup = hp["momentum"], hp["warmup_iters"]
    _, w_b = _sizes(hp["window_size"])
    c = x.shape[-1]
    z, r, t, skip = s["z"], s["r"], s["t"], s["skip"]
    w = p.get("weight")
    g = (grad_out * w if w is not None else grad_out) * r
    psi = (g * z).reshape(-1, c).sum(0) / s["count"].clamp(min=1)
    ema = p["ema_gz"]
    window = torch.cat([p["gz_window"][1:], (ema if skip else psi)[None]])
    psi_bar = psi if (t <= w_b or t < warmup or skip) else window.mean(0)
    ema_new = (1 - m) * ema + m * psi_bar
    nu = psi_bar if skip else ema_new
    keep = s["keep"].reshape((*x.shape[:-1], 1)).to(x.dtype)
    grads = {"input": (g - nu * z * keep) / torch.sqrt(s["var"] + hp["eps"])}
    dims = tuple(range(x.dim() - 1))
    if "weight" in names:
        grads["weight"] = (grad_out * r * z).sum(dims)
    if "bias" in names:
        grads["bias"] = grad_out.sum(dims)
    return grads, {"ema_gz": ema_new, "gz_window": window}


def ref_grad_unified_norm(x, grad_out, p, hp, pad_mask=None):
    return reference_backward(x, grad_out, p, hp, pad_mask)[0]


def _perturb(module, gen):
    """Parameters + N(0, 0.3^2); running_var * exp(N(0, 0.3^2)); x2_window near the inputs' mean square
    (2.5 * exp(N(0, 0.1^2)), positive); gz_window and ema_gz N(0, 0.3^2); iteration counter 2000."""
    with torch.no_grad():
        for prm in module.parameters():
            prm.add_(0.3 * torch.randn(prm.shape, generator=gen, dtype=torch.float64).to(prm))
        module.running_var.mul_(
            (0.3 * torch.randn(module.running_var.shape, generator=gen, dtype=torch.float64))
            .exp()
            .to(module.running_var)
        )
        module.x2_window.copy_(
            2.5 * (0.1 * torch.randn(module.x2_window.shape, generator=gen, dtype=torch.float64)).exp()
        )
        module.gz_window.copy_(0.3 * torch.randn(module.gz_window.shape, generator=gen, dtype=torch.float64))
        module.ema_gz.copy_(0.3 * torch.randn(module.ema_gz.shape, generator=gen, dtype=torch.float64))
        module.num_batches_tracked.fill_(ITERATION)


def _functional(x, m, pad_mask=None):
    return NF.unified_norm(
        x, m.running_var, m.x2_window, m.gz_window, m.ema_gz, m.num_batches_tracked, m.num_skipped,
        m.weight, m.bias, pad_mask=pad_mask, training=m.training, momentum=m.momentum, eps=m.eps,
        warmup_iters=m.warmup_iters, outlier_filtration=m.outlier_filtration,
        gradient_compensation=m.gradient_compensation,
    )  # fmt: skip


def pad_mask_fn(shape, gen):
    """About a third of the tokens padded (True), the first token of every sample kept."""
    mask = torch.rand(tuple(shape[:-1]), generator=gen) < 0.35
    if mask.dim() == 2:
        mask[:, 0] = False
    else:
        mask[0] = False
    return {"pad_mask": mask}


_LAYOUT = Layout(feature_arg="num_features", feature_axis=-1, ranks=(2, 3))
_FULL = {"warmup_iters": 0}  # t = 2001 past every warm-up: smoothing, r and the windowed backward active

ENTRIES = (
    LayerEntry(
        name="unified_norm",
        reference=ref_unified_norm,
        reference_grad=ref_grad_unified_norm,
        cases=(
            Case(init={"num_features": 6}, shape=(4, 5, 6), offset=0.5, desc="warmup"),
            Case(init={"num_features": 6, **_FULL}, shape=(4, 5, 6), offset=0.5, desc="smoothing"),
            Case(
                init={"num_features": 5, **_FULL, "window_size": (3, 2), "momentum": 0.3},
                shape=(16, 5),
                offset=0.5,
                desc="2d_window_pair",
            ),
            Case(
                init={"num_features": 6, **_FULL},
                shape=(4, 7, 6),
                offset=0.5,
                cond_fn=pad_mask_fn,
                desc="pad_mask",
            ),
            # x2 ~ 36 against a window near 2.5: the batch is an outlier and skipped
            Case(
                init={"num_features": 4, **_FULL, "outlier_filtration": True},
                shape=(6, 8, 4),
                scale=6.0,
                desc="outlier_skipped",
            ),
            # x2 near the window's values: no outlier, the smoothed statistic is used
            Case(
                init={"num_features": 4, **_FULL, "outlier_filtration": True},
                shape=(16, 16, 4),
                desc="outlier_kept",
            ),
            Case(
                init={"num_features": 6, **_FULL, "gradient_compensation": False},
                shape=(4, 7, 6),
                offset=0.5,
                cond_fn=pad_mask_fn,
                desc="no_compensation",
            ),
            Case(
                init={"num_features": 6, **_FULL, "window_size": 1, "affine": False},
                shape=(4, 5, 6),
                offset=0.5,
                desc="window1_no_affine",
            ),
            Case(init={"num_features": 6}, shape=(4, 5, 6), offset=0.5, train=False, desc="eval"),
            Case(
                init={"num_features": 6, **_FULL},
                shape=(4, 7, 6),
                offset=0.5,
                train=False,
                cond_fn=pad_mask_fn,
                desc="eval_pad_mask",
            ),
        ),
        functional=_functional,
        layout=_LAYOUT,
        perturb=_perturb,
        bad_init=(
            {"num_features": 4, "window_size": 0},
            {"num_features": 4, "window_size": (2,)},
            {"num_features": 4, "window_size": (2, 0)},
            {"num_features": 4, "window_size": 2.5},
            {"num_features": 4, "warmup_iters": -1},
            {"num_features": 4, "momentum": 1.5},
            {"num_features": 4, "momentum": -0.1},
        ),
    ),
)

DISTRIBUTED_CASES = [
    # two steps from the initial state: batch statistics, the EMA-compensated backward (psi synced)
    ("unified_norm", (8, 6), {"warmup_iters": 0}, None),
    ("unified_norm", (8, 5, 5), {"warmup_iters": 0}, pad_mask_fn),
    ("unified_norm", (8, 4, 4), {"warmup_iters": 0, "gradient_compensation": False}, pad_mask_fn),
    ("unified_norm", (8, 4, 4), {"window_size": 1, "momentum": 0.3}, pad_mask_fn),
]
