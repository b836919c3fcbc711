"""The channel norms timm users expect (FRN with and without its TLU, GRN, LayerNorm2d, GroupNorm1): numerical
parity with timm's classes in float64 (weights copied through the state dict), the same defaults and initial
values, and identities from the papers that do not depend on any implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normact
import normact.functional as NF
from normact.testing.checks import generator, prepared
from tests.entries import ENTRIES

timm_layers = pytest.importorskip("timm.layers")
from timm.layers.filter_response_norm import FilterResponseNormAct2d, FilterResponseNormTlu2d  # noqa: E402
from timm.layers.grn import GlobalResponseNorm  # noqa: E402
from timm.layers.norm import GroupNorm1, LayerNorm2d  # noqa: E402

F64 = torch.float64


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64).to(p) * 0.5 + 0.5)
    return module


def _copy(src: nn.Module, dst: nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=True)
    assert not missing and not unexpected


def _x(shape, seed: int = 1, scale: float = 1.5, offset: float = 0.3) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale + offset


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------------------ timm parity


@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize(("name", "apply_act"), [("frn", True), ("frn_no_tlu", False)])
def test_frn_matches_timm(name, apply_act, eps):
    kwargs = {} if eps is None else {"eps": eps}
    ref = _randomize(FilterResponseNormTlu2d(6, apply_act=apply_act, dtype=F64, **kwargs))
    ours = normact.create(name, 6, dtype=F64, **kwargs)
    _copy(ref, ours)
    x = _x((3, 6, 5, 4))
    # timm takes the mean square in float32 whatever the input dtype (``x.square().float()``), so its float64
    # output is float32-accurate (observed ~2e-7); normact keeps float64 in float64. Against timm's formula
    # evaluated in float64 (its float32 cast removed) the two agree to 1e-12.
    _close(ours(x), ref(x), tol=2e-6)
    view = (1, -1, 1, 1)
    timm64 = x * (x.square().mean(dim=(2, 3), keepdim=True) + ref.eps).rsqrt()
    timm64 = timm64 * ref.weight.view(view) + ref.bias.view(view)
    if ref.tau is not None:
        timm64 = torch.maximum(timm64, ref.tau.view(view))
    _close(ours(x), timm64)
    if not apply_act:  # timm's plain FRN without an activation is the same layer
        plain = FilterResponseNormAct2d(6, apply_act=False, dtype=F64, **kwargs)
        _copy(ours, plain)
        _close(ours(x), plain(x), tol=2e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_grn_matches_timm(channels_last, eps):
    kwargs = {} if eps is None else {"eps": eps}
    ref = _randomize(GlobalResponseNorm(6, channels_last=channels_last, dtype=F64, **kwargs))
    ours = normact.create("grn", 6, channels_last=channels_last, dtype=F64, **kwargs)
    _copy(ref, ours)
    x = _x((3, 5, 4, 6) if channels_last else (3, 6, 5, 4))
    _close(ours(x), ref(x))


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm2d_matches_timm(affine):
    ref = _randomize(LayerNorm2d(6, affine=affine, dtype=F64))
    ours = normact.create("layernorm2d", 6, affine=affine, dtype=F64)
    _copy(ref, ours)
    x = _x((3, 6, 5, 4))
    _close(ours(x), ref(x))


@pytest.mark.parametrize("shape", [(3, 6, 5, 4), (3, 6, 7), (4, 6)])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm1_matches_timm(shape, affine):
    ref = _randomize(GroupNorm1(6, affine=affine, eps=1e-4, dtype=F64))
    ours = normact.create("groupnorm1", 6, affine=affine, eps=1e-4, dtype=F64)
    _copy(ref, ours)
    x = _x(shape)
    _close(ours(x), ref(x))


@pytest.mark.parametrize(
    ("name", "timm_factory"),
    [
        ("frn", lambda: FilterResponseNormTlu2d(6)),
        ("frn_no_tlu", lambda: FilterResponseNormAct2d(6, apply_act=False)),
        ("grn", lambda: GlobalResponseNorm(6)),
        ("layernorm2d", lambda: LayerNorm2d(6)),
        ("groupnorm1", lambda: GroupNorm1(6)),
    ],
)
def test_same_defaults_and_initial_values_as_timm(name, timm_factory):
    ref, ours = timm_factory(), normact.create(name, 6)
    assert ours.eps == ref.eps
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert set(ref_state) == set(our_state)
    for key, value in ref_state.items():
        assert torch.equal(our_state[key], value), key
    assert dict(ours.named_parameters()).keys() == dict(ref.named_parameters()).keys()


# ------------------------------------------------------------------------------------------------ identities


def test_groupnorm1_is_torch_group_norm_with_one_group_and_layer_norm_over_c_hw():
    ours = _randomize(normact.create("groupnorm1", 6, eps=1e-3, dtype=F64))
    x = _x((3, 6, 4, 5))
    _close(ours(x), F.group_norm(x, 1, ours.weight, ours.bias, 1e-3))
    # LayerNorm over (C, H, W) without its elementwise affine, then the per-channel affine
    view = (1, -1, 1, 1)
    expected = F.layer_norm(x, x.shape[1:], eps=1e-3) * ours.weight.view(view) + ours.bias.view(view)
    _close(ours(x), expected)


def test_layernorm2d_is_layer_norm_over_the_channels_last_view():
    ours = _randomize(normact.create("layernorm2d", 6, dtype=F64))
    x = _x((3, 6, 4, 5))
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ours.weight, ours.bias, 1e-6).permute(0, 3, 1, 2)
    _close(ours(x), expected)
    # each position is normalized on its own: statistics over C have mean 0 and variance ~1 without affine
    plain = normact.create("layernorm2d", 6, affine=False, eps=1e-12, dtype=F64)(x)
    _close(plain.mean(1), torch.zeros(3, 4, 5, dtype=F64))
    _close(plain.var(1, correction=0), torch.ones(3, 4, 5, dtype=F64), tol=1e-9)


def _frn_without_threshold(eps: float) -> nn.Module:
    frn = _randomize(normact.create("frn", 6, eps=eps, dtype=F64))
    with torch.no_grad():
        frn.tau.fill_(float("-inf"))
    return frn


@pytest.mark.parametrize("factor", [1e-3, 7.5, 1e4])
def test_frn_is_scale_invariant_as_eps_vanishes(factor):
    """FRN(a x) = FRN(x) for a > 0 when eps -> 0 and tau = -inf (paper, section 3: no mean centering, only the
    mean squared norm, so the layer removes the scale of each filter response)."""
    frn = _frn_without_threshold(1e-30)
    x = _x((2, 6, 4, 4))
    _close(frn(factor * x), frn(x))
    # and tau = -inf turns the TLU off: the plain FRN with the same weight and bias
    plain = normact.create("frn_no_tlu", 6, eps=1e-30, dtype=F64)
    plain.load_state_dict({k: v for k, v in frn.state_dict().items() if k != "tau"})
    _close(frn(x), plain(x))


def test_frn_nu2_normalizes_the_mean_square_to_one():
    plain = normact.create("frn_no_tlu", 6, eps=1e-30, dtype=F64)
    y = plain(_x((2, 6, 4, 3)))
    _close((y * y).mean(dim=(2, 3)), torch.ones(2, 6, dtype=F64))


def test_tlu_is_max_of_frn_and_tau():
    frn = _randomize(normact.create("frn", 6, dtype=F64))
    plain = normact.create("frn_no_tlu", 6, dtype=F64)
    plain.load_state_dict({k: v for k, v in frn.state_dict().items() if k != "tau"})
    x = _x((3, 6, 4, 4))
    _close(frn(x), torch.maximum(plain(x), frn.tau.view(1, -1, 1, 1)))
    # max(y, tau) = relu(y - tau) + tau (paper, Eq. 3)
    _close(frn(x), F.relu(plain(x) - frn.tau.view(1, -1, 1, 1)) + frn.tau.view(1, -1, 1, 1))


def test_grn_is_the_identity_at_initialization():
    x = _x((2, 6, 4, 4))
    _close(normact.create("grn", 6, dtype=F64)(x), x)


@pytest.mark.parametrize("factor", [1e-2, 3.0, 1e3])
def test_grn_is_positively_homogeneous_without_bias(factor):
    """Nx = Gx / mean_c Gx is scale-free, so with beta = 0 and eps -> 0, GRN(a x) = a GRN(x) for a > 0."""
    grn = _randomize(normact.create("grn", 6, eps=1e-30, dtype=F64))
    with torch.no_grad():
        grn.bias.zero_()
    x = _x((2, 6, 4, 4))
    _close(grn(factor * x), factor * grn(x))


def test_grn_channel_factors_average_to_one():
    """With gamma = 1, beta = 0: y = x (1 + Nx), and mean_c Nx = 1 (up to eps)."""
    grn = normact.create("grn", 6, eps=1e-30, dtype=F64)
    with torch.no_grad():
        grn.weight.fill_(1.0)
    x = _x((2, 6, 4, 4))
    nx = grn(x) / x - 1
    _close(nx.mean(dim=1), torch.ones(2, 4, 4, dtype=F64))


def test_grn_channels_last_equals_channels_first_on_the_permuted_input():
    cf = _randomize(normact.create("grn", 6, dtype=F64))
    cl = normact.create("grn", 6, channels_last=True, dtype=F64)
    _copy(cf, cl)
    x = _x((2, 6, 4, 3))
    _close(cl(x.permute(0, 2, 3, 1)), cf(x).permute(0, 2, 3, 1))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_grn_all_zero_map_has_finite_output_and_gradients(dtype):
    """||x||_2 of an all-zero (sample, channel) map: vector_norm's gradient there is 0, not NaN."""
    grn = _randomize(normact.create("grn", 6, dtype=dtype))
    x = _x((2, 6, 4, 4)).to(dtype)
    x[0, 2] = 0.0
    x[1] = 0.0
    x.requires_grad_(True)
    y = grn(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in grn.parameters())


