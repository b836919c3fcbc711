"""The harness database: one LayerEntry per registered layer, gathered from every module of this package
(each defines ``ENTRIES``); tests/test_layers.py runs every check on each. A module may also define
``DISTRIBUTED_CASES``, ``(name, shape, kwargs, cond_fn)`` tuples that tests/test_distributed.py runs in
2 gloo processes against 1 (see there)."""

import importlib
import pkgutil

ENTRIES = {}
DISTRIBUTED_CASES = []
for _module in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_module.name}")
    DISTRIBUTED_CASES += list(getattr(_mod, "DISTRIBUTED_CASES", ()))
    for _entry in _mod.ENTRIES:
        if _entry.name in ENTRIES:
            raise ValueError(f"two harness entries for {_entry.name!r}")
        ENTRIES[_entry.name] = _entry
