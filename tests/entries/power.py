"""Harness entry of Power Normalization (Shen, Yao, Gholami, Mahoney & Keutzer, 2020, arXiv:2003.07845):
Algorithm 1 of the paper (quadratic mean, no mean subtraction, running statistic, approximate backward with
the running gradient statistic nu) with the official MaskPowerNorm's warmup, padding mask and GroupScaling1D
(sIncerass/powernorm, fairseq/modules/norms/mask_powernorm.py).

References are float64 formulas written here without calling normact. The layer's backward is, by design,
not the gradient of its forward (the paper's approximation, an affine function of dL/dy), so the entry has a
``reference_grad`` written from the paper's backward equations; for ``approx_backward=False`` cases it gives
the autograd gradient of the float64 reference forward instead (the exact mode, also gradchecked in
tests/test_power.py).

Buffers are perturbed multiplicatively for ``running_phi`` (it must stay positive) and additively for
``ema_gz`` (a nonzero nu exercises the correction term in the first backward pass). Cases with
``warmup_iters=0`` normalize with the running statistic; the default warmup normalizes with the batch's.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from tests.entries._common import affine

# ----------------------------------------------------------------------------- references


def _group_scaling(x, groups, eps):
    """GroupScaling1D: per token, each of `groups` groups of C/groups features over sqrt(mean square + eps)."""
    if groups is None:
        return x
    c = x.shape[-1]
    xg = x.reshape(*x.shape[:-1], groups, c // groups)
    return (xg / torch.sqrt((xg**2).mean(-1, keepdim=True) + eps)).reshape(x.shape)


def _valid(x, pad_mask):
    """(..., 1) float64 indicator of the non-padded positions."""
    if pad_mask is None:
        return torch.ones(*x.shape[:-1], 1, dtype=torch.float64)
    return (~pad_mask).to(torch.float64).unsqueeze(-1)


def _normalizer(u, p, hp, pad_mask):
    """(s^2, psi_B^2, step t) of a training call: psi_B^2 the quadratic mean over the non-padded tokens, s^2
    the batch's while t <= warmup_iters and the running statistic before the update after (Algorithm 1)."""
    t = int(p["iters"]) + 1
    m = _valid(u, pad_mask)
    dims = tuple(range(u.dim() - 1))
    count = float(m.sum())
    psi2 = (u**2 * m).sum(dims) / max(count, 1.0)
    s2 = psi2 if t <= hp["warmup_iters"] else p["running_phi"]
    return s2, psi2, t


def ref_powernorm(x, p, hp, pad_mask=None):
    """y = gamma * u / sqrt(s^2 + eps) + beta (u = x or GroupScaling1D(x)); in training the running statistic
    then moves: phi' = phi (t-1)/t + psi_B^2/t while t < warmup_iters (official warmup), else phi' = phi;
    phi <- alpha_fwd phi' + (1 - alpha_fwd) psi_B^2. Eval: s^2 = running_phi."""
    eps = hp["eps"]
    u = _group_scaling(x, hp["group_num"], eps)
    if not hp["training"]:
        return affine(u / torch.sqrt(p["running_phi"] + eps), p)
    s2, psi2, t = _normalizer(u, p, hp, pad_mask)
    y = affine(u / torch.sqrt(s2 + eps), p)
    phi = p["running_phi"]
    blended = phi * (t - 1) / t + psi2 / t if t < hp["warmup_iters"] else phi
    a = hp["alpha_fwd"]
    buffers = {
        "running_phi": a * blended + (1 - a) * psi2.detach(),
        "ema_gz": p["ema_gz"],  # moves in the backward pass only
        "iters": p["iters"] + 1,
    }
    return y, buffers


def ref_powernorm_grad(x, grad_out, p, hp, pad_mask=None):
    """The paper's backward (Algorithm 1), training with approx_backward: z = u / sqrt(s^2 + eps) with s^2 a
    constant, g = gamma * dL/dy, g' = g - nu * z on the non-padded positions (g on padded ones), nu =
    (1 - alpha_bkw) * ema_gz, dL/du = g' / sqrt(s^2 + eps), then the exact chain rule through GroupScaling1D;
    dL/dgamma = sum dL/dy * z, dL/dbeta = sum dL/dy. Eval and approx_backward=False: the autograd gradient of
    the float64 reference forward."""
    names = [n for n in ("weight", "bias") if p.get(n) is not None]
    if not hp["training"] or not hp["approx_backward"]:
        xg = x.clone().requires_grad_(True)
        params = {**p, **{n: p[n].clone().requires_grad_(True) for n in names}}
        y = ref_powernorm(xg, params, hp, pad_mask)
        y = y[0] if isinstance(y, tuple) else y
        grads = torch.autograd.grad(y, [xg, *[params[n] for n in names]], grad_out)
        return dict(zip(["input", *names], grads, strict=True))
    eps = hp["eps"]
    xg = x.clone().requires_grad_(True)
    u = _group_scaling(xg, hp["group_num"], eps)
    s2, _, _ = _normalizer(u.detach(), p, hp, pad_mask)
    root = torch.sqrt(s2 + eps)
    z = u.detach() / root
    dims = tuple(range(x.dim() - 1))
    g = grad_out * p["weight"] if p.get("weight") is not None else grad_out
    nu = (1 - hp["alpha_bkw"]) * p["ema_gz"]
    g_prime = g - nu * z * _valid(x, pad_mask)
    du = g_prime / root
    (dx,) = torch.autograd.grad(u, xg, du) if hp["group_num"] is not None else (du,)
    out = {"input": dx}
    if "weight" in names:
        out["weight"] = (grad_out * z).sum(dims)
    if "bias" in names:
        out["bias"] = grad_out.sum(dims)
    return out


