"""Activation probes: ``normact.probe(model)`` hooks norms, activations, attention and residual blocks and folds
their outputs into mergeable running statistics, read back as a :class:`Report` (analyses, table, JSON, plots).

The package is ``normact.probing``; ``normact.probe`` is the context-manager factory :func:`probe` (a function
and a package of the same name would shadow each other: ``import normact.probe as m`` would return the function).

>>> import torch, normact
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.ReLU())
>>> with normact.probing.probe(model) as p:
...     _ = model(torch.randn(4, 8))
>>> p.report().modules
['1', '2']
"""

from normact.probing.accumulators import (
    HIST_BINS,
    ActivationStats,
    Covariance,
    EntropyStats,
    Histogram,
    Moments,
    TopK,
)
from normact.probing.probe import (
    DEFAULT_MODULES,
    DEFAULT_SAMPLE,
    DEFAULT_STATS,
    SPARSE,
    Probe,
    module_kind,
    probe,
)
from normact.probing.report import ModuleRecord, Report

__all__ = [
    "DEFAULT_MODULES",
    "DEFAULT_SAMPLE",
    "DEFAULT_STATS",
    "HIST_BINS",
    "SPARSE",
    "ActivationStats",
    "Covariance",
    "EntropyStats",
    "Histogram",
    "ModuleRecord",
    "Moments",
    "Probe",
    "Report",
    "TopK",
    "module_kind",
    "probe",
]
