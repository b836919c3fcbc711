"""Harness entries of the frequency-domain normalizations of "Decompose, Adjust, Compose" (Lee, Bae & Kim, CVPR
2023, arXiv:2303.02328): PCNorm, CCNorm and SCNorm.

References are float64 formulas written here without calling normact: full complex 2-D DFTs (``fft2``/``ifft2``,
the real part of the inverse), the exact phase ``angle`` and ``polar``, BN/IN statistics spelled out. The mixing
weights follow the authors' code (github.com/sangrokleeeeee/DAC, model.py): lambda = softmax(h / T)[0] over two
logits, which is sigmoid((h0 - h1) / T); the layers learn that difference as ``mix_logit``.

PCNorm and CCNorm are discontinuous where a map's spatial mean crosses 0 (the phase of the zero frequency flips
between 0 and pi) and have a kink where it equals the batch mean. Their inputs (``_maps``) keep every map mean
well away from both for gradcheck, while putting some of them between 0 and the mean BN subtracts (the batch
mean in training, running means of +-3.2 set by the entries' ``perturb`` in evaluation): only there does PCNorm
differ from BatchNorm, so the references tell the two apart. CCNorm's cases use temperatures of order
1 (the default 1e-6 saturates lambda at 0 or 1, so a perturbed ``mix_logit`` would not affect the output and
finite differences would cross the step); the default is covered in tests/test_frequency_norms.py.
"""

from __future__ import annotations

import math

import torch

import normact.functional as NF
from normact.testing import Case, LayerEntry, Layout
from normact.testing.checks import default_perturb
from tests.entries._common import module_factor, running_update

_VIEW = (1, -1, 1, 1)


def _affine(y, p):
    if p.get("weight") is not None:
        y = y * p["weight"].reshape(_VIEW)
    if p.get("bias") is not None:
        y = y + p["bias"].reshape(_VIEW)
    return y


def _compose(amplitude, phase):
    """The real part of the inverse 2-D DFT of amplitude * exp(i phase)."""
    return torch.fft.ifft2(torch.polar(amplitude, phase)).real


def _bn(x, p, hp):
    """BatchNorm2d without affine: (x - mu) / sqrt(var + eps), batch statistics (biased variance) in training or
    without running statistics, with the expected buffers after the update; running statistics in eval."""
    tracking = p.get("running_mean") is not None
    if hp["training"] or not tracking:
        n = x.numel() // x.shape[1]
        mu = x.mean((0, 2, 3))
        var = ((x - mu.reshape(_VIEW)) ** 2).mean((0, 2, 3))
        buffers = None
        if hp["training"] and tracking:
            buffers = running_update(p, hp, mu, var * n / (n - 1))
    else:
        mu, var, buffers = p["running_mean"], p["running_var"], None
    mu = mu.reshape(_VIEW)
    return (x - mu) / torch.sqrt(var.reshape(_VIEW) + hp["eps"]), mu, buffers


def _lambda(p, hp):
    """softmax((h0, h1) / T)[0] with h0 - h1 = mix_logit."""
    h = torch.stack([p["mix_logit"].reshape(()), torch.zeros((), dtype=torch.float64)]) / hp["temperature"]
    return torch.softmax(h, 0)[0]


def _with_buffers(y, buffers):
    return (y, buffers) if buffers is not None else y


# ----------------------------------------------------------------------------- references


def ref_pcnorm(x, p, hp):
    """F^-1(|F(BN(x))| exp(i angle F(x))) * gamma + beta."""
    normalized, _, buffers = _bn(x, p, hp)
    y = _compose(torch.fft.fft2(normalized).abs(), torch.fft.fft2(x).angle())
    return _with_buffers(_affine(y, p), buffers)


def ref_ccnorm(x, p, hp):
    """F^-1(|F(BN(x))| exp(i angle F(x - lambda mu))) * gamma + beta, mu the mean BN subtracts."""
    normalized, mu, buffers = _bn(x, p, hp)
    y = _compose(torch.fft.fft2(normalized).abs(), torch.fft.fft2(x - _lambda(p, hp) * mu).angle())
    return _with_buffers(_affine(y, p), buffers)


def ref_scnorm(x, p, hp):
    """F^-1((lambda |F(IN(x))| + (1 - lambda) |F(x)|) exp(i angle F(x))) * gamma + beta."""
    mu = x.mean((2, 3), keepdim=True)
    var = ((x - mu) ** 2).mean((2, 3), keepdim=True)
    normalized = (x - mu) / torch.sqrt(var + hp["eps"])
    lam = _lambda(p, hp)
    spectrum = torch.fft.fft2(x)
    amplitude = lam * torch.fft.fft2(normalized).abs() + (1 - lam) * spectrum.abs()
    return _affine(_compose(amplitude, spectrum.angle()), p)


# ----------------------------------------------------------------------------- functional calls


def _pc_functional(x, m):
    factor = module_factor(m)
    return NF.pc_norm(x, m.running_mean, m.running_var, m.weight, m.bias, m.training, factor, m.eps)


def _cc_functional(x, m):
    factor = module_factor(m)
    return NF.cc_norm(
        x, m.running_mean, m.running_var, m.mix_logit, m.weight, m.bias, m.training, factor, m.eps, m.temperature
    )


def _sc_functional(x, m):
    return NF.sc_norm(x, m.mix_logit, m.weight, m.bias, m.eps, m.temperature)


# ----------------------------------------------------------------------------- inputs