# ----------------------------------------------------------------------------- helpers


def pad_mask_fn(shape, g):
    """A padding mask for an (N, C) or (N, L, C) input: about 30% True (padding), the first token kept."""
    mask = torch.rand(tuple(shape[:-1]), generator=g) < 0.3
    mask.reshape(-1)[0] = False
    return {"pad_mask": mask}


def _perturb(module, g):
    with torch.no_grad():
        for prm in module.parameters():
            prm.add_(0.3 * torch.randn(prm.shape, generator=g, dtype=torch.float64).to(prm))
        module.running_phi.mul_((0.3 * torch.randn(module.running_phi.shape, generator=g, dtype=torch.float64)).exp())
        module.ema_gz.add_(0.3 * torch.randn(module.ema_gz.shape, generator=g, dtype=torch.float64).to(module.ema_gz))


def _functional(x, m, pad_mask=None):
    step = None
    if m.training:
        m.iters.add_(1)
        step = m.iters
    return NF.power_norm(
        x, m.running_phi, m.ema_gz, m.weight, m.bias, m.training, step, m.warmup_iters, m.alpha_fwd,
        m.alpha_bkw, m.eps, m.group_num, pad_mask, m.approx_backward,
    )  # fmt: skip


# ----------------------------------------------------------------------------- entry

ENTRIES = (
    LayerEntry(
        name="powernorm",
        reference=ref_powernorm,
        reference_grad=ref_powernorm_grad,
        cases=(
            # Warmup (batch quadratic mean), padding mask.
            Case(init={"num_features": 6}, shape=(4, 5, 6), offset=0.5, cond_fn=pad_mask_fn, desc="warmup_masked"),
            # After warmup: the running statistic normalizes.
            Case(init={"num_features": 6, "warmup_iters": 0}, shape=(4, 5, 6), offset=0.5, desc="after_warmup"),
            Case(
                init={"num_features": 8, "group_num": 2, "warmup_iters": 0, "alpha_fwd": 0.5, "alpha_bkw": 0.7},
                shape=(3, 4, 8),
                offset=-0.5,
                cond_fn=pad_mask_fn,
                desc="group_scaling_after_warmup_masked",
            ),
            # t = 1 < warmup_iters: the cumulative-average blend of the official warmup.
            Case(
                init={"num_features": 5, "affine": False, "warmup_iters": 3, "alpha_fwd": 0.6},
                shape=(6, 5),
                offset=1.0,
                desc="2d_no_affine_warmup_blend",
            ),
            # t = warmup_iters: batch statistics, plain exponential update.
            Case(
                init={"num_features": 4, "warmup_iters": 1, "alpha_fwd": 0.0, "alpha_bkw": 0.0},
                shape=(2, 3, 4),
                offset=0.3,
                cond_fn=pad_mask_fn,
                desc="last_warmup_step_alpha_0",
            ),
            Case(
                init={"num_features": 6, "approx_backward": False, "eps": 1e-3},
                shape=(4, 5, 6),
                offset=0.5,
                cond_fn=pad_mask_fn,
                desc="exact_warmup_masked",
            ),
            Case(
                init={"num_features": 6, "approx_backward": False, "warmup_iters": 0, "group_num": 3},
                shape=(3, 4, 6),
                desc="exact_after_warmup_group_scaling",
            ),
            Case(init={"num_features": 6}, shape=(4, 5, 6), offset=0.5, train=False, cond_fn=pad_mask_fn, desc="eval"),
            Case(
                init={"num_features": 8, "group_num": 4, "eps": 1e-3},
                shape=(5, 8),
                offset=-1.0,
                train=False,
                desc="eval_2d_group_scaling",
            ),
        ),
        functional=_functional,
        layout=Layout(feature_arg="num_features", feature_axis=-1, ranks=(2, 3)),
        perturb=_perturb,
        bad_init=(
            {"alpha_fwd": 1.5},
            {"alpha_bkw": -0.1},
            {"warmup_iters": -1},
            {"warmup_iters": 2.5},
            {"group_num": 0},
            {"group_num": 7},
        ),
    ),
)

# (name, shape, kwargs, cond_fn): shape[1] is the feature count the 2-process test builds the layer with, so the
# (N, L, C) shapes have L = C. warmup_iters=1: step 1 uses the batch statistic, step 2 the synced running one.
DISTRIBUTED_CASES = [
    ("powernorm", (8, 6), {"warmup_iters": 1}, None),
    ("powernorm", (8, 5, 5), {"warmup_iters": 1}, pad_mask_fn),
    ("powernorm", (8, 4, 4), {"group_num": 2, "alpha_fwd": 0.5, "warmup_iters": 3}, pad_mask_fn),
    ("powernorm", (8, 4, 4), {"approx_backward": False}, pad_mask_fn),
    ("powernorm", (8, 6, 6), {}, None),
]
