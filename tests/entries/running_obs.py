"""Harness entry of RSNorm (SimBa, Lee et al., 2024, arXiv:2410.09754). The float64 reference streams the batch
through the paper's Welford recursion one sample at a time (the layer merges the whole batch at once), then
normalizes with the updated statistics; it also returns the buffers expected after the call. The layer's backward
treats the statistics as constants (a stop-gradient, registered ``custom_backward``), so the entry's
``reference_grad`` gives that gradient in place of gradcheck (which could not take finite differences through
repeated calls anyway: every training forward moves the statistics)."""

from __future__ import annotations

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from normact.testing.checks import default_perturb


def _welford(x, p):
    """The paper's recursion over the samples of ``x`` (every position of (N, C) or (N, L, C)), in order."""
    mean, var = p["running_mean"].clone(), p["running_var"].clone()
    t = int(p["num_samples_tracked"])
    for o in x.reshape(-1, x.shape[-1]):
        t += 1
        delta = o - mean
        mean = mean + delta / t
        var = (t - 1) / t * (var + delta * delta / t)
    return mean, var, t


def ref_rsnorm(x, p, hp):
    """y = (x - mu_t) / sqrt(var_t + eps) with the statistics after the batch in training, the frozen ones in eval."""
    if not hp["training"]:
        return (x - p["running_mean"]) / torch.sqrt(p["running_var"] + hp["eps"])
    mean, var, t = _welford(x, p)
    y = (x - mean) / torch.sqrt(var + hp["eps"])
    return y, {"running_mean": mean, "running_var": var, "num_samples_tracked": torch.tensor(t)}


def grad_rsnorm(x, grad_out, p, hp):
    """The layer's stop-gradient backward: g / sqrt(var_t + eps) with the statistics after the batch (training) or
    the frozen ones (eval) as constants."""
    var = _welford(x, p)[1] if hp["training"] else p["running_var"]
    return {"input": grad_out / torch.sqrt(var + hp["eps"])}


def perturb_rsnorm(module, gen):
    """Statistics moved off their init and a count of 7 samples already seen (so the merge weighs old and new)."""
    default_perturb(module, gen)
    with torch.no_grad():
        module.num_samples_tracked.fill_(7)


# tests/test_distributed.py: 2 gloo processes holding 3 and 5 samples against 1 holding all 8 (two steps)
DISTRIBUTED_CASES = [
    ("rsnorm", (8, 6), {}, None),
    ("rsnorm", (8, 5, 5), {"eps": 1e-3}, None),
]

ENTRIES = [
    LayerEntry(
        name="rsnorm",
        reference=ref_rsnorm,
        cases=(
            Case(init={"num_features": 4}, shape=(6, 4), offset=0.5),
            Case(init={"num_features": 3}, shape=(2, 5, 3), offset=-1.0, desc="tokens"),
            Case(init={"num_features": 4, "eps": 1e-3}, shape=(1, 4), offset=2.0, desc="one_sample"),
            Case(init={"num_features": 4}, shape=(5, 4), offset=0.5, train=False, desc="eval"),
            Case(init={"num_features": 3}, shape=(2, 3, 3), train=False, desc="eval_tokens"),
        ),
        functional=lambda x, m: NF.rs_norm(x, m.running_mean, m.running_var, m.num_samples_tracked, m.training, m.eps),
        layout=Layout(feature_arg="num_features", feature_axis=-1, ranks=(2, 3)),
        perturb=perturb_rsnorm,
        reference_grad=grad_rsnorm,
        bad_init=({"eps": float("inf")},),
    ),
]
