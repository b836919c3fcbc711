"""Harness entry of MPBN, the LIF neuron with a batch-normalized membrane potential (Guo et al., 2023,
arXiv:2308.08359; official yfguo91/MPBN ``models/spike_layer.py``).

The reference is the paper's recurrence in float64, written here without calling normact:
u_t = tau u_{t-1} (1 - s_{t-1}) + x_t, u_hat_t = BN(u_t) (statistics of each time step in training, running
statistics in eval), s_t = 1[u_hat_t > v_th]. Two properties of the layer shape this entry:

- The spike is a step function trained with a surrogate gradient: the backward is deliberately not the
  gradient of the forward, so ``reference_grad`` gives the gradient the paper's (official code's) surrogate
  defines, computed here by autograd through the same float64 recurrence with the step's derivative replaced
  by the derivative of the official tanh ramp.
- Outputs are 0/1, so the float32/bfloat16/float16 checks compare exactly except at ties u_hat = v_th. The
  case inputs are seeded draws whose normalized potentials all lie at least 1e-3 from the threshold
  (asserted by tests/test_mpbn.py::test_harness_cases_stay_away_from_the_threshold), far beyond the float32
  error of the computation (the layer computes half-precision inputs in float32).

The entry's perturbation also flips the sign of channel 0's BN weight, so that every case covers a negative
gamma (the folded threshold's flipped inequality in eval).
"""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from normact.testing.checks import default_perturb


class _StepWithSurrogate(torch.autograd.Function):
    """Forward 1[u_hat > v_th]; backward the official surrogate: d/du_hat of
    (tanh(k (clamp(z, 0, 1) - 1/2)) + tanh(k/2)) / (2 tanh(k/2)) with z = u_hat / (2 v_th)."""

    @staticmethod
    def forward(ctx, u_hat, v_th, k):
        ctx.save_for_backward(u_hat)
        ctx.v_th, ctx.k = v_th, k
        return (u_hat > v_th).to(u_hat.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u_hat,) = ctx.saved_tensors
        z = u_hat / (2 * ctx.v_th)
        ramp_slope = ctx.k * (1 - torch.tanh(ctx.k * (z - 0.5)) ** 2) / (2 * math.tanh(ctx.k / 2))
        inside = ((z > 0) & (z < 1)).to(u_hat.dtype)
        return grad * inside * ramp_slope / (2 * ctx.v_th), None, None


def simulate(x, p, hp, weight=None, bias=None):
    """The float64 recurrence: (spikes in the input layout, [u_hat_t], buffers after the forward or None).
    ``weight``/``bias`` override the params (for autograd in the gradient reference)."""
    xs = x.transpose(0, 1) if hp["batch_first"] else x
    c = xs.shape[2]
    view = (1, c) + (1,) * (xs.dim() - 3)
    dims = (0, *range(2, xs.dim() - 1))
    w = p.get("weight") if weight is None else weight
    b = p.get("bias") if bias is None else bias
    eps, tau, v_th, k = hp["eps"], hp["tau"], hp["v_th"], hp["temp"]
    mu, var_r, tracked = p["running_mean"], p["running_var"], p["num_batches_tracked"]
    u = torch.zeros_like(xs[0])
    spikes, u_hats = [], []
    for t in range(xs.shape[0]):
        u = tau * u + xs[t]
        if hp["training"]:
            n = u.numel() // c
            m = u.sum(dims) / n
            v = ((u - m.reshape(view)) ** 2).sum(dims) / n
            u_hat = (u - m.reshape(view)) / torch.sqrt(v.reshape(view) + eps)
            tracked = tracked + 1
            f = hp["momentum"] if hp["momentum"] is not None else 1.0 / float(tracked)
            mu = (1 - f) * mu + f * m.detach()
            var_r = (1 - f) * var_r + f * v.detach() * n / (n - 1)
        else:
            u_hat = (u - mu.reshape(view)) / torch.sqrt(var_r.reshape(view) + eps)
        if w is not None:
            u_hat = u_hat * w.reshape(view)
        if b is not None:
            u_hat = u_hat + b.reshape(view)
        s = _StepWithSurrogate.apply(u_hat, v_th, k)
        u_hats.append(u_hat.detach())
        spikes.append(s)
        u = u * (1 - s)
    y = torch.stack(spikes)
    if hp["batch_first"]:
        y = y.transpose(0, 1)
    buffers = {"running_mean": mu, "running_var": var_r, "num_batches_tracked": tracked} if hp["training"] else None
    return y, u_hats, buffers


