"""Data parallelism for real: 2 processes on the CPU with the gloo backend, each holding an uneven part of a
batch, against 1 process holding the whole batch, for every batch-dependent layer."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import normact
from tests.entries import DISTRIBUTED_CASES

CASES = [
    ("batchnorm2d", (8, 4, 5, 5), {"momentum": 0.1}),
    ("batchnorm2d", (8, 4, 5, 5), {"momentum": None}),
    ("batchnorm1d", (8, 6, 7), {}),
    ("batchnorm1d", (8, 6), {"affine": False}),
    ("evonorm_b0", (8, 4, 5, 5), {}),
    ("evonorm_b1", (8, 4, 3, 3), {"momentum": 0.3}),
    ("evonorm_b2", (8, 4, 3, 3), {}),
    ("batchrenorm", (8, 4, 3, 3), {}),  # r, d inside their bounds
    ("batchrenorm", (8, 4, 3), {"r_max": 1.2, "d_max": 0.3, "momentum": None}),  # clipped
    ("batchrenorm", (8, 5), {"affine": False}),
    ("ibn", (8, 6, 3, 3), {}),
    ("ibn", (8, 5, 2, 3), {"ratio": 0.4, "momentum": None}),
    ("ibn", (8, 4, 3, 3), {"ratio": 0.0}),
    ("bcn", (8, 8, 3, 3), {"num_groups": 4, "momentum": 0.3}),
    ("bcn", (8, 6, 5), {"num_groups": 2, "affine": False}),
]
CASES = [(name, shape, kwargs, None) for name, shape, kwargs in CASES] + list(DISTRIBUTED_CASES)
"""(name, input shape, constructor kwargs, cond_fn): ``cond_fn(shape, generator) -> {name: tensor}`` builds
conditioning inputs with the batch first (masks, maps), split across processes like the input. Entry
modules add their layers' cases through their ``DISTRIBUTED_CASES``."""
SPLIT = (3, 5)  # uneven halves: the counts, not the world size, weight each process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(shape):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5, torch.randn(
        shape, generator=g, dtype=torch.float64
    )


def _layer(name, shape, kwargs, **extra):
    torch.manual_seed(0)
    layer = normact.create(name, shape[1], dtype=torch.float64, **kwargs, **extra)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype) * 0.3)
    return layer


def _cond(cond_fn, shape):
    return {} if cond_fn is None else dict(cond_fn(shape, torch.Generator().manual_seed(2)))


def _step(layer, x, g, cond):
    x = x.clone().requires_grad_(True)
    y = layer(x, **cond)
    (y * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    buffers = {n: b.clone() for n, b in layer.named_buffers()}
    return y.detach(), x.grad, grads, buffers


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = []
        for name, shape, kwargs, cond_fn in CASES:
            x, g = _data(shape)
            lo = 0 if rank == 0 else SPLIT[0]
            hi = SPLIT[0] if rank == 0 else shape[0]
            cond = {k: v[lo:hi] for k, v in _cond(cond_fn, shape).items()}
            layer = _layer(name, shape, kwargs, sync=True)
            for step in range(2):  # two steps: running statistics accumulate and feed back
                out = _step(layer, x[lo:hi] + step, g[lo:hi], cond)
            results.append(out)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{c[2] or 'default'}" for c in CASES])
def test_two_processes_equal_one(two_process_results, index):
    name, shape, kwargs, cond_fn = CASES[index]
    x, g = _data(shape)
    cond = _cond(cond_fn, shape)
    layer = _layer(name, shape, kwargs)
    for step in range(2):
        y, gx, grads, buffers = _step(layer, x + step, g, cond)
    r0, r1 = two_process_results[0][index], two_process_results[1][index]
    torch.testing.assert_close(torch.cat([r0[0], r1[0]]), y)  # outputs
    torch.testing.assert_close(torch.cat([r0[1], r1[1]]), gx)  # input gradients
    for n in grads:  # parameter gradients: each process holds its share; DDP sums them
        torch.testing.assert_close(r0[2][n] + r1[2][n], grads[n])
    for n in buffers:  # running statistics, identical on both processes and equal to the full batch's
        torch.testing.assert_close(r0[3][n], buffers[n])
        torch.testing.assert_close(r1[3][n], buffers[n])


BATCH_DEPENDENT = [n for n in normact.list_layers() if normact.info(n).properties.batch_dependent]


def test_every_batch_dependent_layer_has_a_two_process_case():
    missing = sorted(set(BATCH_DEPENDENT) - {c[0] for c in CASES})
    assert not missing, f"batch-dependent layers without a 2-process case: {missing}"


@pytest.mark.parametrize("name", BATCH_DEPENDENT)
def test_sync_without_a_process_group_is_the_local_layer(name):
    _, shape, kwargs, cond_fn = next(c for c in CASES if c[0] == name)
    x, _ = _data(shape)
    cond = _cond(cond_fn, shape)
    a, b = _layer(name, x.shape, kwargs, sync=True), _layer(name, x.shape, kwargs)
    torch.testing.assert_close(a(x, **cond), b(x, **cond))
    for (key, buf_a), buf_b in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(buf_a, buf_b, msg=key)


def test_convert_sync_reports_every_batch_dependent_layer():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), normact.create("batchnorm2d", 4), nn.BatchNorm2d(4), normact.create("layernorm", 4)
    )
    torch_bn = model[2]
    with torch.no_grad():
        torch_bn.running_mean.fill_(0.5)
    converted_model, report = normact.convert_sync(model)
    assert report == [
        {"module": "1", "from": "BatchNorm2d", "to": "BatchNorm2d(sync=True)"},
        {"module": "2", "from": "BatchNorm2d", "to": "SyncBatchNorm"},
    ]
    assert converted_model[1].sync is True
    assert isinstance(converted_model[2], nn.SyncBatchNorm)
    assert torch.equal(converted_model[2].running_mean, torch.full((4,), 0.5))
    assert not hasattr(converted_model[3], "sync")


def test_every_batch_dependent_layer_accepts_sync():
    import inspect

    for name in normact.list_layers():
        info = normact.info(name)
        if info.properties.batch_dependent:
            params = inspect.signature(info.factory).parameters
            assert "sync" in params and "process_group" in params, f"{name} lacks sync=/process_group="
            assert normact.create(name, 4, sync=True).sync is True
