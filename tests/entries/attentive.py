"""Harness entry of Attentive Batch Normalization (Ding, Guo, Dai & Du, 2020, arXiv:2001.00129) for frame
sequences (N, T, C).

The reference is written here in float64 without calling normact: batch normalization over the N x T frames
(torch BatchNorm's running statistics: momentum, unbiased variance, cumulative average for momentum=None),
hidden features h_t = tanh(W_h x_hat_t + b_h) of the normalized frames, attention a_t = softmax_t(v . h_t),
the summary s = sum_t a_t h_t (utterance level) or s_t = T a_t h_t (frame level), and
y = (gamma_0 + W_gamma s) * x_hat + beta_0 + W_beta s. The auxiliary network is normact's documented choice
(the paper's could not be consulted); see the layer's docstring.

The 2-process cases use T = C: tests/test_distributed.py builds every layer with shape[1] features.
"""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout


def ref_attentive_bn(x, p, hp):
    n, t = x.shape[:2]
    buffers = None
    if hp["training"]:
        mean = x.mean((0, 1))
        var = ((x - mean) ** 2).mean((0, 1))
        tracked = p["num_batches_tracked"] + 1
        m = hp["momentum"] if hp["momentum"] is not None else 1.0 / float(tracked)
        count = n * t
        buffers = {
            "running_mean": (1 - m) * p["running_mean"] + m * mean,
            "running_var": (1 - m) * p["running_var"] + m * var * count / (count - 1),
            "num_batches_tracked": tracked,
        }
    else:
        mean, var = p["running_mean"], p["running_var"]
    x_hat = (x - mean) / torch.sqrt(var + hp["eps"])
    h = torch.tanh(x_hat @ p["aux_weight"].T + p["aux_bias"])  # (n, t, a)
    scores = h @ p["att_vector"]  # (n, t)
    a = torch.exp(scores - scores.max(1, keepdim=True).values)
    a = a / a.sum(1, keepdim=True)
    weighted = a.unsqueeze(-1) * h  # (n, t, a)
    s = weighted.sum(1, keepdim=True) if hp["level"] == "utterance" else t * weighted
    gamma0 = p["weight"] if p.get("weight") is not None else 1.0
    beta0 = p["bias"] if p.get("bias") is not None else 0.0
    y = (gamma0 + s @ p["gamma_weight"].T) * x_hat + beta0 + s @ p["beta_weight"].T
    return (y, buffers) if buffers is not None else y


def _functional(x, m):
    if m.training:
        m.num_batches_tracked.add_(1)
        factor = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
    else:
        factor = 0.0
    return NF.attentive_batch_norm(
        x, m.running_mean, m.running_var, m.weight, m.bias, m.gamma_weight, m.beta_weight, m.aux_weight,
        m.aux_bias, m.att_vector, m.training, factor, m.eps, m.level,
    )  # fmt: skip


ENTRIES = (
    LayerEntry(
        name="attentive_bn",
        reference=ref_attentive_bn,
        cases=(
            Case(init={"num_features": 5}, shape=(4, 6, 5), offset=0.5),
            Case(init={"num_features": 4, "level": "frame"}, shape=(3, 5, 4), offset=-0.5, desc="frame"),
            Case(init={"num_features": 5}, shape=(3, 4, 5), offset=0.5, train=False, desc="eval"),
            Case(
                init={"num_features": 6, "level": "frame", "attention_dim": 3, "momentum": None, "eps": 1e-3},
                shape=(2, 7, 6),
                offset=1.0,
                desc="frame_a3_cumulative",
            ),
            Case(
                init={"num_features": 3, "affine": False, "attention_dim": 2},
                shape=(5, 3, 3),
                desc="no_affine",
            ),
            Case(init={"num_features": 4, "level": "frame"}, shape=(2, 3, 4), train=False, desc="frame_eval"),
        ),
        functional=_functional,
        layout=Layout(feature_arg="num_features", feature_axis=-1, ranks=(3,), min_batch=2),
        bad_init=({"level": "word"}, {"attention_dim": 0}, {"momentum": 1.5}),
    ),
)

DISTRIBUTED_CASES = [
    ("attentive_bn", (8, 5, 5), {}, None),
    ("attentive_bn", (8, 4, 4), {"level": "frame", "momentum": None}, None),
    ("attentive_bn", (8, 3, 3), {"affine": False, "attention_dim": 2}, None),
]
