"""EvoNorm against timm's ``timm.layers.evo_norm`` (the reference implementation), and the identities the
catalog lists for EvoNorm-B0/S0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

The comparison runs on float64 inputs and parameters, in training (outputs, input and parameter gradients,
``running_var`` after two steps) and in evaluation, with parameters and buffers copied from the normact layer
into timm's through ``load_state_dict`` (the keys ``weight``, ``bias``, ``v``, ``running_var`` are the same).
timm computes its statistics with ``x.float()`` even for float64 input (so in float32), hence a float32-level tolerance
(``TIMM_TOL``); normact keeps float64 inputs in float64, checked to 1e-10 against the float64 references of
tests/entries/evonorm.py by the layer harness.

Deliberate differences from timm, not compared here:

- ``affine=False`` (timm always has ``weight`` and ``bias``): compared against timm with weight 1, bias 0.
- ``num_groups`` is torch's name for timm's ``groups``; C must be divisible by it at construction (timm
  fails in forward); a group of a single value is a ValueError for the variance-based S variants.
- ``momentum=None`` is rejected (timm would fail in forward); S1/S2 always use SiLU (no ``act_layer``).
- float16/bfloat16: normact computes every statistic, square root and the division in float32 and rounds
  once at the end; timm takes some square roots and the division in the input dtype, so low-precision
  outputs differ by rounding, and timm's B1/B2 overflow float16 at |x| ~ 1e4 (``(x + 1) * rms`` becomes inf
  and the output collapses to the bias), normact does not.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import normact
from normact.bench.models import norm_layer

evo_norm = pytest.importorskip("timm.layers.evo_norm")

# normact name -> (timm class, is a B variant)
PAIRS = {
    "evonorm_b0": (evo_norm.EvoNorm2dB0, True),
    "evonorm_b1": (evo_norm.EvoNorm2dB1, True),
    "evonorm_b2": (evo_norm.EvoNorm2dB2, True),
    "evonorm_s0": (evo_norm.EvoNorm2dS0, False),
    "evonorm_s0a": (evo_norm.EvoNorm2dS0a, False),
    "evonorm_s1": (evo_norm.EvoNorm2dS1, False),
    "evonorm_s1a": (evo_norm.EvoNorm2dS1a, False),
    "evonorm_s2": (evo_norm.EvoNorm2dS2, False),
    "evonorm_s2a": (evo_norm.EvoNorm2dS2a, False),
}
C = 8
TIMM_TOL = {"atol": 1e-5, "rtol": 1e-5}  # timm's statistics are float32 (x.float()) even for float64 input


def _perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for name, b in module.named_buffers():
            if "var" in name:
                b.mul_(torch.exp(0.3 * torch.randn(b.shape, generator=gen, dtype=b.dtype)))


def _pair(name: str, apply_act: bool = True, channels: int = C, **kwargs):
    """A perturbed normact layer and timm's layer holding the same parameters and buffers (float64)."""
    timm_cls, is_b = PAIRS[name]
    ours = normact.create(name, channels, apply_act=apply_act, dtype=torch.float64, **kwargs)
    _perturb(ours, seed=len(name))
    timm_kwargs = {"apply_act": apply_act, "eps": ours.eps}
    if is_b:
        timm_kwargs["momentum"] = ours.momentum
    else:
        timm_kwargs["groups"] = ours.num_groups
    theirs = timm_cls(channels, dtype=torch.float64, **timm_kwargs)
    state = ours.state_dict()
    if not ours.affine:
        ones, zeros = torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
        state = {**state, "weight": ones, "bias": zeros}
    theirs.load_state_dict(state, strict=True)
    return ours, theirs


def _step(module, x):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad


def _compare(ours, theirs, x):
    y_ours, g_ours = _step(ours, x)
    y_theirs, g_theirs = _step(theirs, x)
    torch.testing.assert_close(y_ours, y_theirs, **TIMM_TOL)
    torch.testing.assert_close(g_ours, g_theirs, **TIMM_TOL)
    theirs_params = dict(theirs.named_parameters())
    for pname, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[pname].grad, **TIMM_TOL, msg=pname)
    theirs_buffers = dict(theirs.named_buffers())
    for bname, b in ours.named_buffers():
        torch.testing.assert_close(b, theirs_buffers[bname], **TIMM_TOL, msg=bname)


