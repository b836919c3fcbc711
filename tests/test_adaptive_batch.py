"""alpha-BN (You, Li & Zhao, 2021, arXiv:2110.04065) and AdaB2N (Lyu et al., 2023, arXiv:2310.08855) beyond
the generic harness: their limits (eval BatchNorm, test-time normalization, torch BatchNorm with adaptation
off), the linearity of the calibrated statistics in alpha, BatchNorm conversion, AdaB2N's modified momentum and
task-balanced statistics against the official rules, and the two paths the generic 2-process test does not
reach (alpha-BN's evaluation and AdaB2N's task-balanced training), in 2 gloo processes against 1."""

from __future__ import annotations

import copy
import math
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import normact
from normact.layers.norm.adaptive_batch import AlphaBatchNorm
from tests.helpers import perturb_bn, randn

pytestmark = pytest.mark.usefixtures("float64")


# ------------------------------------------------------------------------------------------------ alpha-BN


def _alpha_and_bn(alpha, c=4, cls=nn.BatchNorm2d):
    layer = perturb_bn(normact.create("alpha_bn", c, alpha=alpha))
    bn = cls(c)
    bn.load_state_dict(layer.state_dict())  # torch's keys: a BatchNorm state dict loads both ways
    return layer, bn


def test_alpha_one_is_batchnorm_in_eval():
    layer, bn = _alpha_and_bn(1.0)
    layer.eval(), bn.eval()
    x = randn((5, 4, 3, 3))
    torch.testing.assert_close(layer(x), bn(x))


def test_alpha_zero_is_test_time_normalization_without_running_update():
    layer, bn = _alpha_and_bn(0.0)
    layer.eval(), bn.train()
    before = copy.deepcopy(layer.state_dict())
    x = randn((6, 4, 3, 3), seed=2)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), bn(xb)  # torch BatchNorm in train mode: batch statistics
    torch.testing.assert_close(ya, yb)
    g = randn(x.shape, 1.0, 0.0, seed=3)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(layer.weight.grad, bn.weight.grad)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed in eval"


def test_calibrated_statistics_are_linear_in_alpha():
    x = randn((8, 3, 4, 4), seed=4)
    batch_mean, batch_var = x.mean((0, 2, 3)), x.var((0, 2, 3), correction=0)
    layer = normact.create("alpha_bn", 3, affine=False).eval()
    # running variance = the batch's: the scale is alpha-free, so the output is affine in alpha (the mean term)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.7, -1.2, 0.1]))
        layer.running_var.copy_(batch_var)
    outs = {}
    for alpha in (0.0, 0.25, 0.6, 1.0):
        layer.alpha = alpha
        outs[alpha] = layer(x)
    for alpha in (0.25, 0.6):
        torch.testing.assert_close(outs[alpha], (1 - alpha) * outs[0.0] + alpha * outs[1.0])
    # running mean = the batch's: the implied variance is the mix of the variances (not of the deviations)
    with torch.no_grad():
        layer.running_mean.copy_(batch_mean)
        layer.running_var.copy_(torch.tensor([0.3, 2.5, 1.0]))
    centered = x - batch_mean.view(1, -1, 1, 1)
    for alpha in (0.1, 0.5, 0.9):
        layer.alpha = alpha
        y = layer(x)
        implied = (centered / y).square().mean((0, 2, 3)) - layer.eps
        torch.testing.assert_close(implied, alpha * layer.running_var + (1 - alpha) * batch_var)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_is_torch_batchnorm(momentum):
    layer = perturb_bn(normact.create("alpha_bn", 5, momentum=momentum, alpha=0.3))
    bn = nn.BatchNorm1d(5, momentum=momentum)
    bn.load_state_dict(layer.state_dict())
    for step in range(3):
        x = randn((8, 5, 6), seed=step)
        torch.testing.assert_close(layer(x), bn(x))
    for key, value in bn.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[key], value)


@pytest.mark.parametrize(
    ("cls", "shape"), [(nn.BatchNorm1d, (6, 3)), (nn.BatchNorm2d, (4, 3, 2, 2)), (nn.BatchNorm3d, (2, 3, 2, 2, 2))]
)
def test_from_batchnorm_keeps_weights_statistics_and_settings(cls, shape):
    bn = cls(3, eps=1e-3, momentum=0.2)
    for step in range(3):
        bn(randn(shape, seed=step))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 0.7]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    bn.eval()
    layer = AlphaBatchNorm.from_batchnorm(bn, alpha=0.4)
    assert not layer.training and layer.alpha == 0.4 and layer.eps == 1e-3 and layer.momentum == 0.2
    for key, value in bn.state_dict().items():
        assert torch.equal(layer.state_dict()[key], value), key
    assert layer.weight.dtype == bn.weight.dtype
    layer.alpha = 1.0
    torch.testing.assert_close(layer(randn(shape, seed=9)), bn(randn(shape, seed=9)))


