"""Reading a buffer that the same forward pass updates in place, safely under torch.compile.

AOTAutograd's min-cut partitioner may recompute, in the backward graph, a value computed from a graph input
instead of saving it; when that input is a buffer the forward mutates (running statistics, streams,
accumulators), the recomputation reads the *updated* buffer and the gradient is silently wrong
(pytorch/pytorch PR #197039, open at the time of writing). Reading such a buffer through an opaque custom op
makes the partitioner save the value it needs. In eager mode the buffer is read directly (no copy).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []  # private helpers: nothing for normact.functional to re-export


@torch.library.custom_op("normact::state_snapshot", mutates_args=())
def _state_snapshot_op(t: Tensor) -> Tensor:
    return t.clone()


@_state_snapshot_op.register_fake
def _(t: Tensor) -> Tensor:
    return torch.empty_like(t)


_state_snapshot_op.register_autograd(lambda ctx, grad: grad)


def read_state(t: Tensor) -> Tensor:
    """The value of a state tensor this forward later updates in place (a snapshot while compiling)."""
    return _state_snapshot_op(t) if torch.compiler.is_compiling() else t
