"""Transformer variants in the bench: placement / attention / depth grids, warm-up, evaluation at a longer context."""

from __future__ import annotations

import hashlib
import json

import pytest

import normact
from normact.bench.report import init_signal, leaderboard, leaderboard_markdown, lr_stability, variant_of
from normact.bench.study import PRESETS, Study, grid
from normact.bench.trial import TrialSpec, _lr_factor, run_trial

TEXT = dict(task="shakespeare", model="gpt", act="gelu", lr=3e-3, steps=4, batch_size=4, eval_batches=2)
SMALL = {"dim": 16, "depth": 2, "heads": 2, "context": 16}


def test_grid_is_the_product_of_the_given_lists():
    assert grid() == ({},) and grid(placement=None, depth=()) == ({},)
    assert grid(placement=("pre", "post"), depth=(2, 6)) == (
        {"placement": "pre", "depth": 2},
        {"placement": "pre", "depth": 6},
        {"placement": "post", "depth": 2},
        {"placement": "post", "depth": 6},
    )


def test_study_variants_multiply_the_grid_and_label_the_trials():
    variants = grid(placement=("pre", "post"), attention=("softmax", "sigmoid"))
    study = Study("s", "shakespeare", "gpt", ("layernorm",), ("gelu",), (1e-3, 3e-3), seeds=(0,),
                  model_options=SMALL, variants=variants)  # fmt: skip
    specs = study.specs()
    assert len(specs) == 2 * 2 * 2 and len({s.key() for s in specs}) == 8
    assert specs[0].model_options == {**SMALL, "placement": "pre", "attention": "softmax"}
    assert (
        specs[0].label() == "shakespeare/gpt norm=layernorm act=gelu placement=pre attention=softmax depth=2 lr=0.001"
    )
    assert variant_of(specs[0].to_dict()) == "placement=pre attention=softmax depth=2"


@pytest.mark.parametrize(
    "variants, model, message",
    [
        (({"placement": "middle"},), "gpt", "placement must be one of"),
        (({"attention": "gelu"},), "gpt", "attention"),
        (({"positions": "alibi"},), "gpt", "positions"),
        (({"placement": "pre"},), "cnn", "apply to the transformers"),
        ((), "gpt", "at least one"),
    ],
)
def test_bad_variants_fail_before_anything_runs(variants, model, message):
    study = Study("s", "shakespeare", model, ("layernorm",), ("gelu",), (1e-3,), variants=variants)
    with pytest.raises(ValueError, match=message):
        study.specs()


def test_eval_context_needs_positions_that_extrapolate():
    study = Study("s", "shakespeare", "gpt", ("layernorm",), ("gelu",), (1e-3,), model_options=SMALL,
                  eval_context=64)  # fmt: skip
    with pytest.raises(ValueError, match="rope"):
        study.specs()


def test_new_spec_fields_leave_the_keys_of_earlier_trials_unchanged():
    spec = TrialSpec(norm="dyt", seed=0, **TEXT)
    legacy = {k: v for k, v in spec.to_dict().items()}
    assert "warmup" not in legacy and "eval_context" not in legacy
    blob = json.dumps(legacy, sort_keys=True, separators=(",", ":"))
    assert spec.key() == hashlib.sha256(blob.encode()).hexdigest()[:20]
    assert TrialSpec(norm="dyt", seed=0, warmup=0.0, **TEXT).key() != spec.key()
    assert TrialSpec.from_dict(TrialSpec(norm="dyt", seed=0, warmup=0.0, **TEXT).to_dict()).warmup == 0.0


def test_warmup_fraction():
    assert [_lr_factor(s, 100) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]  # 5 % by default
    assert _lr_factor(0, 100, 0.0) == 1.0  # no warm-up: the peak from the first step
    assert _lr_factor(0, 100, 0.1) == pytest.approx(0.1) and _lr_factor(9, 100, 0.1) == pytest.approx(1.0)


def test_a_text_trial_with_variants_reports_the_long_context_and_the_signal_after_training():
    spec = TrialSpec(norm="layernorm", seed=0, model_options={**SMALL, "positions": "rope", "attention": "lssa"},
                     eval_context=48, warmup=0.0, **TEXT)  # fmt: skip
    r = run_trial(spec)
    assert r["status"] == "ok" and r["val_loss_long"] is not None and r["val_loss_long"] > 0
    assert r["init_signal"]["modules"] == ["blocks.0", "blocks.1"]
    assert r["final_signal"]["modules"] == ["blocks.0", "blocks.1"]
    assert r["final_signal"]["avg_var"] != r["init_signal"]["avg_var"]  # trained weights, same batch
    rows = leaderboard([r])
    assert rows[0].label == spec.label()
    assert "placement" not in rows[0].label and "attention=lssa" in rows[0].label
    assert "| attention=lssa positions=rope depth=2 |" in leaderboard_markdown([r], "t")
    signal = init_signal([r], "final_signal")
    assert signal[0]["variant"] == "attention=lssa positions=rope depth=2"


def test_lr_stability_keeps_variants_apart():
    def fake(placement, lr, ok):
        spec = TrialSpec(norm="layernorm", seed=0, **{**TEXT, "lr": lr}, model_options={"placement": placement})
        return {"spec": spec.to_dict(), "label": spec.label(), "diverged": not ok, "final_train_loss": 1.0 if ok
                else None, "initial_loss": 4.0}  # fmt: skip

    records = lr_stability([fake("pre", 1e-3, True), fake("pre", 1e-2, True), fake("post", 1e-3, True),
                            fake("post", 1e-2, False)])  # fmt: skip
    best = {r["variant"]: r["max_stable_lr"] for r in records}
    assert best == {"placement=pre": 1e-2, "placement=post": 1e-3}


def test_transformer_presets_are_valid_grids():
    for name in ("placement", "attention", "length-extrapolation", "qk-norm", "dyt-alpha"):
        for study in PRESETS[name]:
            specs = study.specs()
            assert specs and all(s.model == "gpt" for s in specs)
    placement = PRESETS["placement"][0].specs()
    assert {s.model_options["placement"] for s in placement} == {"pre", "post", "peri", "deepnorm", "layernorm_scaling"}
    assert all(s.warmup == 0.0 and s.model_options["depth"] >= 12 for s in placement)
    attention = {s.model_options["attention"] for s in PRESETS["attention"][0].specs()}
    assert len(attention) == len(normact.list_layers("attention"))  # every one of them