def test_from_batchnorm_converts_normact_and_sync_batchnorm_and_rejects_untracked():
    for bn in (normact.create("batchnorm2d", 4), nn.SyncBatchNorm(4), nn.BatchNorm2d(4, affine=False)):
        layer = AlphaBatchNorm.from_batchnorm(bn)
        assert (layer.weight is None) == (bn.weight is None)
        assert layer.alpha == 0.9
    with pytest.raises(ValueError, match="running statistics"):
        AlphaBatchNorm.from_batchnorm(nn.BatchNorm2d(4, track_running_stats=False))


# -------------------------------------------------------------------------------------------------- AdaB2N


def test_adaptation_disabled_is_torch_batchnorm2d():
    """kappa = 1 (the EMA) and no task balancing: torch BatchNorm2d's outputs, gradients and running mean; the
    running variance averages the biased batch variance (official update), not torch's unbiased one."""
    for layer in (normact.create("adab2n", 4, adapt=False), normact.create("adab2n", 4, num_tasks=3)):
        perturb_bn(layer)
        bn = nn.BatchNorm2d(4)
        bn.load_state_dict({k: v for k, v in layer.state_dict().items() if k in bn.state_dict()})
        running_var = layer.running_var.clone()
        for step in range(3):
            x = randn((6, 4, 3, 3), seed=step) + step
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = layer(xa), bn(xb)  # no task ids: plain batch statistics
            torch.testing.assert_close(ya, yb)
            ya.square().sum().backward()
            yb.square().sum().backward()
            torch.testing.assert_close(xa.grad, xb.grad)
            running_var = 0.9 * running_var + 0.1 * x.var((0, 2, 3), correction=0)
        torch.testing.assert_close(layer.running_mean, bn.running_mean)
        torch.testing.assert_close(layer.running_var, running_var)
        torch.testing.assert_close(layer.weight.grad, bn.weight.grad)
        layer.eval(), bn.eval()
        with torch.no_grad():
            bn.running_var.copy_(layer.running_var)  # eval: BatchNorm with the (biased-average) statistics
        x = randn((3, 4, 3, 3), seed=7)
        torch.testing.assert_close(layer(x), bn(x))


