"""normact.surgery.adapt: AdaBN recalibration, REPAIR-style renormalization, BN-only training, alpha-BN
calibration and BN freezing. References are computed without the code under test (float64 moments of recorded
activations, torch's own BatchNorm, deep copies of the unmodified model); the last test is the AdaBN
experiment on MNIST (digits when MNIST is not installed)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normact
from normact.surgery.adapt import (
    ChannelStats,
    calibrate_batchnorm,
    channel_stats,
    find_batchnorms,
    freeze_batchnorm,
    recalibrate_batchnorm,
    renormalize,
    train_norm_affine_only,
    uncalibrate_batchnorm,
    unfreeze_batchnorm,
)


def _batches(n: int = 4, size: int = 16, shape=(3, 10, 10), seed: int = 0, scale: float = 2.0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *shape, generator=g) * scale + 1.0 for _ in range(n)]


class _ModeSpy(nn.Module):
    """Identity that records its training flag at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(self.training)
        return x


def _bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8, momentum=0.3),
        nn.ReLU(),
        nn.Dropout(0.5),
        _ModeSpy(),
        nn.Conv2d(8, 6, 3),
        normact.create("batchnorm2d", 6),  # normact's own BatchNorm (the bench's "batchnorm")
        nn.ReLU(),
    )


def _moments64(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, unbiased=True)


def _recorded_bn_inputs(model: nn.Module, idx: int, batches: list[Tensor]) -> Tensor:
    """The inputs of model[idx] over the batches, every BN in training mode with frozen statistics (momentum 0),
    everything else in eval mode: the activations AdaBN pools, recorded on a copy."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or m is ref[6]:
            m.train()
            m.momentum = 0.0
    seen: list[Tensor] = []
    ref[idx].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().double()))
    with torch.no_grad():
        for b in batches:
            ref(b)
    return torch.cat(seen)


# ------------------------------------------------------------------------------------------------- AdaBN


def test_recalibrate_equals_statistics_of_the_concatenated_data():
    model = _bn_net()
    batches = _batches()
    n = recalibrate_batchnorm(model, batches)
    assert n == 2
    # first BN: its input is conv(x); the stats of the concatenated data, unbiased variance as torch stores it
    with torch.no_grad():
        h = model[0](torch.cat(batches))
    mean, var = _moments64(h)
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-6, atol=1e-6)
    # ... which is what torch's BatchNorm stores after one training forward over the concatenation (momentum 1)
    bn = nn.BatchNorm2d(8, momentum=1.0).train()
    with torch.no_grad():
        bn(h)
    torch.testing.assert_close(model[1].running_var, bn.running_var, rtol=1e-5, atol=1e-6)
    assert int(model[1].num_batches_tracked) == len(batches)
    # second BN (normact's): its inputs with the first BN normalizing with batch statistics, dropout off
    z = _recorded_bn_inputs(_bn_net(), 6, batches)
    mean2, var2 = _moments64(z)
    torch.testing.assert_close(model[6].running_mean.double(), mean2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model[6].running_var.double(), var2, rtol=1e-6, atol=1e-6)


def test_recalibrate_pools_unequal_batches_exactly():
    model = _bn_net()
    batches = _batches(n=2, size=16) + _batches(n=1, size=5, seed=3)
    recalibrate_batchnorm(model, batches)
    with torch.no_grad():
        mean, var = _moments64(model[0](torch.cat(batches)))
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-6, atol=1e-6)


def test_recalibrate_keeps_other_modules_in_eval_and_restores_flags_and_momentum():
    model = _bn_net().train()
    params = {k: v.clone() for k, v in model.named_parameters()}
    recalibrate_batchnorm(model, _batches())
    assert model[4].seen == [False] * 4  # the module after the dropout ran in eval mode: dropout was off
    assert all(m.training for m in model.modules())
    assert model[1].momentum == 0.3 and model[6].momentum == 0.1
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    model.eval()
    recalibrate_batchnorm(model, _batches())
    assert not any(m.training for m in model.modules())


class _DuckBN(nn.Module):
    """A third-party BN-like layer: torch's buffer names, its own update rule (EMA with self.momentum)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.momentum = 0.1
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            m = x.mean((0, 2, 3))
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * m)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * x.var((0, 2, 3)))
            return x - m[:, None, None]
        return x - self.running_mean[:, None, None]


