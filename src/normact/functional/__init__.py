"""normact.functional: the stateless form of every layer, parameters and buffers as arguments.

Mirrors ``torch.nn.functional``: ``normact.functional.dyt(x, alpha, weight, bias)`` computes what
``normact.create("dyt", C)`` computes with its own parameters.
"""

from normact.functional.act import geglu, gelu, golu, mish, relu, relu2, silu, swiglu, swish
from normact.functional.norm import (
    batch_norm,
    dyt,
    group_norm,
    instance_norm,
    layer_norm,
    rms_norm,
    rms_norm_paper,
    scale_norm,
)

__all__ = [
    "batch_norm",
    "dyt",
    "geglu",
    "gelu",
    "golu",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "mish",
    "relu",
    "relu2",
    "rms_norm",
    "rms_norm_paper",
    "scale_norm",
    "silu",
    "swiglu",
    "swish",
]
