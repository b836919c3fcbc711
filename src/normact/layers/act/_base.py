"""Shared pieces of the activation modules."""

from __future__ import annotations

from torch import nn


class InplaceActivation(nn.Module):
    """An activation with torch's ``inplace`` switch (overwrite the input with the output)."""

    __constants__ = ["inplace"]

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = bool(inplace)

    def extra_repr(self) -> str:
        return f"inplace={self.inplace}" if self.inplace else ""