@pytest.mark.parametrize("name", ["frn", "frn_no_tlu", "grn", "layernorm2d", "groupnorm1"])
def test_no_batch_dependence(name):
    """Every statistic is per sample: the output of one sample ignores the rest of the batch."""
    layer = _randomize(normact.create(name, 6, dtype=F64))
    x = _x((4, 6, 3, 5))
    _close(layer(x)[1:2], layer(x[1:2]))


def test_frn_harness_cases_stay_away_from_the_tlu_kink():
    """No `kinks` are declared for frn (its kink y = tau moves with the map), so the harness cases must keep
    every pre-threshold value y at a distance from tau that gradcheck's finite differences (step 1e-6) cannot
    cross."""
    entry = ENTRIES["frn"]
    for case in entry.cases:
        module = prepared(entry, case)
        x = case.make_input(generator())
        y = NF.filter_response_norm(x, module.weight, module.bias, None, module.eps)
        gap = (y - module.tau.view(1, -1, 1, 1)).abs().min().item()
        assert gap > 1e-3, f"frn[{case.id}]: a value lies {gap:.2g} from the TLU kink"


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "needle"),
    [
        ("frn", {}, (2, 6, 5), "(N, 6, H, W)"),
        ("frn_no_tlu", {}, (2, 5, 4, 4), "(N, 6, H, W)"),
        ("grn", {}, (2, 4, 4, 6), "(N, 6, H, W)"),
        ("grn", {"channels_last": True}, (2, 6, 4, 4), "(N, H, W, 6)"),
        ("layernorm2d", {}, (2, 6, 4), "(N, 6, H, W)"),
        ("groupnorm1", {}, (2, 5, 4), "(N, 6, *)"),
        ("groupnorm1", {}, (6,), "(N, 6, *)"),
    ],
)
def test_bad_input_names_the_expected_shape(name, kwargs, shape, needle):
    layer = normact.create(name, 6, **kwargs)
    with pytest.raises(ValueError) as err:
        layer(torch.randn(shape))
    assert needle in str(err.value) and str(shape) in str(err.value)


def test_groupnorm1_rejects_a_single_value_per_sample():
    with pytest.raises(ValueError, match="more than 1 value"):
        normact.create("groupnorm1", 1)(torch.randn(4, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["frn", "frn_no_tlu", "grn", "layernorm2d", "groupnorm1"])
def test_half_precision_large_inputs_do_not_overflow(name, dtype):
    layer = _randomize(normact.create(name, 6, dtype=dtype))
    x = _x((2, 6, 4, 4))
    x = (x / x.abs().max() * 1e4).to(dtype)  # |x| <= 1e4: x^2 overflows float16 unless reduced in float32
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
