"""Studies (a task, a model and a grid over norm x act x lr x seed) and the presets built from them."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from normact.bench.trial import TrialSpec
from normact.registry import get_info


@dataclass(frozen=True)
class Study:
    """A grid of trials on one task and model."""

    name: str
    task: str
    model: str
    norms: tuple[str, ...]
    acts: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 300
    batch_size: int = 64
    optimizer: str = "adamw"
    train_size: int | None = None
    device: str = "cpu"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    claim: str = ""
    variants: tuple[Mapping[str, Any], ...] = ({},)  # model options varied across the grid (placement...)
    warmup: float | None = None  # the warm-up's fraction of the steps (None: 5 %; 0: none)
    eval_context: int | None = None  # text: also evaluate at this longer context

    def specs(self) -> list[TrialSpec]:
        """The trials, in grid order (variant, norm, act, lr, seed)."""
        from normact.bench.models import check_drop_in

        for name in (*self.norms, *self.acts):
            if name.lower() not in ("none", "identity"):
                get_info(name)  # unknown names fail here, with suggestions, before anything runs
                check_drop_in(name)  # so do norms the models cannot plug in
        if not self.variants:
            raise ValueError("variants must hold at least one set of model options ({} for none)")
        for variant in self.variants:
            options = {**self.model_options, **variant}
            check_variant(self.model, options)
            if self.eval_context is not None and options.get("positions", "learned") == "learned":
                raise ValueError(
                    "eval_context (evaluation beyond the training context) needs positions='rope' or 'none': "
                    "learned positions stop at the context"
                )
        return [
            TrialSpec(
                task=self.task,
                model=self.model,
                norm=norm,
                act=act,
                lr=float(lr),
                seed=int(seed),
                steps=self.steps,
                batch_size=self.batch_size,
                optimizer=self.optimizer,
                train_size=self.train_size,
                device=self.device,
                model_options={**self.model_options, **variant},
                warmup=self.warmup,
                eval_context=self.eval_context,
            )
            for variant, norm, act, lr, seed in itertools.product(
                self.variants, self.norms, self.acts, self.lrs, self.seeds
            )
        ]


def check_variant(model: str, options: Mapping[str, Any]) -> None:
    """``ValueError`` for transformer options that name no placement, attention normalizer or position scheme,
    before any trial runs; ``placement``/``attention``/``positions`` on a model without them too."""
    from normact.layers.block.attention import attention_info
    from normact.layers.block.transformer import PLACEMENTS
    from normact.models.transformer import POSITIONS

    transformer = {"placement", "attention", "positions"} & set(options)
    if transformer and model not in ("gpt", "vit"):
        raise ValueError(f"{', '.join(sorted(transformer))} apply to the transformers (gpt, vit), not {model!r}")
    if "placement" in options and options["placement"] not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {options['placement']!r}")
    if "attention" in options:
        attention_info(options["attention"])
    if "positions" in options and (model != "gpt" or options["positions"] not in POSITIONS):
        raise ValueError(f"positions (gpt only) must be one of {POSITIONS}, got {options['positions']!r}")


def grid(**lists: Sequence[Any] | None) -> tuple[dict[str, Any], ...]:
    """The variants of every combination of the given option lists (None or empty lists left out):
    ``grid(placement=("pre", "post"), depth=(6, 12))`` gives four."""
    given = {k: tuple(v) for k, v in lists.items() if v}
    if not given:
        return ({},)
    return tuple(dict(zip(given, combo, strict=True)) for combo in itertools.product(*given.values()))


_IMAGE_NORMS = ("none", "batchnorm", "layernorm", "rmsnorm", "dyt", "groupnorm")
_LM_NORMS = ("none", "layernorm", "rmsnorm", "dyt")
_ATTENTIONS = (
    "softmax",
    "qk_norm",
    "sigmoid",
    "reluformer",
    "rela",
    "normalized",
    "lssa",
    "lssar",
    "lln",
    "galerkin",
    "fourier",
    "norm_linear",
    "nala",
    "regla",
    "ln",
    "relu_ln",
)

PRESETS: dict[str, tuple[Study, ...]] = {
    "default": (
        Study(
            "mnist-cnn",
            "mnist",
            "cnn",
            _IMAGE_NORMS,
            ("relu",),
            (3e-3,),
            steps=300,
            model_options={"width": 16},
            claim="six normalizations in a small CNN on MNIST",
        ),
        Study(
            "shakespeare-gpt",
            "shakespeare",
            "gpt",
            _LM_NORMS,
            ("gelu",),
            (3e-3,),
            steps=300,
            batch_size=32,
            model_options={"dim": 64, "depth": 2, "context": 64},
            claim="four normalizations in a 2-layer pre-norm character GPT",
        ),
    ),
    "quick": (
        Study(
            "digits-cnn",
            "digits",
            "cnn",
            ("none", "batchnorm", "layernorm", "dyt"),
            ("relu",),
            (3e-3,),
            steps=60,
            claim="a smoke test on scikit-learn's digits (seconds)",
        ),
    ),
    "dyt-vs-layernorm": (
        Study(
            "dyt-vs-layernorm",
            "shakespeare",
            "gpt",
            ("layernorm", "dyt", "rmsnorm"),
            ("gelu",),
            (1e-3, 3e-3),
            seeds=(0, 1, 2),
            steps=500,
            batch_size=32,
            model_options={"dim": 64, "depth": 3, "context": 64},
            claim="[59] DyT matches LayerNorm in a pre-norm transformer",
        ),
    ),
    "activations": (
        Study(
            "activations",
            "mnist",
            "mlp",
            ("batchnorm",),
            ("gelu", "silu", "mish", "golu", "relu", "relu2"),
            (3e-3,),
            seeds=(0, 1, 2),
            steps=400,
            model_options={"width": 256, "depth": 3},
            claim="[58, 77, 90, 119, 128] smooth self-gated activations against ReLU and ReLU^2",
        ),
    ),
    "placement": (
        Study(
            "placement",
            "shakespeare",
            "gpt",
            ("layernorm",),
            ("gelu",),
            (1e-3, 3e-3, 1e-2),
            seeds=(0, 1),
            steps=300,
            batch_size=32,
            model_options={"dim": 64, "depth": 12, "context": 64},
            variants=grid(placement=("pre", "post", "peri", "deepnorm", "layernorm_scaling")),
            warmup=0.0,
            claim="[114, 81, 143, 104] a 12-layer char GPT without warm-up: Post-LN fails at learning rates where "
            "Pre-LN trains, DeepNorm repairs it; the residual stream's variance grows with depth under Pre-LN, "
            "Peri-LN and LayerNorm Scaling bound it",
        ),
    ),
    "attention": (
        Study(
            "attention",
            "shakespeare",
            "gpt",
            ("layernorm",),
            ("gelu",),
            (3e-3,),
            seeds=(0, 1),
            steps=300,
            batch_size=32,
            model_options={"dim": 64, "depth": 4, "context": 64},
            variants=grid(attention=tuple(_ATTENTIONS)),
            claim="[21, 46, 51, 61, 78, 102, 112, 138, 146, 147, 154, 157] every attention normalizer in a 4-layer "
            "char GPT at equal steps",
        ),
    ),
    "length-extrapolation": (
        Study(
            "length-extrapolation",
            "shakespeare",
            "gpt",
            ("layernorm",),
            ("gelu",),
            (3e-3,),
            seeds=(0, 1, 2),
            steps=300,
            batch_size=32,
            model_options={"dim": 64, "depth": 4, "context": 64, "positions": "rope"},
            variants=grid(attention=("softmax", "lssa", "lssar")),
            eval_context=256,
            claim="[138] LSSA trained at T = 64 and evaluated at 4T = 256 against softmax (rotary positions)",
        ),
    ),
    "qk-norm": (
        Study(
            "qk-norm",
            "shakespeare",
            "gpt",
            ("layernorm",),
            ("gelu",),
            (3e-3, 1e-2, 3e-2),
            seeds=(0, 1),
            steps=300,
            batch_size=32,
            model_options={"dim": 64, "depth": 4, "context": 64},
            variants=grid(attention=("softmax", "qk_norm")),
            warmup=0.0,
            claim="[61] QK-Norm against softmax attention at learning rates where the attention logits grow",
        ),
    ),
    "dyt-alpha": (
        Study(
            "dyt-alpha-layernorm",
            "shakespeare",
            "gpt",
            ("layernorm",),
            ("gelu",),
            (3e-3,),
            seeds=(0, 1),
            steps=500,
            batch_size=32,
            model_options={"dim": 64, "context": 64},
            variants=grid(depth=(2, 6)),
            claim="[59] the LayerNorm baseline of the DyT alpha0 sweep",
        ),
        Study(
            "dyt-alpha",
            "shakespeare",
            "gpt",
            ("dyt",),
            ("gelu",),
            (3e-3,),
            seeds=(0, 1),
            steps=500,
            batch_size=32,
            model_options={"dim": 64, "context": 64},
            variants=grid(depth=(2, 6), norm_kwargs=tuple({"alpha_init": a} for a in (0.05, 0.1, 0.2, 0.5, 1.0))),
            claim="[59] DyT's alpha0 swept at two depths: does some alpha0 match LayerNorm?",
        ),
    ),
    "no-norm": (
        Study(
            "no-norm",
            "digits",
            "resnet",
            ("none", "batchnorm"),
            ("relu",),
            (0.01, 0.03, 0.1, 0.3, 1.0),
            seeds=(0, 1),
            steps=200,
            optimizer="sgd",
            model_options={"depth": 32, "width": 16},
            claim="[1, 35] a deep ResNet without normalization diverges at learning rates where BatchNorm trains",
        ),
    ),
}


def customize(studies: Sequence[Study], **overrides: Any) -> tuple[Study, ...]:
    """The studies with the non-None ``overrides`` (norms, acts, lrs, seeds, steps, ...) applied."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return tuple(replace(s, **changes) for s in studies)