def test_recalibrate_drives_other_bn_layers_with_their_own_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _DuckBN(4))
    batches = _batches(n=5)
    with torch.no_grad():
        per_batch = [model[0](b).double() for b in batches]
    assert recalibrate_batchnorm(model, batches) == 1
    avg_mean = torch.stack([h.mean((0, 2, 3)) for h in per_batch]).mean(0)
    avg_var = torch.stack([h.var((0, 2, 3)) for h in per_batch]).mean(0)
    torch.testing.assert_close(model[1].running_mean.double(), avg_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), avg_var, rtol=1e-5, atol=1e-6)
    assert model[1].momentum == 0.1
    # a fixed momentum: an EMA from the reset values
    recalibrate_batchnorm(model, batches, momentum=0.5)
    ema = torch.zeros(4, dtype=torch.float64)
    for h in per_batch:
        ema = 0.5 * ema + 0.5 * h.mean((0, 2, 3))
    torch.testing.assert_close(model[1].running_mean.double(), ema, rtol=1e-5, atol=1e-6)


def test_recalibrate_reset_false_continues_torch_cumulative_average():
    model = _bn_net()
    first, second = _batches(n=3, seed=1), _batches(n=2, seed=2)
    recalibrate_batchnorm(model, first)
    ref = copy.deepcopy(model).eval()
    ref[1].train()
    ref[1].momentum = None  # torch's own cumulative average, continuing from num_batches_tracked = 3
    with torch.no_grad():
        for b in second:
            ref[1](ref[0](b))
    recalibrate_batchnorm(model, second, reset=False)
    torch.testing.assert_close(model[1].running_mean, ref[1].running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, ref[1].running_var, rtol=1e-5, atol=1e-6)
    assert int(model[1].num_batches_tracked) == 5


def test_recalibrate_forward_for_dict_batches_and_tuples():
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _bn_net()

        def forward(self, pixels: Tensor) -> Tensor:
            return self.net(pixels)

    batches = _batches()
    a, b, c = Wrapped(), Wrapped(), Wrapped()
    recalibrate_batchnorm(a, [{"pixels": x} for x in batches])  # mapping: model(**batch)
    recalibrate_batchnorm(b, [{"image": x, "label": 0} for x in batches], forward=lambda m, d: m(d["image"]))
    recalibrate_batchnorm(c, [(x, torch.zeros(len(x))) for x in batches])  # (inputs, labels)
    for other in (b, c):
        assert torch.equal(a.net[6].running_var, other.net[6].running_var)


