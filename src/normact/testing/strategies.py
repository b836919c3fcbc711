"""Hypothesis strategies over layer configurations (needs the ``hypothesis`` test dependency)."""

from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

from normact.testing.entry import Case, LayerEntry


@st.composite
def cases(draw: st.DrawFn, entry: LayerEntry, max_rank: int = 4, max_size: int = 5) -> Case:
    """A random valid :class:`Case` for ``entry``: rank, sizes and feature count drawn within its layout."""
    base = entry.cases[0]
    layout = entry.layout_for(base)
    rank = draw(st.sampled_from([r for r in layout.valid_ranks(max_rank) if r <= max_rank]))
    shape = [draw(st.integers(1, max_size)) for _ in range(rank)]
    init = dict(base.init)
    if layout.feature_arg is not None:
        for arg in ("normalized_shape", "num_features", "num_channels", "dim"):
            init.pop(arg, None)
        extra, features = layout.init_and_features(draw(st.integers(1, 6)))
        init.update(extra)
        if layout.feature_axis is not None and rank:
            shape[layout.feature_axis] = features
    if layout.even_axis is not None and rank:
        shape[layout.even_axis] = 2 * draw(st.integers(1, max_size))
    if base.train and rank and layout.min_batch > 1:
        shape[0] = max(shape[0], layout.min_batch)
    if layout.min_spatial > 1 and rank >= 3 and shape[-1] * shape[-2] < layout.min_spatial:
        shape[-1] = layout.min_spatial
    return dataclasses.replace(base, init=init, shape=tuple(shape), desc="hypothesis")