def test_single_task_cumulative_momentum_averages_all_batch_means_exactly():
    layer = normact.create("adab2n", 3, num_tasks=1, kappa=0.0)
    means, variances = [], []
    for step in range(7):
        x = randn((5, 3, 2, 2), scale=1.0 + step, offset=step - 3.0, seed=step)
        layer(x, task_ids=torch.zeros(5, dtype=torch.long))
        means.append(x.mean((0, 2, 3)))
        variances.append(x.var((0, 2, 3), correction=0))
    torch.testing.assert_close(layer.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(layer.running_var, torch.stack(variances).mean(0))
    assert int(layer.num_batches_tracked) == 7


def _official_etas(momentum, kappa, n):
    """The official get_eta over n steps (num_batches_tracked counting from 1)."""
    etas, last = [], None
    for step in range(1, n + 1):
        if kappa == 0.0:
            eta = 1.0 / step
        elif kappa == 1.0:
            eta = momentum
        elif last is None:
            eta = last = momentum**kappa
        else:
            eta = last = last / (last + (1 - momentum) ** kappa)
        etas.append(eta)
    return etas


@pytest.mark.parametrize("kappa", [0.0, 0.1, 0.4, 0.7, 1.0])
def test_modified_momentum_follows_the_official_recurrence(kappa):
    layer = normact.create("adab2n", 2, kappa=kappa, momentum=0.2)
    mean = layer.running_mean.clone()
    for step, eta in enumerate(_official_etas(0.2, kappa, 6)):
        x = randn((4, 2, 3), seed=step)
        layer(x)
        mean = (1 - eta) * mean + eta * x.mean((0, 2))
        torch.testing.assert_close(float(layer.last_eta), eta)
    torch.testing.assert_close(layer.running_mean, mean)
    # the state travels with the state dict: a restored layer continues the sequence
    restored = normact.create("adab2n", 2, kappa=kappa, momentum=0.2)
    restored.load_state_dict(layer.state_dict())
    x = randn((4, 2, 3), seed=99)
    layer(x), restored(x)
    torch.testing.assert_close(restored.running_mean, layer.running_mean)
    assert math.isclose(float(restored.last_eta), _official_etas(0.2, kappa, 7)[-1], rel_tol=1e-12)


def _balanced_layer(num_tasks=3, cur=2, seed=5):
    layer = normact.create("adab2n", 3, num_tasks=num_tasks, kappa=0.4)
    for _ in range(cur):
        layer.end_task()
    with torch.no_grad():
        layer.task_weight.copy_(torch.randn(num_tasks, generator=torch.Generator().manual_seed(seed)))
    return layer


def test_task_balanced_statistics_weight_the_task_means_by_the_dirichlet_posterior():
    """mu = sum_t p_t mu_t, p_t = (exp(w_t) + n_t) / sum_s (exp(w_s) + n_s) over the tasks <= cur_tasks,
    mu_t the mean of task t's samples; the variance likewise around mu."""
    layer = _balanced_layer()
    ids = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    x = randn((8, 3, 2, 2), seed=6)
    y = layer(x, task_ids=ids)
    counts = torch.tensor([5.0, 2.0, 1.0])
    conc = layer.task_weight.detach().exp() + counts
    p = conc / conc.sum()
    mu = sum(p[t] * x[ids == t].mean((0, 2, 3)) for t in range(3))
    var = sum(p[t] * (x[ids == t] - mu.view(1, -1, 1, 1)).square().mean((0, 2, 3)) for t in range(3))
    expected = (x - mu.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + layer.eps).sqrt()
    expected = expected * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expected)
    # regularizer against the updated running statistics; it reaches task_weight
    torch.testing.assert_close(
        layer.loss, (mu - layer.running_mean).square().mean() + (var - layer.running_var).square().mean()
    )
    (grad,) = torch.autograd.grad(layer.loss, layer.task_weight)
    assert grad.abs().sum() > 0
    copy.deepcopy(layer)  # the kept graph does not block copies


def test_task_balanced_statistics_quirks_absent_and_future_tasks():
    """An absent task keeps its prior share (the weights of the present samples sum to < 1, as in the official
    code); tasks after cur_tasks get no share; a balanced batch with equal task weights is plain BN."""
    layer = _balanced_layer(num_tasks=4, cur=2)
    ids = torch.tensor([0, 0, 0, 2, 2, 2, 3, 3])  # task 1 absent, task 3 not started (cur_tasks = 2)
    x = randn((8, 3, 2, 2), seed=8)
    _, mean, _ = normact.functional.adab2n(
        x, layer.running_mean.clone(), layer.running_var.clone(), None, None, layer.task_weight.detach(), ids,
        layer.cur_tasks, True, 0.1, layer.eps, return_stats=True,
    )  # fmt: skip
    conc = layer.task_weight.detach()[:3].exp() + torch.tensor([3.0, 0.0, 3.0])
    p = conc / conc.sum()
    torch.testing.assert_close(mean, p[0] * x[:3].mean((0, 2, 3)) + p[2] * x[3:6].mean((0, 2, 3)))
    with torch.no_grad():
        layer.task_weight.zero_()
    balanced = torch.tensor([0, 0, 1, 1, 2, 2])
    xb = randn((6, 3, 2, 2), seed=9)
    bn = nn.BatchNorm2d(3, affine=False)
    torch.testing.assert_close(normact.functional.adab2n(
        xb, torch.zeros(3), torch.ones(3), None, None, layer.task_weight, balanced, layer.cur_tasks, True
    ), bn(xb))  # fmt: skip


def test_no_balancing_before_the_first_task_ends_and_in_eval():
    layer = _balanced_layer(cur=0)
    bn = nn.BatchNorm2d(3)
    x = randn((6, 3, 2, 2), seed=10)
    ids = torch.tensor([0, 0, 0, 0, 1, 2])
    torch.testing.assert_close(layer(x, task_ids=ids), bn(x))
    layer.end_task()
    assert int(layer.cur_tasks) == 1
    assert not torch.allclose(layer(x, task_ids=ids), bn(x))
    layer.eval()
    torch.testing.assert_close(layer(x, task_ids=ids), layer(x))


