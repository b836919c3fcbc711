"""Harness entries of the adaptive activations: APA and AGLU (Alexandridis et al., 2024, arXiv:2407.08567;
official kostas1515/AGLU), the trainable diagonal matrix activation (Liu, Cao, Li & Zikatanov, 2021,
arXiv:2109.09948) and Dice (Zhou et al., 2018, arXiv:1706.06978). References are the papers' formulas in
float64, written without calling normact.

Dice is batch-dependent: in training its reference computes the batch mean and biased variance per channel
(dim 1) and returns the running statistics expected after the step (BatchNorm's update, unbiased variance);
``DISTRIBUTED_CASES`` runs it in 2 processes against 1 (tests/test_distributed.py)."""

from __future__ import annotations

import math

import mpmath as mp
import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout, Numerics, Setting

ANY = Layout(min_rank=0)
LAMBDA_MIN = 1e-4  # the official code's clamp of lambda (kostas1515/AGLU README)


def _channel(p, x, hp):
    if p.dim() == 0:
        return p
    axis = hp["channel_axis"] % x.dim()
    return p.reshape((-1,) + (1,) * (x.dim() - axis - 1))


def _apa(x, p, hp):
    """(lambda exp(-kappa x) + 1)^(-1/lambda), lambda clamped at 1e-4 as in the official code."""
    kappa = _channel(p["kappa"], x, hp)
    lam = torch.clamp(_channel(p["lambda_"], x, hp), min=LAMBDA_MIN)
    return (lam * torch.exp(-kappa * x) + 1) ** (-1 / lam)


def ref_apa(x, p, hp):
    return _apa(x, p, hp)


def ref_aglu(x, p, hp):
    return x * _apa(x, p, hp)


def ref_matrix_activation(x, p, hp):
    """sigma(x) = t_k x on [s_k, s_{k+1}), s_0 = -inf, s_{K+1} = +inf; levels per channel or shared."""
    levels = p["levels"]
    edges = [-math.inf, *hp["breakpoints"], math.inf]
    y = torch.zeros_like(x)
    for k in range(len(edges) - 1):
        t = levels[..., k]
        if t.dim() > 0:
            t = _channel(t, x, hp)
        inside = (x >= edges[k]) & (x < edges[k + 1])
        y = y + torch.where(inside, t * x, torch.zeros_like(x))
    return y


