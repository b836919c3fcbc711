"""Every bench trial records the signal propagation of its network at initialisation, without changing the run."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from normact.bench.report import init_signal
from normact.bench.trial import TrialSpec, run_trial
from normact.cli import _build_app

RESNET = dict(task="digits", model="resnet", act="relu", lr=3e-3, steps=8, batch_size=32, model_options={"depth": 14})


@pytest.mark.parametrize(
    "spec",
    [
        TrialSpec(norm="batchnorm", seed=0, **RESNET),  # the probe's forward would update BN's running statistics
        TrialSpec(task="digits", model="mlp", norm="layernorm", act="rrelu", lr=3e-3, seed=1, steps=8, batch_size=32),
    ],
    ids=["resnet-batchnorm", "mlp-rrelu"],  # rrelu draws from the global random stream in training mode
)
def test_recording_leaves_the_training_unchanged(spec):
    with_probe, without = run_trial(spec), run_trial(spec, probe_init=False)
    for key in ("curve", "test_accuracy", "test_loss", "initial_loss", "final_train_loss", "params"):
        assert with_probe[key] == without[key], key
    assert without["init_signal"] is None and with_probe["init_signal"] is not None


def _direct_probe(spec):
    """Reference: the same batch and the same initial weights, variances computed from the activations."""
    from normact.bench.models import build_model
    from normact.bench.tasks import load_task
    from normact.bench.trial import INIT_SIGNAL_SEED

    data = load_task(spec.task)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, norm=spec.norm, act=spec.act, in_shape=data.shape, num_classes=10,
                        **spec.model_options)  # fmt: skip
    gen = torch.Generator().manual_seed(spec.seed + INIT_SIGNAL_SEED)
    x = data.x_train[torch.randint(0, len(data.x_train), (spec.batch_size,), generator=gen)]
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o.detach())) for b in model.blocks]
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [o.double().var(dim=(0, 2, 3), unbiased=False).mean().item() for o in outs]


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_records_every_block_in_depth_order_and_matches_a_direct_computation(norm):
    spec = TrialSpec(norm=norm, seed=0, **RESNET)
    sig = run_trial(spec)["init_signal"]
    assert sig["layers"] == "block" and sig["modules"] == [f"blocks.{i}" for i in range(6)]
    expected = _direct_probe(spec)
    assert sig["avg_var"] == pytest.approx(expected, rel=1e-6)  # float32 sums in the probe
    assert sig["var_growth"] == pytest.approx(expected[-1] / expected[0], rel=1e-6)
    # the downsampling blocks (the first of stages 2 and 3: blocks 2 and 4) have no residual-branch variance
    assert [b is None for b in sig["branch_var"]] == [i in (2, 4) for i in range(6)]
    json.dumps(sig, allow_nan=False)


def test_networks_without_blocks_use_their_activations():
    spec = TrialSpec(task="digits", model="mlp", norm="none", act="tanh", lr=3e-3, seed=0, steps=2, batch_size=32)
    sig = run_trial(spec)["init_signal"]
    assert sig["layers"] == "act" and len(sig["avg_var"]) == 2 and all(b is None for b in sig["branch_var"])


def test_init_signal_table_and_results_command(tmp_path, monkeypatch):
    results = [run_trial(TrialSpec(norm=n, seed=s, **RESNET)) for n in ("none", "batchnorm") for s in (0, 1)]
    rows = {r["norm"]: r for r in init_signal(results)}
    assert rows["none"]["trials"] == 2 and rows["none"]["depth"] == 6
    growth = [r["init_signal"]["var_growth"] for r in results if r["spec"]["norm"] == "none"]
    assert rows["none"]["var_growth"] == pytest.approx(sum(growth) / 2)
    # without normalization (PyTorch's default init) the variance shrinks with depth; BatchNorm keeps it O(1)
    assert rows["none"]["var_growth"] < 0.2 < 0.5 < rows["batchnorm"]["var_growth"] < 5
    assert init_signal([{**results[0], "init_signal": None}]) == []  # trials stored before the probe existed
    monkeypatch.setenv("COLUMNS", "200")
    app, db = _build_app(), tmp_path / "b.db"
    args = ["bench", "--task", "digits", "--model", "resnet", "--norms", "none,batchnorm", "--seeds", "1",
            "--steps", "3", "--executor", "inline", "--db", str(db), "--no-plots", "--no-progress"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "signal propagation at initialisation" in out.output
    shown = CliRunner().invoke(app, ["results", "--db", str(db)])
    assert "signal propagation at initialisation" in shown.output and "9 blocks" in shown.output
    csv_out = CliRunner().invoke(app, ["results", "--db", str(db), "--csv"]).output
    assert "init_var_growth" in csv_out.splitlines()[0]


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "dyt"])
def test_norms_in_layout_adapters_are_not_residual_blocks(norm):
    """The bench wraps token norms in adapters (modules whose only weights are the norm's, output shaped like the
    input): they are not blocks, so a CNN without residual connections reports its activations for every norm."""
    spec = TrialSpec(task="digits", model="cnn", norm=norm, act="relu", lr=3e-3, seed=0, steps=2, batch_size=32)
    sig = run_trial(spec)["init_signal"]
    assert sig["layers"] == "act" and len(sig["modules"]) == 3  # the three ReLUs