def _input(seed: int, shape=(4, C, 5, 3), offset: float = 0.4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(shape, generator=gen, dtype=torch.float64) + offset


@pytest.mark.parametrize("apply_act", [True, False], ids=["act", "no_act"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_matches_timm_in_train_and_eval(name, apply_act):
    kwargs = {} if PAIRS[name][1] else {"num_groups": 4}
    ours, theirs = _pair(name, apply_act, **kwargs)
    for module in (ours, theirs):
        module.train()
    _compare(ours, theirs, _input(0))
    _compare(ours, theirs, _input(1, offset=-0.3))  # a second step: running_var keeps agreeing
    for module in (ours, theirs):
        module.eval()
        module.zero_grad()
    _compare(ours, theirs, _input(2))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_matches_timm_with_defaults_and_other_configurations(name):
    """Default eps/momentum/groups (C = 64 so that the default 32 groups apply), affine off, group_size."""
    ours, theirs = _pair(name, channels=64)
    assert ours.eps == theirs.eps
    if PAIRS[name][1]:
        assert ours.momentum == theirs.momentum
    else:
        assert ours.num_groups == theirs.groups == 32
    _compare(ours.train(), theirs.train(), _input(3, shape=(2, 64, 3, 3)))
    _compare(ours.eval(), theirs.eval(), _input(4, shape=(2, 64, 3, 3)))
    extra = {"affine": False} if PAIRS[name][1] else {"affine": False, "group_size": 2}
    ours, theirs = _pair(name, **extra)
    if not PAIRS[name][1]:
        assert ours.num_groups == 4
    _compare(ours.train(), theirs.train(), _input(5, shape=(3, 8, 2, 2)))


def test_default_hyperparameters_follow_timm():
    expected_eps = {"b0": 1e-3, "b1": 1e-5, "b2": 1e-5, "s0": 1e-5, "s0a": 1e-3, "s1": 1e-5, "s1a": 1e-3,
                    "s2": 1e-5, "s2a": 1e-3}  # fmt: skip
    for suffix, eps in expected_eps.items():
        layer = normact.create(f"evonorm_{suffix}", 64)
        assert layer.eps == eps
        assert (PAIRS[f"evonorm_{suffix}"][0](64).eps) == eps
    assert normact.create("evonorm_s0", 64).num_groups == 32
    assert normact.create("evonorm_b0", 8).momentum == 0.1


# ------------------------------------------------------------------ catalog identities


def _s0(v: float, eps: float = 1e-5, groups: int = 4):
    layer = normact.create("evonorm_s0", C, num_groups=groups, eps=eps, affine=False, dtype=torch.float64)
    with torch.no_grad():
        layer.v.fill_(v)
    return layer


def test_s0_with_v_zero_is_half_group_norm_on_zero_mean_groups():
    x = _input(6, offset=0.0)
    xg = x.reshape(4, 4, -1)
    x = (xg - xg.mean(-1, keepdim=True)).reshape(x.shape)  # every group has mean zero
    torch.testing.assert_close(_s0(0.0)(x), 0.5 * F.group_norm(x, 4, eps=1e-5), atol=1e-12, rtol=1e-10)


def test_s0_with_v_zero_is_scale_invariant():
    layer, x = _s0(0.0, eps=1e-12), _input(7)
    for a in (0.1, 3.0, 250.0):
        torch.testing.assert_close(layer(a * x), layer(x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", ["evonorm_s0", "evonorm_b0"])
def test_no_mean_subtraction(name):
    """Neither layer centers its input: a constant shift changes the output (unlike GroupNorm/BatchNorm)."""
    kwargs = {"num_groups": 4} if name == "evonorm_s0" else {}
    layer = normact.create(name, C, dtype=torch.float64, **kwargs)
    x = _input(8)
    assert not torch.allclose(layer(x + 2.0), layer(x), atol=1e-3)
    gn = torch.nn.GroupNorm(4, C, dtype=torch.float64)
    torch.testing.assert_close(gn(x + 2.0), gn(x))  # the contrast: a centered norm ignores the shift


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_b1", "evonorm_b2"])
def test_b_variants_in_eval_are_per_sample(name):
    """In eval the batch term comes from running_var: each sample's output is independent of the batch."""
    layer = normact.create(name, C, dtype=torch.float64)
    layer.train()
    layer(_input(9))  # move running_var away from 1
    layer.eval()
    x = _input(10)
    full = layer(x)
    for i in range(x.shape[0]):
        torch.testing.assert_close(layer(x[i : i + 1]), full[i : i + 1], atol=1e-13, rtol=1e-12)
    layer.train()
    assert not torch.allclose(layer(x[:1]), full[:1])  # in training the batch matters


def test_b0_running_var_is_the_unbiased_batch_variance_with_momentum_one():
    layer = normact.create("evonorm_b0", C, momentum=1.0, dtype=torch.float64)
    x = _input(11)
    layer(x)
    torch.testing.assert_close(layer.running_var, x.var(dim=(0, 2, 3), unbiased=True))
    before = layer.running_var.clone()
    layer.eval()(x)
    assert torch.equal(layer.running_var, before)  # eval does not update


def test_s1_is_s0_with_v_one():
    s0 = normact.create("evonorm_s0", C, num_groups=2, dtype=torch.float64)
    s1 = normact.create("evonorm_s1", C, num_groups=2, dtype=torch.float64)
    x = _input(12)
    torch.testing.assert_close(s0(x), s1(x), atol=1e-13, rtol=1e-12)


def test_reset_parameters_restores_timm_initial_values():
    layer = normact.create("evonorm_b0", C)
    _perturb(layer, 0)
    layer.reset_parameters()
    fresh = evo_norm.EvoNorm2dB0(C)
    for key, value in fresh.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value), key


# ------------------------------------------------------------------ errors and layouts


def test_configuration_and_input_errors():
    with pytest.raises(ValueError, match="divisible by num_groups=3"):
        normact.create("evonorm_s0", 8, num_groups=3)
    with pytest.raises(ValueError, match="divisible by group_size=3"):
        normact.create("evonorm_s1", 8, group_size=3)
    with pytest.raises(ValueError, match="momentum"):
        normact.create("evonorm_b0", 8, momentum=None)
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\).*got shape \(2, 8, 3\)"):
        normact.create("evonorm_b1", 8)(torch.randn(2, 8, 3))
    with pytest.raises(ValueError, match="more than 1 value per group"):
        normact.create("evonorm_s0", 4, num_groups=4)(torch.randn(2, 4, 1, 1))
    normact.create("evonorm_s2", 4, num_groups=4)(torch.randn(2, 4, 1, 1))  # a mean square needs no centering
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        normact.create("evonorm_b2", 4)(torch.randn(1, 4, 1, 1))
    normact.create("evonorm_b2", 4).eval()(torch.randn(1, 4, 1, 1))  # eval uses running_var


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("layout", ["nchw", "nc", "nlc"])
def test_bench_layouts(name, layout):
    """The bench adapts channel norms: (N, C, H, W) as is, (N, C) and (N, L, C) as (N, C, L, 1)."""
    module = norm_layer(name, 64, layout)
    shape = {"nchw": (4, 64, 3, 3), "nc": (4, 64), "nlc": (4, 5, 64)}[layout]
    y = module(torch.randn(shape))
    assert y.shape == shape and torch.isfinite(y).all()


def test_half_precision_large_inputs_stay_accurate_where_timm_overflows():
    x = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(13)) * 1e4
    ours = normact.create("evonorm_b1", C).eval().half()
    theirs = copy.deepcopy(evo_norm.EvoNorm2dB1(C)).eval().half()
    y = ours(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    expected = normact.create("evonorm_b1", C).eval().double()(x.half().double())
    torch.testing.assert_close(y.double(), expected, atol=1e-7, rtol=4e-3)  # relative: positive outputs ~ 1e-4
    # timm forms (x + 1) * rms in float16: inf at |x| ~ 1e4, so its positive outputs collapse to exactly 0
    positive = x > 0
    assert (theirs(x.half())[positive] == 0).all() and (expected[positive] > 0).all()