def ref_dice(x, p, hp):
    """p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps)), f(s) = p s + (1 - p) alpha s; batch mean and biased
    variance over (N, *trailing) per channel in training, then the running averages (unbiased variance,
    momentum or cumulative); the running statistics in eval."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    dims = (0, *range(2, x.dim()))
    alpha = p["alpha"].reshape(view)
    buffers = None
    if hp["training"]:
        n = x.numel() // x.shape[1]
        mean = x.sum(dims) / n
        var = ((x - mean.reshape(view)) ** 2).sum(dims) / n
        tracked = p["num_batches_tracked"] + 1
        m = hp["momentum"] if hp["momentum"] is not None else 1.0 / float(tracked)
        buffers = {
            "running_mean": (1 - m) * p["running_mean"] + m * mean,
            "running_var": (1 - m) * p["running_var"] + m * var * n / (n - 1),
            "num_batches_tracked": tracked,
        }
    else:
        mean, var = p["running_mean"], p["running_var"]
    gate = 1 / (1 + torch.exp(-(x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + hp["eps"])))
    y = gate * x + (1 - gate) * alpha * x
    return (y, buffers) if buffers is not None else y


# mpmath references (tests/test_numerics.py): the papers' formulas at 40 digits, for the tails and the
# derivatives at switch points.


def mp_apa(x, p, hp):
    lam = max(p["lambda_"], mp.mpf(LAMBDA_MIN))
    return (lam * mp.exp(-p["kappa"] * x) + 1) ** (-1 / lam)


def mp_matrix_activation(x, p, hp):
    edges = [-mp.inf, *(mp.mpf(s) for s in hp["breakpoints"]), mp.inf]
    k = next(k for k in range(len(edges) - 1) if edges[k] <= x < edges[k + 1])
    return p["levels"][k] * x


def mp_dice(x, p, hp):
    z = (x - p["running_mean"][0]) / mp.sqrt(p["running_var"][0] + mp.mpf(hp["eps"]))
    gate = 1 / (1 + mp.exp(-z))
    return gate * x + (1 - gate) * p["alpha"][0] * x


def _dice_functional(x, m):
    factor = 0.0
    if m.training:  # what the module passes: it counts the batch, then momentum or 1/count
        m.num_batches_tracked.add_(1)
        factor = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
    return NF.dice(x, m.alpha, m.running_mean, m.running_var, m.training, factor, m.eps)


def _per_channel_cases(extra_init):
    return (
        Case(
            init={"dim": 16, **extra_init},
            shape=(4, 16),
            desc="per_channel",
            layout=Layout(feature_arg="dim", feature_axis=-1, min_rank=1),
        ),
        Case(
            init={"dim": 3, "channel_axis": 1, **extra_init},
            shape=(2, 3, 4, 4),
            desc="per_channel_nchw",
            layout=Layout(feature_arg="dim", feature_axis=1, min_rank=2),
        ),
    )


_APA_CASES = (
    Case(shape=(4, 16), scale=3.0),
    Case(shape=(2, 3, 5, 4), desc="4d", scale=4.0, offset=-1.0),
    Case(shape=(), desc="scalar", offset=0.7),
    Case(init={"kappa_init": 2.0, "lambda_init": 3.0}, shape=(5, 7), scale=2.0, desc="kappa2_lambda3"),
    # near the Gumbel limit (lambda -> 0): the perturbed lambda stays above the clamp
    Case(init={"kappa_init": 0.7, "lambda_init": 0.6}, shape=(5, 7), scale=2.0, desc="lambda0.6"),
    *_per_channel_cases({"kappa_init": 1.5, "lambda_init": 1.2}),
)

# kappa = 0.5, lambda = 2: the stable form's softplus(ln lambda - kappa x) switches at x = ln(2) / 0.5
APA_SETTINGS = (Setting({"kappa": 0.5, "lambda_": 2.0}, points=(math.log(2) / 0.5,)),)

E = math.e
DICE_EPS = 1e-8
_DICE_LAYOUT = Layout(feature_arg="dim", feature_axis=1, min_rank=2, min_batch=2)

ENTRIES = (
    LayerEntry(
        name="apa",
        reference=ref_apa,
        cases=_APA_CASES,
        functional=lambda x, m: NF.apa(x, m.kappa, m.lambda_, m.channel_axis),
        layout=ANY,
        # kappa = lambda = 1: the logistic sigmoid 1 / (1 + e^-x)
        points=((0.0, 0.5), (1.0, 1 / (1 + 1 / E)), (-2.0, 1 / (1 + E**2))),
        bad_init=({"lambda_init": 0.0}, {"lambda_init": -1.0}, {"kappa_init": float("nan")}),
        numerics=Numerics(mp_apa, settings=APA_SETTINGS),
    ),
    LayerEntry(
        name="aglu",
        reference=ref_aglu,
        cases=_APA_CASES,
        functional=lambda x, m: NF.aglu(x, m.kappa, m.lambda_, m.channel_axis),
        layout=ANY,
        # kappa = lambda = 1: SiLU x / (1 + e^-x)
        points=((0.0, 0.0), (1.0, 1 / (1 + 1 / E)), (-2.0, -2 / (1 + E**2))),
        bad_init=({"lambda_init": 0.0}, {"dim": 0}),
        numerics=Numerics(lambda x, p, hp: x * mp_apa(x, p, hp), settings=APA_SETTINGS),
    ),
    LayerEntry(
        name="matrix_activation",
        reference=ref_matrix_activation,
        cases=(
            Case(shape=(4, 16)),
            Case(shape=(), desc="scalar", offset=-0.7),
            Case(init={"breakpoints": (-1.0, 0.0, 1.0)}, shape=(2, 3, 5, 4), scale=2.0, desc="4_intervals"),
            *_per_channel_cases({"breakpoints": (-0.5, 0.0, 0.5, 1.0)}),
        ),
        functional=lambda x, m: NF.matrix_activation(x, m.levels, m.breakpoints, m.channel_axis),
        layout=ANY,
        # every breakpoint used by a case: the function jumps there once neighbouring levels differ
        kinks=(-1.0, -0.5, 0.0, 0.5, 1.0),
        points=((-2.0, 0.0), (0.0, 0.0), (2.5, 2.5), (0.3, 0.3)),
        bad_init=(
            {"breakpoints": ()},
            {"breakpoints": (1.0, 0.0)},
            {"breakpoints": (-1.0, 1.0)},  # no breakpoint at 0: no ReLU initialisation
            {"breakpoints": (0.0, float("inf"))},
            {"breakpoints": 0.0},
        ),
        # t(x) = t_k on [s_k, s_{k+1}): at a breakpoint the level of the interval above it (1 at 0 initially);
        # at the initial breakpoints (0,) only 0 is a kink, the other listed points lie on the pieces 0 and 1
        numerics=Numerics(mp_matrix_activation, kink_grads=(0.0, 0.0, 1.0, 1.0, 1.0)),
    ),
    LayerEntry(
        name="dice",
        reference=ref_dice,
        cases=(
            Case(init={"dim": 4}, shape=(8, 4), offset=0.5),
            Case(init={"dim": 3, "momentum": None}, shape=(4, 3, 5), scale=2.0, offset=-1.0, desc="3d_cumulative"),
            Case(init={"dim": 5, "alpha_init": 0.25, "eps": 1e-3}, shape=(3, 5, 2, 2), desc="4d_alpha_eps"),
            Case(init={"dim": 4}, shape=(6, 4), offset=0.5, train=False, desc="eval"),
            Case(init={"dim": 3, "momentum": 0.3}, shape=(2, 3, 4), train=False, desc="eval_3d"),
        ),
        functional=_dice_functional,
        layout=_DICE_LAYOUT,
        # eval at the initial running statistics (mean 0, variance 1) and alpha = 0: s sigmoid(s / sqrt(1 + eps))
        points=(
            (0.0, 0.0),
            (1.0, 1 / (1 + math.exp(-1 / math.sqrt(1 + DICE_EPS)))),
            (-2.0, -2 / (1 + math.exp(2 / math.sqrt(1 + DICE_EPS)))),
        ),
        bad_init=({"dim": 0}, {"momentum": 1.5}, {"momentum": -0.1}, {"alpha_init": float("nan")}),
        numerics=Numerics(
            mp_dice,
            # running statistics other than the initial (0, 1): the gate centred at x = running_mean = 0.5
            settings=(Setting({"alpha": 0.25, "running_mean": 0.5, "running_var": 2.0}, points=(0.5,)),),
        ),
    ),
)

DISTRIBUTED_CASES = [
    ("dice", (8, 4), {}, None),
    ("dice", (8, 3, 5), {"momentum": None, "alpha_init": 0.2}, None),
]
