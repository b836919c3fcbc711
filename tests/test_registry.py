"""The registry: create, list_layers, info, name matching, suggestions and the LayerType convention."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import normact
from normact.registry import UnknownLayerError, normalize_name, register


def test_at_least_the_first_layers_are_registered():
    names = normact.list_layers()
    assert len(names) >= 18
    for name in [
        "layernorm", "rmsnorm", "rmsnorm_paper", "batchnorm1d", "batchnorm2d", "groupnorm", "instancenorm2d",
        "scalenorm", "dyt", "relu", "gelu", "gelu_tanh", "silu", "swish", "mish", "relu2", "golu", "swiglu",
        "geglu",
    ]:  # fmt: skip
        assert name in names


def test_list_layers_by_kind():
    norms, acts, attention = normact.list_layers("norm"), normact.list_layers("act"), normact.list_layers("attention")
    blocks = normact.list_layers("block")
    assert "dyt" in norms and "dyt" not in acts
    assert "gelu" in acts and "gelu" not in norms
    assert "softmax_attention" in attention and "softmax" in acts and "pre_ln_block" in blocks
    assert sorted(norms + acts + attention + blocks) == normact.list_layers()
    assert normact.list_layers("weight") == []
    with pytest.raises(ValueError, match="kind must be one of"):
        normact.list_layers("normalization")


@pytest.mark.parametrize("spelling", ["rmsnorm", "RMSNorm", "RMS_Norm", "rms-norm", "  rmsnorm".strip()])
def test_names_match_case_and_underscore_insensitively(spelling):
    assert normact.info(spelling).name == "rmsnorm"
    assert isinstance(normact.create(spelling, 8), normact.RMSNorm)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownLayerError) as excinfo:
        normact.create("dyy", 8)
    assert excinfo.value.suggestions[0] == "dyt"
    assert "did you mean 'dyt'" in str(excinfo.value)
    # It is both a KeyError (lookup) and a ValueError (bad argument).
    assert isinstance(excinfo.value, KeyError) and isinstance(excinfo.value, ValueError)
    with pytest.raises(UnknownLayerError, match="layernorm"):
        normact.info("layer_nrom")


def test_info_metadata():
    info = normact.info("dyt")
    assert info.kind == "norm"
    assert info.paper.arxiv == "2503.10622" and info.paper.year == 2025
    assert "tanh" in info.formula
    assert {p.name: p.init for p in info.params}["alpha"].endswith("0.5")
    assert info.properties.batch_dependent is False
    assert info.functional is normact.functional.dyt
    bn = normact.info("batchnorm2d").properties
    assert bn.batch_dependent and bn.stateful
    relu = normact.info("relu").properties
    assert relu.monotonic and not relu.smooth
    assert normact.info("swiglu").properties.gated
    d = normact.info("gelu_tanh").as_dict()
    assert d["defaults"] == {"approximate": "tanh"} and d["paper"]["arxiv"] == "1606.08415"


def test_registered_variant_defaults():
    assert normact.create("gelu_tanh").approximate == "tanh"
    assert normact.create("gelu").approximate == "none"
    assert normact.create("gelu_tanh", approximate="none").approximate == "none"


def test_aliases():
    assert normact.info("ln").name == "layernorm"
    assert normact.info("squared_relu").name == "relu2"


def test_info_of_a_class():
    assert normact.info(normact.DyT).name == "dyt"
    with pytest.raises(UnknownLayerError):
        normact.info(nn.Linear)


class _Custom(nn.Module):
    def __init__(self, n: int, scale: float = 1.0):
        super().__init__()
        self.n, self.scale = n, scale

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize(
    "layer",
    ["dyt", normact.DyT, functools.partial(normact.DyT, alpha_init=0.5), lambda n: normact.DyT(n)],
    ids=["name", "class", "partial", "lambda"],
)
def test_layer_type_convention(layer):
    module = normact.create(layer, 8)
    assert isinstance(module, normact.DyT)
    assert module(torch.randn(2, 8)).shape == (2, 8)


def test_resolve_accepts_foreign_classes_and_rejects_others():
    assert normact.resolve(nn.LayerNorm) is nn.LayerNorm
    assert normact.create(_Custom, 3, scale=2.0).scale == 2.0
    with pytest.raises(TypeError, match=r"nn\.Module"):
        normact.resolve(int)
    with pytest.raises(TypeError, match="registry name"):
        normact.resolve(3)
    with pytest.raises(TypeError, match=r"not an nn\.Module"):
        normact.create(lambda: 3)


def test_register_rejects_duplicates_and_bad_kinds():
    paper = normact.Paper("x", 2020)
    with pytest.raises(ValueError, match="already registered"):
        register("LayerNorm".lower(), kind="norm", paper=paper, formula="f", functional=lambda x: x)(_Custom)
    with pytest.raises(ValueError, match="kind must be one of"):
        register("brand_new", kind="normalization", paper=paper, formula="f", functional=lambda x: x)
    with pytest.raises(ValueError, match="lower snake case"):
        register("BrandNew", kind="norm", paper=paper, formula="f", functional=lambda x: x)
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register("brand_new2", kind="norm", paper=paper, formula="f", functional=lambda x: x)(int)


def test_normalize_name():
    assert normalize_name("Batch_Norm-2d") == "batchnorm2d"


def test_import_needs_torch_only():
    """`import normact` must not pull optional dependencies (typer, rich, matplotlib, transformers, ray)."""
    import subprocess
    import sys

    code = (
        "import sys, normact; "
        "bad = [m for m in ('typer', 'rich', 'matplotlib', 'transformers', 'ray', 'timm', 'hypothesis') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import normact imported optional dependencies: {out}"
