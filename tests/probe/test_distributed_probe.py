"""Report.all_reduce with 2 gloo processes on the CPU: each process probes an uneven part of the data, and after
the all-reduce both hold the statistics of one process that saw all of it."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from normact.probing import probe
from tests.probe._models import toy_batches, toy_net
from tests.probe.test_report import assert_states_equal

BATCHES = 7
SPLIT = 3  # rank 0 gets batches [0, 3), rank 1 gets [3, 7): uneven parts of uneven batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe(batches, modules=None):
    model = toy_net()
    with probe(model, modules, stats="all") as p:
        for x in batches:
            model(x)
    return p.report()


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        xs = toy_batches(BATCHES)
        part = xs[:SPLIT] if rank == 0 else xs[SPLIT:]
        report = _probe(part)
        assert report.all_reduce() is report
        # a module seen by one process only is kept
        extra = _probe(part[:1], modules="blocks.0.norm1" if rank == 0 else "blocks.1.norm2").all_reduce()
        torch.save((report.state(), extra.state()), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_states():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]


def test_all_reduce_equals_one_process_with_all_the_data(rank_states):
    whole = _probe(toy_batches(BATCHES))
    for state, _ in rank_states:
        assert [r["name"] for r in state["records"]] == list(whole)
        assert_states_equal(state, whole.state())


def test_all_reduce_keeps_modules_seen_by_one_process(rank_states):
    names = [{r["name"] for r in extra["records"]} for _, extra in rank_states]
    assert names[0] == names[1] == {"blocks.0.norm1", "blocks.1.norm2"}


def test_all_reduce_without_a_process_group_is_a_no_op():
    report = _probe(toy_batches(2))
    before = report.state()
    assert report.all_reduce() is report
    assert_states_equal(report.state(), before, rtol=0, atol=0)