def _maps(shape, g):
    """Maps with exact spatial means m (zero-mean noise around them) of one random sign per channel and, by sample
    n % 3, magnitudes small (0.3 to 0.4), middle (2.45 to 2.6) or large (7.5 to 8.5). With N >= 3 the batch mean
    mu lies between the middle and the large ones and lambda mu (lambda in [0.29, 0.71]) between the small and the
    middle ones, so sign(m - mu) differs from sign(m) (PCNorm != BN) for the small and middle maps and from
    sign(m - lambda mu) (CCNorm != BN and != PCNorm) for the middle ones, while every m stays at least 0.15 away
    from 0, lambda mu and mu (CCNorm's discontinuities and kink) for gradcheck."""
    n, c = shape[0], shape[1]
    signs = torch.where(torch.rand((1, c, 1, 1), generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    tier = (torch.arange(n) % 3).reshape(-1, 1, 1, 1)
    low = torch.tensor([0.3, 2.45, 7.5], dtype=torch.float64)[tier]
    width = torch.tensor([0.1, 0.15, 1.0], dtype=torch.float64)[tier]
    magnitude = low + width * torch.rand((n, c, 1, 1), generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    return signs * magnitude + 0.8 * (noise - noise.mean((2, 3), keepdim=True))


def _perturb_running_mean(module, g):
    """The default perturbation, then running means of exactly +3.2 / -3.2 (by channel parity): in evaluation
    the small and middle maps of ``_maps`` whose sign matches their channel's lie between 0 and the running mean
    (and the middle ones between lambda mu and mu), as the batch mean places them in training."""
    default_perturb(module, g)
    if getattr(module, "running_mean", None) is not None:
        with torch.no_grad():
            parity = torch.arange(module.running_mean.numel()) % 2
            module.running_mean.copy_(torch.where(parity == 0, 3.2, -3.2).to(module.running_mean))


_LAYOUT = Layout(feature_arg="num_features", feature_axis=1, ranks=(4,), min_batch=2)

ENTRIES = (
    LayerEntry(
        name="pcnorm",
        reference=ref_pcnorm,
        cases=(
            Case(init={"num_features": 5}, shape=(4, 5, 6, 4), input_fn=_maps, desc="train_even_w"),
            Case(init={"num_features": 4, "momentum": None}, shape=(3, 4, 3, 5), input_fn=_maps, desc="odd_cumul"),
            Case(init={"num_features": 6}, shape=(3, 6, 4, 4), input_fn=_maps, train=False, desc="eval"),
            Case(init={"num_features": 4}, shape=(3, 4, 5, 3), input_fn=_maps, train=False, desc="eval_odd"),
            Case(
                init={"num_features": 4, "affine": False, "eps": 1e-3, "momentum": 0.3},
                shape=(5, 4, 2, 3),
                input_fn=_maps,
                desc="no_affine",
            ),
            Case(
                init={"num_features": 3, "track_running_stats": False},
                shape=(4, 3, 3, 3),
                input_fn=_maps,
                train=False,
                desc="untracked_eval",
            ),
            Case(init={"num_features": 3}, shape=(6, 3, 1, 1), input_fn=_maps, desc="1x1"),
        ),
        functional=_pc_functional,
        layout=_LAYOUT,
        perturb=_perturb_running_mean,
        bad_init=({"momentum": 1.5}, {"momentum": -0.1}),
    ),
    LayerEntry(
        name="ccnorm",
        reference=ref_ccnorm,
        cases=(
            Case(init={"num_features": 5, "temperature": 1.0}, shape=(4, 5, 6, 4), input_fn=_maps, desc="train"),
            Case(
                init={"num_features": 4, "temperature": 2.0, "momentum": None},
                shape=(3, 4, 3, 5),
                input_fn=_maps,
                desc="odd_cumul",
            ),
            Case(
                init={"num_features": 6, "temperature": 1.0},
                shape=(3, 6, 4, 4),
                input_fn=_maps,
                train=False,
                desc="eval",
            ),
            Case(
                init={"num_features": 4, "temperature": 2.0, "affine": False, "eps": 1e-3},
                shape=(5, 4, 2, 3),
                input_fn=_maps,
                desc="no_affine",
            ),
            Case(
                init={"num_features": 3, "temperature": 1.0, "track_running_stats": False},
                shape=(4, 3, 3, 3),
                input_fn=_maps,
                train=False,
                desc="untracked_eval",
            ),
        ),
        functional=_cc_functional,
        layout=_LAYOUT,
        perturb=_perturb_running_mean,
        bad_init=({"temperature": 0.0}, {"temperature": -1.0}, {"temperature": math.inf}, {"momentum": 2.0}),
    ),
    LayerEntry(
        name="scnorm",
        reference=ref_scnorm,
        cases=(
            Case(init={"num_features": 5}, shape=(3, 5, 6, 4), offset=0.5, desc="default"),
            Case(init={"num_features": 4}, shape=(2, 4, 3, 5), offset=-1.0, train=False, desc="odd_eval"),
            Case(
                init={"num_features": 4, "affine": False, "eps": 1e-3}, shape=(1, 4, 4, 4), offset=1.0, desc="no_affine"
            ),
            Case(init={"num_features": 3, "temperature": 1.0}, shape=(2, 3, 2, 7), offset=0.3, desc="temperature_1"),
        ),
        functional=_sc_functional,
        layout=Layout(feature_arg="num_features", feature_axis=1, ranks=(4,)),
        bad_init=({"temperature": 0.0}, {"temperature": float("nan")}),
    ),
)

DISTRIBUTED_CASES = [
    ("pcnorm", (8, 4, 5, 5), {}, None),
    ("pcnorm", (8, 3, 4, 3), {"momentum": None}, None),
    ("ccnorm", (8, 4, 5, 4), {"temperature": 1.0}, None),
    ("ccnorm", (8, 3, 3, 3), {"temperature": 0.5, "affine": False}, None),
]