def test_recalibrate_errors_and_restoration():
    with pytest.raises(ValueError, match="no batch-norm"):
        recalibrate_batchnorm(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), [torch.randn(4, 3)])
    model = _bn_net()
    recalibrate_batchnorm(model, _batches(n=2, seed=6))
    with pytest.raises(ValueError, match="empty"):
        recalibrate_batchnorm(model, [])
    with pytest.raises(TypeError, match="iterable of batches"):
        recalibrate_batchnorm(model, torch.randn(4, 3, 10, 10))
    with pytest.raises(TypeError, match="forward="):
        recalibrate_batchnorm(model, ["not a tensor"])
    before = copy.deepcopy(model.state_dict())

    class Boom(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("boom")

    model.append(Boom())
    with pytest.raises(RuntimeError, match="boom"):
        recalibrate_batchnorm(model, _batches())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    class Skips(nn.Module):  # a BN that the forward never reaches
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

        def forward(self, x: Tensor) -> Tensor:
            return self.used(x)

    m = Skips()
    with torch.no_grad():
        m.unused.running_mean.fill_(7.0)
    with pytest.raises(ValueError, match="unused"):
        recalibrate_batchnorm(m, [torch.randn(8, 3) + 3])
    assert float(m.used.running_mean.abs().max()) == 0.0
    with pytest.warns(UserWarning, match="unused"):
        assert recalibrate_batchnorm(m, [torch.randn(8, 3) + 3], strict=False) == 1
    assert float(m.used.running_mean.min()) > 1.0 and float(m.unused.running_mean.min()) == 7.0


# ------------------------------------------------------------------------------------------------ REPAIR


class _FooRMSNorm(nn.Module):
    """A transformers-style norm (matched by class name): weight only, features last."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def _conv_tokens_net() -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.conv = nn.Conv2d(3, 8, 3, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.proj = nn.Linear(8, 6)
            self.ln = nn.LayerNorm(6)
            self.out = nn.Linear(6, 5)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu(self.bn(self.conv(x)))
            t = h.flatten(2).transpose(1, 2)  # (N, L, C) tokens
            return self.out(torch.relu(self.ln(self.proj(t))))

    return Net().eval()


def _reference_stats(model: nn.Module, batches, names_axes: dict[str, int]) -> dict[str, tuple[Tensor, Tensor]]:
    """float64 mean and population std of each module's output over the concatenated batches (own hooks)."""
    outs: dict[str, list[Tensor]] = {n: [] for n in names_axes}
    mods = dict(model.named_modules())
    hs = [mods[n].register_forward_hook(lambda m, a, o, n=n: outs[n].append(o.detach().double())) for n in names_axes]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hs:
        h.remove()
    res = {}
    for n, axis in names_axes.items():
        y = torch.cat([o.movedim(axis, -1).reshape(-1, o.shape[axis]) for o in outs[n]])
        res[n] = (y.mean(0), y.std(0, unbiased=False))
    return res


AXES = {"conv": 1, "bn": 1, "proj": -1, "ln": -1}


def _targets(seed: int = 0) -> dict[str, ChannelStats]:
    g = torch.Generator().manual_seed(seed)
    sizes = {"conv": 8, "bn": 8, "proj": 6, "ln": 6}
    return {
        n: ChannelStats(torch.randn(c, generator=g, dtype=torch.float64), torch.rand(c, generator=g) + 0.3)
        for n, c in sizes.items()
    }


def test_channel_stats_matches_float64_reference():
    model, batches = _conv_tokens_net(), _batches(n=3)
    got = channel_stats(model, batches, list(AXES))
    ref = _reference_stats(model, batches, AXES)
    for n in AXES:
        torch.testing.assert_close(got[n].mean, ref[n][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got[n].std, ref[n][1], rtol=1e-9, atol=1e-9)
    assert set(channel_stats(model, batches, nn.Linear)) == {"proj", "out"}
    with pytest.raises(TypeError, match="Conv1d/2d/3d"):
        channel_stats(model, batches, "")  # the root module: not a conv, linear or norm
    with pytest.raises(ValueError, match="matches"):
        channel_stats(model, batches, "nope*")


def test_renormalize_both_hits_the_targets():
    model, batches = _conv_tokens_net(), _batches(n=3)
    targets = _targets()
    assert renormalize(model, batches, targets) == 4
    assert model.conv.bias is not None  # created to carry the shift
    ref = _reference_stats(model, batches, AXES)
    for n, t in targets.items():
        torch.testing.assert_close(ref[n][0], t.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(ref[n][1], t.std.double(), rtol=0, atol=1e-5)


def test_renormalize_rescale_and_reshift():
    batches = _batches(n=3)
    targets = _targets(seed=1)
    model = _conv_tokens_net()
    before = _reference_stats(model, batches, AXES)
    renormalize(model, batches, {"proj": targets["proj"]}, mode="rescale")
    after = _reference_stats(model, batches, {"proj": -1})["proj"]
    torch.testing.assert_close(after[1], targets["proj"].std.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(after[0] / after[1], before["proj"][0] / before["proj"][1], rtol=1e-5, atol=1e-6)

    model = _conv_tokens_net()
    renormalize(model, batches, {"bn": (targets["bn"].mean, None)}, mode="reshift")
    after = _reference_stats(model, batches, {"bn": 1})["bn"]
    torch.testing.assert_close(after[0], targets["bn"].mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(after[1], before["bn"][1], rtol=1e-5, atol=1e-6)


def test_renormalize_without_targets_resets_bn_statistics():
    model, batches = _bn_net(), _batches()
    assert renormalize(model, batches) == 2
    with torch.no_grad():
        mean, var = _moments64(model[0](torch.cat(batches)))
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-6, atol=1e-6)


def test_renormalize_norm_without_affine_and_constant_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Conv2d(4, 3, 1)).eval()
    with torch.no_grad():
        model[2].weight[1].zero_()  # output channel 1 of the last conv is constant (its bias)
    batches = _batches(n=2)
    t1 = ChannelStats(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5, 3.0]))
    t2 = ChannelStats(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([0.5, 0.5, 0.5]))
    with pytest.warns(UserWarning, match="constant"):
        renormalize(model, batches, {"1": t1, "2": t2})
    assert isinstance(model[1].weight, nn.Parameter)  # the BatchNorm got an affine to carry the correction
    ref = _reference_stats(model, batches, {"1": 1, "2": 1})
    torch.testing.assert_close(ref["1"][0], t1.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(ref["1"][1], t1.std.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ref["2"][0], t2.mean, rtol=0, atol=1e-5)  # the constant channel is shifted
    assert float(ref["2"][1][1]) == 0.0
    torch.testing.assert_close(ref["2"][1][[0, 2]], t2.std.double()[[0, 2]], rtol=0, atol=1e-5)


def test_renormalize_weight_only_norms_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), _FooRMSNorm(6), nn.Linear(6, 3)).eval()
    batches = [torch.randn(32, 4) for _ in range(2)]
    std = torch.rand(6, dtype=torch.float64) + 0.5
    with pytest.raises(TypeError, match="no bias"):
        renormalize(model, batches, {"1": (torch.zeros(6), std)})
    renormalize(model, batches, {"1": (None, std)}, mode="rescale")
    torch.testing.assert_close(_reference_stats(model, batches, {"1": -1})["1"][1], std, rtol=0, atol=1e-5)

    with pytest.raises(ValueError, match="needs targets"):
        renormalize(model, batches, mode="rescale")
    with pytest.raises(ValueError, match="not a module"):
        renormalize(model, batches, {"9": (torch.zeros(6), std)})
    with pytest.raises(TypeError, match="Conv1d/2d/3d"):
        renormalize(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), batches, {"1": (torch.zeros(6), std)})
    with pytest.raises(ValueError, match="channels"):
        renormalize(model, batches, {"0": (torch.zeros(5), torch.ones(5))})
    with pytest.raises(ValueError, match="mode"):
        renormalize(model, batches, {"0": (torch.zeros(6), std)}, mode="shift")