def test_task_id_validation():
    layer = normact.create("adab2n", 3)
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        layer(x, task_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        layer(x, task_ids=torch.zeros(4))
    with pytest.raises(ValueError, match="adapt=False"):
        normact.create("adab2n", 3, adapt=False)(x, task_ids=torch.zeros(4, dtype=torch.long))


def test_compiled_balanced_training_matches_eager():
    eager = _balanced_layer()
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
    ids = torch.tensor([0, 1, 1, 2, 2, 2, 0, 1])
    for step in range(3):
        x = randn((8, 3, 2, 2), seed=20 + step)
        torch.testing.assert_close(compiled(x, task_ids=ids), eager(x, task_ids=ids))
        torch.testing.assert_close(compiled_layer.loss, eager.loss)
    for (name, a), b in zip(compiled_layer.named_buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- 2 processes against 1

SPLIT = (3, 5)
IDS = torch.tensor([0, 2, 1, 1, 0, 2, 2, 1])


def _scenarios():
    """(name, builder, shape, train, uses ids): the paths the generic 2-process test does not run."""
    return [
        ("alpha_bn_eval", lambda **kw: normact.create("alpha_bn", 4, alpha=0.5, **kw), (8, 4, 3, 3), False, False),
        ("alpha_bn_eval_2d", lambda **kw: normact.create("alpha_bn", 5, alpha=0.2, **kw), (8, 5), False, False),
        ("adab2n_balanced", lambda **kw: _synced_adab2n(**kw), (8, 4, 3, 3), True, True),
        ("adab2n_balanced_2d", lambda **kw: _synced_adab2n(channels=5, **kw), (8, 5), True, True),
    ]


def _synced_adab2n(channels=4, **kw):
    layer = normact.create("adab2n", channels, num_tasks=3, kappa=0.4, **kw)
    layer.end_task(), layer.end_task()
    return layer


def _prepared(builder, train, **kw):
    torch.manual_seed(0)
    layer = builder(dtype=torch.float64, **kw)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype) * 0.3)
        layer.running_mean.add_(0.2)
        layer.running_var.mul_(1.5)
    return layer.train(train)


def _run(layer, x, g, ids):
    out = []
    for step in range(2):
        xs = (x + step).clone().requires_grad_(True)
        y = layer(xs, task_ids=ids) if ids is not None else layer(xs)
        (y * g).sum().backward()
        loss = getattr(layer, "loss", None)
        out.append(
            (
                y.detach(),
                xs.grad,
                {n: p.grad.clone() for n, p in layer.named_parameters()},
                {n: b.clone() for n, b in layer.named_buffers()},
                None if loss is None else loss.detach(),
            )
        )
        layer.zero_grad()
    return out


def _data(shape):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5, torch.randn(
        shape, generator=g, dtype=torch.float64
    )


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        lo, hi = (0, SPLIT[0]) if rank == 0 else (SPLIT[0], sum(SPLIT))
        results = []
        for _, builder, shape, train, uses_ids in _scenarios():
            x, g = _data(shape)
            layer = _prepared(builder, train, sync=True)
            results.append(_run(layer, x[lo:hi], g[lo:hi], IDS[lo:hi] if uses_ids else None))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("index", range(len(_scenarios())), ids=[s[0] for s in _scenarios()])
def test_two_processes_equal_one_in_the_paths_the_generic_test_skips(two_process_results, index):
    _, builder, shape, train, uses_ids = _scenarios()[index]
    x, g = _data(shape)
    single = _run(_prepared(builder, train), x, g, IDS if uses_ids else None)
    for step, want in enumerate(single):
        r0, r1 = two_process_results[0][index][step], two_process_results[1][index][step]
        torch.testing.assert_close(torch.cat([r0[0], r1[0]]), want[0])  # outputs
        torch.testing.assert_close(torch.cat([r0[1], r1[1]]), want[1])  # input gradients
        for n in want[2]:  # parameter gradients: each process's share, summed by DDP
            torch.testing.assert_close(r0[2][n] + r1[2][n], want[2][n], msg=n)
        for n in want[3]:  # buffers identical on both processes and equal to the whole batch's
            torch.testing.assert_close(r0[3][n], want[3][n], msg=n)
            torch.testing.assert_close(r1[3][n], want[3][n], msg=n)
        if want[4] is not None:  # AdaB2N's regularizer is the whole batch's on every process
            torch.testing.assert_close(r0[4], want[4])
            torch.testing.assert_close(r1[4], want[4])
