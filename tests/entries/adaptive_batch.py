"""Harness entries of alpha-BN (You, Li & Zhao, 2021, arXiv:2110.04065) and AdaB2N (Lyu et al., 2023,
arXiv:2310.08855; official lvyilin/AdaB2N ``models/utils/adab2n.py``).

References are float64 formulas written here without calling normact. AdaB2N's task ids are a conditioning
input (an integer tensor passed as it is); its task-balanced statistics are active only once a task has
ended (``cur_tasks > 0``), so the entry's perturbation sets ``cur_tasks = num_tasks - 1`` (the last task of
the sequence: every task balanced) and a positive eta state (a step after the first).
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from normact.testing.checks import default_perturb
from tests.entries._common import affine, channel_view, module_factor, reduce_dims, running_update, scale_shift


def _moments(x):
    n = x.numel() // x.shape[1]
    mean = x.sum(reduce_dims(x)) / n
    var = ((x - mean.reshape(channel_view(x))) ** 2).sum(reduce_dims(x)) / n
    return mean, var, n


# ----------------------------------------------------------------------------- alpha-BN


def ref_alpha_bn(x, p, hp):
    """Eval: mu = alpha mu_s + (1 - alpha) mu_B, var = alpha var_s + (1 - alpha) var_B (biased test-batch
    variance), y = (x - mu) / sqrt(var + eps) * gamma + beta. Training: torch BatchNorm (running statistics
    with momentum and the unbiased variance)."""
    view, eps, a = channel_view(x), hp["eps"], hp["alpha"]
    mean, var, n = _moments(x)
    if hp["training"]:
        buffers = running_update(p, hp, mean, var * n / (n - 1))
    else:
        mean = a * p["running_mean"] + (1 - a) * mean
        var = a * p["running_var"] + (1 - a) * var
        buffers = None
    y = affine((x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + eps), p, view)
    return (y, buffers) if buffers is not None else y


def _alpha_functional(x, m):
    factor = module_factor(m)
    return NF.alpha_batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, m.training, factor, m.eps, m.alpha)


# ----------------------------------------------------------------------------- AdaB2N


def _eta(p, hp):
    """The official get_eta: kappa = 0 -> 1 / num_batches_tracked; kappa = 1 -> momentum; otherwise
    momentum^kappa at the first step, then eta / (eta + (1 - momentum)^kappa)."""
    m, k = hp["momentum"], hp["kappa"]
    tracked = p["num_batches_tracked"] + 1
    if k == 0:
        return 1.0 / float(tracked), tracked
    if k == 1:
        return m, tracked
    prev = float(p["last_eta"])
    return (prev / (prev + (1 - m) ** k) if prev > 0 else m**k), tracked


def ref_adab2n(x, p, hp, task_ids=None):
    """Training: batch statistics, task-balanced when task ids are given and cur_tasks > 0 (Dirichlet
    concentrations exp(w_t) + n_t over t <= cur_tasks, normalized to p_t; sample weight p_t / n_t on the
    per-sample spatial means and mean squared deviations); running statistics lerped with the modified
    momentum eta (biased variance). Eval: BatchNorm with the running statistics."""
    view, eps = channel_view(x), hp["eps"]
    w, b = p.get("weight"), p.get("bias")
    if not hp["training"]:
        y = (x - p["running_mean"].reshape(view)) / torch.sqrt(p["running_var"].reshape(view) + eps)
        return scale_shift(y, w, b, view)
    mean, var, _ = _moments(x)
    cur = int(p["cur_tasks"])
    if task_ids is not None and p.get("task_weight") is not None and cur > 0:
        k = p["task_weight"].numel()
        counts = torch.tensor([float((task_ids == t).sum()) for t in range(k)], dtype=torch.float64)
        zero = torch.zeros((), dtype=torch.float64)
        conc = torch.stack([p["task_weight"][t].exp() + counts[t] if t <= cur else zero for t in range(k)])
        share = conc / conc.sum()
        sample_w = torch.stack([share[int(t)] / counts[int(t)] for t in task_ids])
        spatial = tuple(range(2, x.dim()))
        xm = x.mean(spatial) if spatial else x
        mean = (sample_w[:, None] * xm).sum(0)
        sq = (x - mean.reshape(view)) ** 2
        var = (sample_w[:, None] * (sq.mean(spatial) if spatial else sq)).sum(0)
    eta, tracked = _eta(p, hp)
    buffers = {
        "running_mean": (1 - eta) * p["running_mean"] + eta * mean,
        "running_var": (1 - eta) * p["running_var"] + eta * var,
        "num_batches_tracked": tracked,
        "last_eta": torch.tensor(eta, dtype=torch.float64),
        "cur_tasks": p["cur_tasks"],
    }
    y = scale_shift((x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + eps), w, b, view)
    return y, buffers


def perturb_adab2n(module, gen):
    """The default perturbation, then the last task of the sequence (every task balanced) and an eta state
    of a step after the first."""
    default_perturb(module, gen)
    with torch.no_grad():
        module.cur_tasks.fill_(module.num_tasks - 1)
        module.last_eta.fill_(0.07)


def _adab2n_functional(x, m, task_ids=None):
    eta = m._eta() if m.training else 0.0
    return NF.adab2n(
        x, m.running_mean, m.running_var, m.weight, m.bias, m.task_weight, task_ids, m.cur_tasks, m.training,
        eta, m.eps,
    )  # fmt: skip


def task_ids(num_tasks):
    """cond_fn: one task id per sample, uniform over the num_tasks tasks."""

    def make(shape, g):
        return {"task_ids": torch.randint(0, num_tasks, (shape[0],), generator=g)}

    return make


# ----------------------------------------------------------------------------- entries

ENTRIES = (
    LayerEntry(
        name="alpha_bn",
        reference=ref_alpha_bn,
        cases=(
            Case(init={"num_features": 4}, shape=(6, 4, 3, 3), offset=0.5, train=False, desc="eval_default_alpha"),
            Case(init={"num_features": 5, "momentum": None}, shape=(8, 5, 3), offset=0.5, desc="train_cumulative"),
            Case(init={"num_features": 4, "alpha": 0.0}, shape=(6, 4, 2, 2), offset=-0.5, train=False, desc="alpha0"),
            Case(init={"num_features": 4, "alpha": 1.0}, shape=(3, 4), offset=0.5, train=False, desc="alpha1"),
            Case(
                init={"num_features": 3, "alpha": 0.5, "affine": False, "eps": 1e-3},
                shape=(2, 3, 2, 2, 2),
                offset=1.0,
                train=False,
                desc="eval_5d_no_affine",
            ),
            Case(init={"num_features": 6, "alpha": 0.3}, shape=(5, 6), offset=0.5, desc="train_2d"),
        ),
        functional=_alpha_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(2, 3, 4, 5)),
        bad_init=({"alpha": -0.1}, {"alpha": 1.5}, {"momentum": 1.5}, {"alpha": float("nan")}),
    ),
    LayerEntry(
        name="adab2n",
        reference=ref_adab2n,
        cases=(
            Case(
                init={"num_features": 4, "num_tasks": 4, "kappa": 0.4},
                shape=(8, 4, 3, 3),
                offset=0.5,
                cond_fn=task_ids(4),
                desc="balanced_kappa0.4",
            ),
            Case(
                init={"num_features": 5, "num_tasks": 3, "momentum": 0.2},
                shape=(9, 5),
                offset=-0.5,
                cond_fn=task_ids(3),
                desc="balanced_2d_ema",
            ),
            Case(
                init={"num_features": 3, "num_tasks": 2, "kappa": 0.7, "affine": False, "init_weight": 0.5},
                shape=(6, 3, 5),
                offset=1.0,
                cond_fn=task_ids(2),
                desc="balanced_3d_no_affine",
            ),
            Case(
                init={"num_features": 4, "num_tasks": 3, "adapt": False, "kappa": 0.0},
                shape=(6, 4, 2, 2),
                offset=0.5,
                desc="no_adapt_cumulative",
            ),
            # eval is BatchNorm with the running statistics: task_weight plays no part there, so (no dead
            # parameter) the case has none; tests/test_adaptive_batch.py checks that eval ignores task ids.
            Case(
                init={"num_features": 4, "num_tasks": 3, "adapt": False},
                shape=(5, 4, 3, 3),
                offset=0.5,
                train=False,
                desc="eval",
            ),
        ),
        functional=_adab2n_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(2, 3, 4), min_batch=2),
        bad_init=(
            {"kappa": -0.1},
            {"kappa": 1.5},
            {"num_tasks": 0},
            {"momentum": None},
            {"momentum": 2.0},
            {"init_weight": float("inf")},
        ),
        perturb=perturb_adab2n,
    ),
)

# (name, shape, kwargs, cond_fn) for tests/test_distributed.py (training steps of fresh layers: AdaB2N's
# cur_tasks is 0 there, so its task-balanced path is checked in 2 processes by tests/test_adaptive_batch.py,
# as is alpha-BN's evaluation).
DISTRIBUTED_CASES = [
    ("alpha_bn", (8, 4, 3, 3), {"momentum": None}, None),
    ("adab2n", (8, 4, 3, 3), {"num_tasks": 3, "kappa": 0.5}, task_ids(3)),
    ("adab2n", (8, 5), {"num_tasks": 2, "adapt": False, "kappa": 0.0, "affine": False}, None),
]