def test_renormalize_refuses_a_norm_that_is_not_affine_in_its_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), normact.create("frn", 4)).eval()  # FRN: max(gamma z + beta, tau)
    batches = _batches(n=2)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="miss the targets"):
        renormalize(model, batches, {"1": (torch.full((4,), -3.0), torch.ones(4))})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------- BN only


def test_train_norm_affine_only_resnet():
    from normact.bench.models import build_model

    model = build_model("resnet", norm="batchnorm", act="relu", in_shape=(3, 32, 32), num_classes=10, depth=8)
    channels = sum(m.num_features for m in model.modules() if "BatchNorm" in type(m).__name__)
    assert train_norm_affine_only(model) == 2 * channels
    bn_params = {
        f"{m_name}.{p_name}"
        for m_name, m in model.named_modules()
        if "BatchNorm" in type(m).__name__
        for p_name, _ in m.named_parameters()
    }
    assert len(bn_params) == 2 * len([m for m in model.modules() if "BatchNorm" in type(m).__name__])
    for name, p in model.named_parameters():
        assert p.requires_grad == (name in bn_params), name
    assert train_norm_affine_only(model, include_head=True) == 2 * channels + 64 * 10 + 10
    assert model.head.weight.requires_grad
    assert train_norm_affine_only(model, head="head") == 2 * channels + 64 * 10 + 10


def test_train_norm_affine_only_norm_kinds():
    model = nn.Sequential(
        nn.Linear(8, 8),
        nn.LayerNorm(8),
        nn.GroupNorm(2, 8),
        nn.RMSNorm(8),
        _FooRMSNorm(8),
        normact.create("dyt", 8),  # alpha is not affine: stays frozen
        nn.Linear(8, 2),
    )
    assert train_norm_affine_only(model) == 16 + 16 + 8 + 8 + 16
    assert not model[5].alpha.requires_grad and model[5].weight.requires_grad
    assert not model[0].weight.requires_grad and not model[6].weight.requires_grad
    assert train_norm_affine_only(model, params="all") == 16 + 16 + 8 + 8 + 17
    with pytest.warns(UserWarning, match="IBN"):
        train_norm_affine_only(nn.Sequential(nn.Conv2d(3, 8, 1), normact.create("ibn", 8), nn.BatchNorm2d(8)))
    with pytest.raises(ValueError, match="no normalization"):
        train_norm_affine_only(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="head"):
        train_norm_affine_only(model, head="nope")


