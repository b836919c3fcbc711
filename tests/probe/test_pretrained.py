"""The probe on pretrained models that install offline (normact.zoo), with no model-specific code: SmolLM2-135M's
massive activations (Sun et al., 2024, arXiv:2402.17762), none in all-MiniLM-L6-v2, MobileNetV2's blocks."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import normact
from tests.helpers import zoo_model_or_skip


@pytest.fixture(scope="module")
def smollm2():
    return zoo_model_or_skip("smollm2")


def _probe(zm, data, **kwargs):
    with torch.no_grad(), normact.probe(zm.model) as p:
        for batch in zm.batches(data, **kwargs):
            zm.run(batch)
    return p.report()


def test_smollm2_massive_activations_in_one_residual_dimension(smollm2):
    report = _probe(smollm2, "text", batch_size=4, num_batches=2, seq_len=32)
    blocks = [row["module"] for row in report.signal_propagation()]
    assert len(blocks) == 30  # the decoder layers, found as residual blocks without being named
    massive = report.massive_activations()  # defaults: |x| > 100 and > 1000 x the layer's median
    assert massive, "no massive activation found"
    # a single residual dimension: 507 holds the largest value of every module and nearly all the records (a
    # second dimension, 247, reaches about 1,800, just over 1000x the median, in a layer or two for some texts)
    dims = Counter(m["dim"] for m in massive)
    assert dims.most_common(1)[0][0] == 507 and dims[507] >= 0.8 * len(massive)
    largest = {}
    for m in massive:
        if abs(m["value"]) > abs(largest.get(m["module"], {"value": 0})["value"]):
            largest[m["module"]] = m
    assert {m["dim"] for m in largest.values()} == {507}
    assert all(m["module"] in blocks for m in massive)  # in the residual stream (block outputs)
    assert all(m["token"] == 0 for m in massive)  # at the first token
    depth = sorted({blocks.index(m["module"]) for m in largest.values()})
    assert 3 <= depth[0] <= 15 and depth[-1] >= 25  # from the early-middle layers on
    assert depth == list(range(depth[0], depth[-1] + 1))  # in every layer from there
    assert all(1e4 <= abs(m["value"]) < 1e5 for m in largest.values())  # the reported value is about 17,860
    assert all(1e3 <= m["ratio"] < 1e5 for m in largest.values())  # thousands of times the median
    assert all(0.5 < m["median"] < 20 for m in massive)


def test_minilm_has_no_massive_activations():
    zm = zoo_model_or_skip("minilm")
    report = _probe(zm, "text", batch_size=4, num_batches=2, seq_len=32)
    assert not report.massive_activations()
    rows = report.summary()
    assert sum(r["class"] == "LayerNorm" for r in rows) == 13
    blocks = report.signal_propagation()
    # post-LN: the innermost modules holding a norm and other weights with an output shaped like an input are the
    # sublayer outputs LayerNorm(f(h) + x), two per layer, in depth order
    sub = [f"encoder.layer.{i}.{s}" for i in range(6) for s in ("attention.output", "output")]
    assert [r["module"] for r in blocks] == sub
    assert max(r["max_abs"] for r in rows if r["kind"] == "block") < 50  # post-LN: |h| stays about 10


def test_mobilenet_v2_blocks_and_batchnorm_statistics():
    zm = zoo_model_or_skip("mobilenet_v2")
    report = _probe(zm, "images", batch_size=4, num_batches=2)
    rows = report.signal_propagation()
    assert len(rows) == 17  # every inverted-residual block, found without naming it
    with_skip = [m for m in zm.model.modules() if getattr(m, "use_res_connect", False)]
    assert sum(r["branch_var"] is not None for r in rows) == len(with_skip) == 10
    kinds = Counter(r["kind"] for r in report.summary())
    assert kinds["norm"] == 52 and kinds["act"] == 35 and kinds["block"] == 17


def test_minilm_attention_entropy_per_head_from_the_command_line(tmp_path, monkeypatch):
    zoo_model_or_skip("minilm")  # skips when the package is missing
    from typer.testing import CliRunner

    from normact.cli import _build_app
    from normact.probing import Report

    monkeypatch.setenv("COLUMNS", "200")
    args = ["probe", "minilm", "--batches", "1", "--batch-size", "2", "--seq-len", "16", "--out", str(tmp_path),
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(_build_app(), args)
    assert result.exit_code == 0, result.output
    entropy = Report.from_json(tmp_path / "report.json").attention_entropy()
    # one record per layer, from the innermost attention module (BertSelfAttention inside BertAttention)
    assert [e["module"] for e in entropy] == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    assert all(len(e["heads"]) == 12 and all(0 <= h <= math.log(16) + 1e-6 for h in e["heads"]) for e in entropy)
    assert (tmp_path / "attention_entropy.png").exists()
