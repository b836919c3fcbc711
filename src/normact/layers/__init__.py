"""The catalog of layers. Importing this package registers every layer with :mod:`normact.registry`."""

from normact.layers.act import GELU, GeGLU, GoLU, Mish, ReLU, ReLU2, SiLU, SwiGLU, Swish
from normact.layers.norm import (
    BatchNorm1d,
    BatchNorm2d,
    DyT,
    GroupNorm,
    InstanceNorm2d,
    LayerNorm,
    RMSNorm,
    RMSNormPaper,
    ScaleNorm,
)

__all__ = [
    "GELU",
    "BatchNorm1d",
    "BatchNorm2d",
    "DyT",
    "GeGLU",
    "GoLU",
    "GroupNorm",
    "InstanceNorm2d",
    "LayerNorm",
    "Mish",
    "RMSNorm",
    "RMSNormPaper",
    "ReLU",
    "ReLU2",
    "ScaleNorm",
    "SiLU",
    "SwiGLU",
    "Swish",
]