def ref_mpbn(x, p, hp):
    """Spikes of the LIF recurrence with BN of the membrane potential before the threshold (plus the running
    statistics after T per-step updates in training)."""
    y, _, buffers = simulate(x, p, hp)
    y = y.detach()
    return (y, buffers) if buffers is not None else y


def ref_mpbn_grad(x, grad_out, p, hp):
    """Gradients of <grad_out, spikes> for the input and BN's weight and bias, through the recurrence (reset
    included) with the surrogate derivative in place of the step's."""
    x = x.clone().requires_grad_(True)
    w = p.get("weight")
    b = p.get("bias")
    leaves = [x] + [t.clone().requires_grad_(True) for t in (w, b) if t is not None]
    weight = leaves[1] if w is not None else None
    bias = leaves[2] if b is not None else None
    y, _, _ = simulate(x, p, hp, weight, bias)
    grads = torch.autograd.grad(y, leaves, grad_out)
    out = {"input": grads[0]}
    if w is not None:
        out["weight"], out["bias"] = grads[1], grads[2]
    return out


def perturb(module, gen):
    """The default perturbation, then a negative BN weight on channel 0 (the flipped folded inequality)."""
    default_perturb(module, gen)
    if module.weight is not None:
        with torch.no_grad():
            module.weight[0] = -module.weight[0]


def _functional(x, m):
    return NF.mpbn_lif(
        x, m.weight, m.bias, m.running_mean, m.running_var, m.num_batches_tracked, m.training, m.momentum,
        m.eps, m.tau, m.v_th, m.temp, m.batch_first,
    )  # fmt: skip


_LAYOUT = Layout(feature_arg="num_features", feature_axis=2, ranks=(3, 4, 5), min_batch=2)

CASES = (
    # First case (the shape tests' base): batch first, so that the drawn dim 0 (N) is >= 2 in training.
    Case(init={"num_features": 4, "batch_first": True}, shape=(4, 3, 4, 2, 2), offset=0.5, desc="batch_first"),
    Case(init={"num_features": 5}, shape=(3, 4, 5, 3, 3), offset=0.5, desc="time_first_5d"),
    Case(
        init={"num_features": 6, "momentum": None, "affine": False}, shape=(4, 8, 6), offset=0.3, desc="3d_cumulative"
    ),
    Case(init={"num_features": 4}, shape=(3, 4, 4, 2, 2), offset=0.5, train=False, desc="eval_folded"),
    Case(
        init={"num_features": 3, "tau": 1.0, "v_th": 1.0, "temp": 5.0, "eps": 1e-3},
        shape=(2, 6, 3, 5),
        offset=0.5,
        train=False,
        desc="eval_if_4d",
    ),
    Case(
        init={"num_features": 4, "tau": 0.5, "v_th": 0.35, "momentum": 0.3},
        shape=(1, 12, 4, 5),
        offset=0.2,
        desc="t1_thresholded_bn",
    ),
    Case(
        init={"num_features": 3, "batch_first": True, "affine": False},
        shape=(5, 4, 3, 2),
        offset=0.5,
        train=False,
        desc="eval_batch_first_no_affine",
    ),
)

ENTRIES = (
    LayerEntry(
        name="mpbn",
        reference=ref_mpbn,
        cases=CASES,
        functional=_functional,
        layout=_LAYOUT,
        bad_init=({"tau": -0.1}, {"tau": 1.5}, {"v_th": 0.0}, {"temp": -1.0}, {"momentum": 1.5}),
        perturb=perturb,
        reference_grad=ref_mpbn_grad,
    ),
)

# (name, shape, kwargs, cond_fn): batch first, so that the 2-process test splits the batch (dim 0); the
# generic test builds the layer with shape[1] features, so these shapes use T == C.
DISTRIBUTED_CASES = [
    ("mpbn", (8, 4, 4, 3, 3), {"batch_first": True}, None),
    ("mpbn", (8, 3, 3, 5), {"batch_first": True, "momentum": None, "affine": False}, None),
]
