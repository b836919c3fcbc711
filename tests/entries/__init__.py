"""The harness database: one LayerEntry per registered layer, gathered from every module of this package
(each defines ``ENTRIES``); tests/test_layers.py runs every check on each."""

import importlib
import pkgutil

ENTRIES = {}
for _module in pkgutil.iter_modules(__path__):
    for _entry in importlib.import_module(f"{__name__}.{_module.name}").ENTRIES:
        if _entry.name in ENTRIES:
            raise ValueError(f"two harness entries for {_entry.name!r}")
        ENTRIES[_entry.name] = _entry