# ---------------------------------------------------------------------------------------------- alpha-BN


def _calib_net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 4))
    model.train()
    with torch.no_grad():
        for b in _batches(n=5, seed=4):
            model(b)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_calibrate_alpha_one_is_eval_batchnorm_and_zero_is_batch_statistics():
    x = _batches(n=1, seed=9, scale=3.0)[0] - 2.0  # a shifted test batch
    ref = _calib_net()
    model = copy.deepcopy(ref)
    assert calibrate_batchnorm(model, 1.0) == 1
    assert type(model[1]).__name__ == "AlphaBatchNorm"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
        calibrate_batchnorm(model, 0.0)  # the AlphaBatchNorm now gets alpha 0
        h = ref[0](x)
        bn = ref[1]
        expected = F.batch_norm(h, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        got = model[1](h)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_mean, ref[1].running_mean, rtol=0, atol=0)  # no update
    torch.testing.assert_close(model[1].running_var, ref[1].running_var, rtol=0, atol=0)


def test_calibrate_mean_term_linear_in_alpha():
    ref = _calib_net().double()
    x = _batches(n=1, seed=9)[0].double() + 1.5
    with torch.no_grad():
        h = ref[0](x)
        ref[1].running_var.copy_(h.var((0, 2, 3), unbiased=False))  # variance term constant in alpha
    outs = {}
    for a in (0.0, 0.3, 1.0):
        m = copy.deepcopy(ref)
        calibrate_batchnorm(m, a)
        m.eval()
        with torch.no_grad():
            outs[a] = m[1](h)
    torch.testing.assert_close(outs[0.3], 0.7 * outs[0.0] + 0.3 * outs[1.0], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(outs[0.0], outs[1.0])


def test_uncalibrate_restores_the_original_layers():
    model = _calib_net()
    model[1].weight.requires_grad_(False)
    original = model[1]
    calibrate_batchnorm(model, 0.5)
    with torch.no_grad():
        model[1].running_mean.add_(1.0)
    model.train()
    assert uncalibrate_batchnorm(model) == 1
    assert model[1] is original and type(model[1]) is nn.BatchNorm2d
    assert model[1].training and not model[1].weight.requires_grad
    assert float((model[1].running_mean - _calib_net()[1].running_mean).min()) == pytest.approx(1.0)
    assert uncalibrate_batchnorm(model) == 0


def test_calibrate_errors():
    with pytest.raises(TypeError):
        calibrate_batchnorm(_calib_net())  # alpha has no default
    with pytest.raises(ValueError, match="alpha"):
        calibrate_batchnorm(_calib_net(), 1.5)
    with pytest.raises(TypeError, match="from_batchnorm"):
        calibrate_batchnorm(nn.BatchNorm2d(3), 0.5)
    with pytest.raises(ValueError, match="no BatchNorm"):
        calibrate_batchnorm(nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.warns(UserWarning, match="batchrenorm|BatchRenorm"):
        calibrate_batchnorm(nn.Sequential(nn.BatchNorm2d(3), normact.create("batchrenorm", 3)), 0.5)


# --------------------------------------------------------------------------------------------- freezing


def test_freeze_batchnorm_survives_train():
    model = _bn_net()
    recalibrate_batchnorm(model, _batches(n=2))
    ref = copy.deepcopy(model).eval()
    assert freeze_batchnorm(model) == 2
    assert freeze_batchnorm(model) == 2  # idempotent: one hook each
    assert len(model[1]._forward_pre_hooks) == 1
    model.train()
    state = copy.deepcopy(model.state_dict())
    model[3].eval()  # the dropout off, to compare outputs
    x = _batches(n=1, seed=5)[0]
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(y, ref(x), rtol=0, atol=0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    clone = pickle.loads(pickle.dumps(model))
    clone.train()
    with torch.no_grad():
        clone(x)
    assert torch.equal(clone[1].running_mean, state["1.running_mean"])
    recalibrate_batchnorm(model, _batches(n=2, seed=8))  # an explicit recalibration reaches frozen layers
    assert not torch.equal(model[1].running_mean, state["1.running_mean"])
    state = copy.deepcopy(model.state_dict())
    model.train()
    with torch.no_grad():
        model(x)  # ... which stay frozen
    assert torch.equal(model[1].running_mean, state["1.running_mean"])
    assert unfreeze_batchnorm(model) == 2
    model.train()
    with torch.no_grad():
        model(x)
    assert not torch.equal(model[1].running_mean, state["1.running_mean"])


def test_freeze_batchnorm_affine_and_errors():
    model = _bn_net()
    freeze_batchnorm(model, affine=False)
    assert not model[1].weight.requires_grad and not model[6].bias.requires_grad
    assert model[0].weight.requires_grad
    with pytest.raises(ValueError, match="no batch-norm"):
        freeze_batchnorm(nn.Sequential(nn.LayerNorm(3)))
    with pytest.warns(UserWarning, match="track no running"):
        freeze_batchnorm(nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3, track_running_stats=False)))
    assert set(find_batchnorms(_bn_net())) == {"1", "6"}


# ------------------------------------------------------------------------------ AdaBN experiment (MNIST)


def _raw_scale(data) -> tuple[float, float]:
    """The standardized values of raw intensity 0 and 1 (the data's min and max): x_raw = (x - lo) / (hi - lo)."""
    return float(data.x_train.min()), float(data.x_train.max())


SHIFTS = {
    # on the raw intensity scale r in [0, 1]; applied as x -> lo + (hi - lo) * f((x - lo) / (hi - lo))
    "contrast": lambda r: 0.5 * r + 0.25,
    "bright": lambda r: 0.5 * r + 0.5,
    "dim": lambda r: 0.3 * r,
}


@pytest.fixture(scope="module")
def mnist_experiment():
    from normact.bench.models import build_model
    from normact.bench.tasks import DataUnavailableError, load_task

    try:
        data = load_task("mnist")
    except DataUnavailableError:
        try:
            data = load_task("digits")
        except DataUnavailableError as e:
            pytest.skip(f"neither MNIST nor digits installed: {e}")
    lo, hi = _raw_scale(data)
    torch.manual_seed(0)
    model = build_model("cnn", norm="batchnorm", act="relu", in_shape=data.shape, num_classes=10, width=8)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, len(data.x_train), (64,), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = data.x_test[:2000], data.y_test[:2000]

    def accuracy(m: nn.Module, x: Tensor) -> float:
        with torch.no_grad():
            return sum(
                int((m(x[i : i + 500]).argmax(1) == yt[i : i + 500]).sum()) for i in range(0, len(x), 500)
            ) / len(x)

    results = {}
    for name, f in {"clean": lambda r: r, **SHIFTS}.items():
        shift = lambda x, f=f: lo + (hi - lo) * f((x - lo) / (hi - lo))  # noqa: E731
        before = accuracy(model, shift(xt))
        adapted = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(1)
        unlabeled = [shift(data.x_train[torch.randint(0, len(data.x_train), (128,), generator=gen)]) for _ in range(20)]
        recalibrate_batchnorm(adapted, unlabeled)
        assert not adapted.training
        results[name] = (before, accuracy(adapted, shift(xt)))
    return results


def test_adabn_restores_accuracy_under_intensity_shifts(mnist_experiment):
    # measured (MNIST, seed 0; seeds 1-2 within 0.05): clean 0.876 -> 0.896, contrast 0.108 -> 0.893,
    # bright 0.111 -> 0.801, dim 0.129 -> 0.881 (accuracy before -> after AdaBN)
    clean_before, clean_after = mnist_experiment["clean"]
    assert clean_before > 0.75
    assert clean_after > clean_before - 0.02  # re-estimating on clean data does not hurt
    for name in SHIFTS:
        before, after = mnist_experiment[name]
        assert before < 0.4, (name, before)
        assert after > before + 0.4, (name, before, after)
        assert after > clean_after - 0.2, (name, after, clean_after)
