"""The catalog of layers. Importing this package imports every family module under ``norm/``, ``act/`` and
``attention/`` (so each registers its layers with :mod:`normact.registry`) and re-exports the classes they list
in ``__all__``."""

import importlib as _importlib
import pkgutil as _pkgutil

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

for _package in ("norm", "act", "attention", "block"):
    for _info in _pkgutil.iter_modules(_importlib.import_module(f"{__name__}.{_package}").__path__):
        if _info.name.startswith("_"):
            continue
        _module = _importlib.import_module(f"{__name__}.{_package}.{_info.name}")
        for _name in getattr(_module, "__all__", ()):
            if _name not in globals():
                globals()[_name] = getattr(_module, _name)
                __all__.append(_name)
