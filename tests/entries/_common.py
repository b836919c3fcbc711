"""Small float64 math shared by the norm entries' references (torch only, like the references themselves: no
normact code). Not an entry module: it defines no harness entries."""

from __future__ import annotations

ENTRIES = []  # tests/entries/__init__.py gathers ENTRIES from every module of the package


def channel_view(x):
    """``(1, -1, 1, ...)``: a per-channel vector shaped against an (N, C, *) input."""
    return (1, -1) + (1,) * (x.dim() - 2)


def reduce_dims(x):
    """The batch and spatial dims ``(0, 2, 3, ...)`` of an (N, C, *) input."""
    return (0, *range(2, x.dim()))


def last_dims(normalized_shape):
    """The trailing dims ``(-k, ..., -1)`` a last-dimension norm reduces over."""
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(-k, 0))


def scale_shift(y, w, b, view=None):
    """``y * w + b``, either optional, reshaped to ``view`` when given."""
    if w is not None:
        y = y * (w if view is None else w.reshape(view))
    if b is not None:
        y = y + (b if view is None else b.reshape(view))
    return y


def affine(y, p, view=None):
    """:func:`scale_shift` with the ``weight`` and ``bias`` of the parameter dict ``p``."""
    return scale_shift(y, p.get("weight"), p.get("bias"), view)


def running_update(p, hp, mean, var_unbiased):
    """BatchNorm's buffers after one training batch: lerped with momentum (1 / batches for None) towards the
    batch mean and unbiased variance, ``num_batches_tracked`` + 1."""
    tracked = p["num_batches_tracked"] + 1
    m = hp["momentum"] if hp["momentum"] is not None else 1.0 / float(tracked)
    return {
        "running_mean": (1 - m) * p["running_mean"] + m * mean,
        "running_var": (1 - m) * p["running_var"] + m * var_unbiased,
        "num_batches_tracked": tracked,
    }


def module_factor(m):
    """The running-average factor a BatchNorm-like module passes to its functional form (0 outside training or
    without running statistics), counting the batch in ``num_batches_tracked`` as the module does."""
    if not m.training or getattr(m, "running_mean", None) is None:
        return 0.0
    m.num_batches_tracked.add_(1)
    return m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
