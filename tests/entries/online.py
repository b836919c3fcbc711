"""Harness entry of Online Normalization (Chiley et al., 2019, arXiv:1905.05894).

The reference runs the paper's recurrences literally, one sample after the other in batch order (as the
official C++ kernel ``norm_fwd_cpu`` loops), in float64. The backward of the layer is deliberately not the
derivative of its forward (the paper's control process with the accumulators e^(y), e^(1)), so the entry has
a ``reference_grad`` written from the backward equations (official ``norm_backward`` / ``norm_bwd_cpu``) in
place of gradcheck; the affine and layer scaling are differentiated exactly (autograd on the reference's own
float64 ops). Evaluation cases are an affine map (plus layer scaling), differentiated exactly as well.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def _view(x):
    return (1, -1) + (1,) * (x.dim() - 2)


def _sample_stats(xt):
    """Mean and biased variance of one sample (C, *) per channel over its positions."""
    flat = xt.reshape(xt.shape[0], -1)
    m = flat.mean(-1)
    return m, ((flat - m[:, None]) ** 2).mean(-1)


def _streams(x, p, hp):
    """Per sample t the (mu_{t-1}, sigma^2_{t-1}) it is normalized by, and the final streams."""
    a = hp["alpha_fwd"]
    mu, var = p["running_mean"].clone(), p["running_var"].clone()
    centers, variances = [], []
    for t in range(x.shape[0]):
        centers.append(mu)
        variances.append(var)
        m, v = _sample_stats(x[t])
        var = a * var + (1 - a) * v + a * (1 - a) * (m - mu) ** 2
        mu = a * mu + (1 - a) * m
    return torch.stack(centers), torch.stack(variances), mu, var


def _head(y, p, hp):
    """Affine, then optional layer scaling (per sample over all non-batch dims)."""
    view = _view(y)
    if p.get("weight") is not None:
        y = y * p["weight"].reshape(view)
    if p.get("bias") is not None:
        y = y + p["bias"].reshape(view)
    if hp["layer_scaling"]:
        dims = tuple(range(1, y.dim()))
        y = y / torch.sqrt((y**2).mean(dims, keepdim=True) + hp["eps"])
    return y


def _normalized(x, p, hp):
    eps = hp["eps"]
    if not hp["training"]:
        view = _view(x)
        return (x - p["running_mean"].reshape(view)) / torch.sqrt(p["running_var"].reshape(view) + eps), None
    centers, variances, mu, var = _streams(x, p, hp)
    view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    y = (x - centers.reshape(view)) / torch.sqrt(variances.reshape(view) + eps)
    return y, (torch.sqrt(variances + eps), mu, var)


def ref_online_norm(x, p, hp):
    """y_t = (x_t - mu_{t-1}) / sqrt(sigma^2_{t-1} + eps), streams updated per sample in batch order; then the
    affine and optional layer scaling. Eval: the frozen streams."""
    y, extra = _normalized(x, p, hp)
    out = _head(y, p, hp)
    if extra is None:
        return out
    _, mu, var = extra
    return out, {"running_mean": mu, "running_var": var}


def ref_online_norm_grad(x, grad_out, p, hp):
    """The paper's backward, sample by sample in batch order (official norm_backward):
    x'_t = y'_t - (1 - a_b) e^y_{t-1} y_t;  e^y_t = e^y_{t-1} + mean(x'_t * y_t);
    x''_t = x'_t / sigma_{t-1} - (1 - a_b) e^1_{t-1};  e^1_t = e^1_{t-1} + mean(x''_t)   (means over positions).
    In eval, and for the affine and layer scaling, the exact gradient."""
    y, extra = _normalized(x, p, hp)
    names = [n for n in ("weight", "bias") if p.get(n) is not None]
    leaves = {n: p[n].clone().requires_grad_(True) for n in names}
    yl = y.detach().clone().requires_grad_(True)
    out = _head(yl, {**p, **leaves}, hp)
    grads = torch.autograd.grad(out, [yl, *leaves.values()], grad_out)
    gy = grads[0]
    result = dict(zip(names, grads[1:], strict=True))
    if extra is None:
        view = _view(x)
        result["input"] = gy / torch.sqrt(p["running_var"].reshape(view) + hp["eps"])
        return result
    sigma = extra[0]
    k = 1 - hp["alpha_bkw"]
    ey, e1 = p["error_y"].clone(), p["error_1"].clone()
    gx = torch.empty_like(x)
    n, c = x.shape[0], x.shape[1]
    for t in range(n):
        yt = y[t].reshape(c, -1)
        x1 = gy[t].reshape(c, -1) - k * ey[:, None] * yt
        ey = ey + (x1 * yt).mean(-1)
        x2 = x1 / sigma[t][:, None] - k * e1[:, None]
        e1 = e1 + x2.mean(-1)
        gx[t] = x2.reshape(x[t].shape)
    result["input"] = gx
    return result


def _functional(x, m):
    return NF.online_norm(
        x, m.running_mean, m.running_var, m.error_1, m.error_y, m.weight, m.bias, m.training,
        m.alpha_fwd, m.alpha_bkw, m.eps, m.layer_scaling,
    )  # fmt: skip


ENTRIES = (
    LayerEntry(
        name="online_norm",
        reference=ref_online_norm,
        reference_grad=ref_online_norm_grad,
        cases=(
            Case(init={"num_features": 6}, shape=(5, 6, 3, 3), offset=0.5, desc="default"),
            # fast streams: later samples are normalized by statistics dominated by earlier samples
            Case(init={"num_features": 5, "alpha_fwd": 0.6, "alpha_bkw": 0.7}, shape=(7, 5), offset=-1.0, desc="2d"),
            Case(
                init={"num_features": 4, "alpha_fwd": 0.8, "affine": False, "layer_scaling": True, "eps": 1e-3},
                shape=(4, 4, 6),
                offset=1.0,
                desc="3d_layer_scaling_no_affine",
            ),
            Case(
                init={"num_features": 6, "alpha_fwd": 0.9, "alpha_bkw": 0.9, "layer_scaling": True},
                shape=(3, 6, 2, 3),
                desc="4d_layer_scaling",
            ),
            Case(init={"num_features": 4, "alpha_fwd": 0.5}, shape=(1, 4, 3, 3), offset=2.0, desc="batch_1"),
            Case(init={"num_features": 6}, shape=(4, 6, 3, 3), offset=0.5, train=False, desc="eval"),
            Case(
                init={"num_features": 5, "layer_scaling": True},
                shape=(3, 5),
                offset=-0.5,
                train=False,
                desc="eval_2d_layer_scaling",
            ),
        ),
        functional=_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(2, 3, 4), min_batch=1),
        bad_init=({"alpha_fwd": 1.5}, {"alpha_fwd": -0.1}, {"alpha_bkw": 2.0}, {"alpha_bkw": float("nan")}),
    ),
)

DISTRIBUTED_CASES = [
    ("online_norm", (8, 4, 3, 3), {"alpha_fwd": 0.7, "alpha_bkw": 0.8}, None),
    ("online_norm", (8, 5), {"layer_scaling": True}, None),
    ("online_norm", (8, 3, 5), {"affine": False, "alpha_fwd": 0.5}, None),
]
