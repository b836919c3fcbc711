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

    def specs(self) -> list[TrialSpec]:
        """The trials, in grid order (norm, act, lr, seed)."""
        from normact.bench.models import check_drop_in

        for name in (*self.norms, *self.acts):
            if name.lower() not in ("none", "identity"):
                get_info(name)  # unknown names fail here, with suggestions, before anything runs
                check_drop_in(name)  # so do norms the models cannot plug in
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
                model_options=dict(self.model_options),
            )
            for norm, act, lr, seed in itertools.product(self.norms, self.acts, self.lrs, self.seeds)
        ]


_IMAGE_NORMS = ("none", "batchnorm", "layernorm", "rmsnorm", "dyt", "groupnorm")
_LM_NORMS = ("none", "layernorm", "rmsnorm", "dyt")

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
