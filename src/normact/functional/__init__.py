"""normact.functional: the stateless form of every layer, parameters and buffers as arguments.

Mirrors ``torch.nn.functional``: ``normact.functional.dyt(x, alpha, weight, bias)`` computes what
``normact.create("dyt", C)`` computes with its own parameters. Every module of this package lists its
functions in ``__all__``; they are all re-exported here (family modules added later included).
"""

import importlib as _importlib
import pkgutil as _pkgutil

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

for _info in _pkgutil.iter_modules(__path__):
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        if _name not in globals():
            globals()[_name] = getattr(_module, _name)
            __all__.append(_name)
