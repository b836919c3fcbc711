"""Data parallelism for batch-dependent layers: batch moments combined across a process group.

With ``sync=True`` a batch-dependent layer computes its batch statistics over the whole data-parallel batch:
each process contributes its sums and counts through a differentiable all-reduce
(``torch.distributed.nn.functional.all_reduce``), so that two processes holding half a batch each produce
the outputs, input gradients and running statistics of one process holding the whole batch (parameter
gradients are each process's share, summed by DDP as usual). Uneven per-process batch sizes are handled
by the counts. Without an initialized process group (or with one process) the local moments are used.

:func:`convert_sync` switches every batch-dependent layer of a model to synced statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def sync_active(process_group: Any = None) -> bool:
    """True when torch.distributed is initialized and the group has more than one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    return torch.distributed.get_world_size(process_group) > 1


def batch_moments(
    x: Tensor, dims: tuple[int, ...], *, sync: bool = False, process_group: Any = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean, biased variance and element count of ``x`` over ``dims`` (the kept axis is the
    channel axis), across the process group when ``sync`` and a group is active. Differentiable."""
    shape = [1 if d in [dim % x.dim() for dim in dims] else s for d, s in enumerate(x.shape)]
    local_count = x.numel() // max(1, torch.Size(shape).numel())
    if not (sync and sync_active(process_group)):
        mean = x.mean(dims)
        var = (x - mean.view(shape)).square().mean(dims)
        return mean, var, torch.tensor(float(local_count), dtype=x.dtype, device=x.device)
    from torch.distributed.nn.functional import all_reduce

    count = torch.tensor([float(local_count)], dtype=x.dtype, device=x.device)
    totals = all_reduce(torch.cat([x.sum(dims), count]), group=process_group)
    count = totals[-1]
    mean = totals[:-1] / count
    sq = all_reduce((x - mean.view(shape)).square().sum(dims), group=process_group)
    return mean, sq / count, count


def convert_sync(model: nn.Module, process_group: Any = None) -> tuple[nn.Module, list[dict[str, str]]]:
    """Switch every batch-dependent layer in ``model`` to statistics synced over ``process_group``.

    normact layers with a ``sync`` switch get ``sync=True``; torch's BatchNorm layers are replaced by
    ``torch.nn.SyncBatchNorm`` (weights and running statistics kept). Returns the model (a new object only
    when the model itself is a torch BatchNorm) and one record per converted module:
    ``{"module": name, "from": class, "to": class}``.
    """
    converted: list[dict[str, str]] = []
    for name, module in model.named_modules():
        if hasattr(module, "sync") and hasattr(module, "process_group"):
            module.sync = True
            module.process_group = process_group
            cls = type(module).__name__
            converted.append({"module": name or "(root)", "from": cls, "to": f"{cls}(sync=True)"})
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
            converted.append({"module": name or "(root)", "from": type(module).__name__, "to": "SyncBatchNorm"})
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return model, converted
