"""Small helpers shared by the norm tests: seeded float64 inputs and seeded perturbations of a layer's
parameters and buffers (so that identities are not checked at the initial values only). The harness entries
in tests/entries/ do not use them: they stay independent of everything but torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def randn(shape, scale=1.5, offset=0.5, seed=0, dtype=torch.float64) -> torch.Tensor:
    """``scale * N(0, 1) + offset`` of ``shape``, drawn in float64 from a generator seeded with ``seed``, then
    cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)


def perturb(
    module: nn.Module,
    seed: int = 1,
    scale: float = 0.3,
    skip: Sequence[str] = (),
    add: Sequence[str] = (),
    mul: Sequence[str] = (),
) -> nn.Module:
    """Add ``scale * N(0, 1)`` to every parameter (except those named in ``skip``) and to the buffers named in
    ``add``, then multiply the buffers named in ``mul`` by ``exp(0.3 N(0, 1))`` (positive variances stay
    positive), in that order, from one generator seeded with ``seed`` (float64 draws cast to each tensor's
    dtype; absent buffers are skipped). Returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        shifted = [p for name, p in module.named_parameters() if name not in skip]
        shifted += [getattr(module, name) for name in add]
        for t in shifted:
            if t is not None:
                t.add_(scale * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t))
        for name in mul:
            t = getattr(module, name)
            if t is not None:
                t.mul_((0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64)).exp().to(t))
    return module


def perturb_bn(module: nn.Module, seed: int = 1) -> nn.Module:
    """:func:`perturb` of the parameters and of BatchNorm's running statistics (``running_mean`` shifted,
    ``running_var`` scaled)."""
    return perturb(module, seed, add=("running_mean",), mul=("running_var",))


def zoo_model_or_skip(name: str):
    """``normact.zoo.load_model(name)``, or skip the test naming the package to install."""
    import pytest

    from normact.zoo import ModelUnavailableError, load_model

    try:
        return load_model(name)
    except ModelUnavailableError as e:
        pytest.skip(str(e))


def random_qkv(b=2, h=2, t=6, s=None, d=8, dv=None, seed=0, dtype=torch.float64, scale=1.0):
    """Seeded q (b, h, t, d), k (b, h, s, d) ~ scale * N(0, 1) and v (b, h, s, dv) ~ N(0, 1), drawn in float64 and
    cast to ``dtype`` (s defaults to t, dv to d): the inputs of the attention tests."""
    g = torch.Generator().manual_seed(seed)
    s, dv = s or t, dv or d
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64) * scale
    k = torch.randn(b, h, s, d, generator=g, dtype=torch.float64) * scale
    v = torch.randn(b, h, s, dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)
