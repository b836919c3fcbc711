"""Layout adapters of swapped layers: :class:`LayoutAdapter` (a norm run where the replaced layer saw another
layout) and :class:`NormAct` (a norm with the fused activation of the timm layer it replaces). Public through
:mod:`normact.surgery.swap`."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LayoutAdapter", "NormAct"]


class LayoutAdapter(nn.Module):
    """Run ``norm`` (which expects ``target_layout``) where the replaced layer saw ``source_layout`` inputs.

    - ``channels_first`` (``(N, C, *)``) -> ``last_dims``: the channels are moved last and back;
    - ``channels_first`` -> ``tokens``: ``(N, C, *)`` is seen as ``(N, L, C)`` tokens (``(N, C)`` as ``(N, 1, C)``);
    - ``last_dims`` (``(*, C)``) -> ``channels_first``: ``(N, *, C)`` is seen as ``(N, C, L)`` (the channel
      statistics pool the batch and all positions, as in the benchmark models);
    - ``last_dims`` -> ``tokens``: ``(N, *, C)`` as ``(N, L, C)``;
    - channels-first layers of a fixed rank (``ranks``, e.g. ``(4,)`` for ``BatchNorm2d``) get ``(N, C, L)`` or
      ``(N, C, L, 1)`` views of other ranks (per-channel statistics are unchanged by flattening the positions).

    The wrapped layer is the submodule ``norm`` (state-dict keys ``norm.weight``...).
    """

    LAYOUTS = ("channels_first", "last_dims", "tokens")

    def __init__(
        self, norm: nn.Module, source_layout: str, target_layout: str, ranks: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        for what, layout in (("source_layout", source_layout), ("target_layout", target_layout)):
            if layout not in self.LAYOUTS:
                raise ValueError(f"{what} must be one of {self.LAYOUTS}, got {layout!r}")
        if source_layout == "tokens":
            raise ValueError("source_layout 'tokens' is not supported: the source is channels_first or last_dims")
        self.norm = norm
        self.source_layout = source_layout
        self.target_layout = target_layout
        self.ranks = tuple(ranks) if ranks else None

    def _ranked(self, x: Tensor) -> Tensor:
        """Apply the channels-first ``norm`` to ``(N, C, *)`` ``x`` in a rank it accepts."""
        if self.ranks is None or x.dim() in self.ranks:
            return self.norm(x)
        rank = 3 if 3 in self.ranks else self.ranks[0]
        y = x.reshape(x.shape[0], x.shape[1], -1)
        y = y.reshape(*y.shape, *([1] * (rank - 3)))
        return self.norm(y).reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"LayoutAdapter expects input with a batch dim and channels, got shape {tuple(x.shape)}")
        if self.source_layout == "channels_first":
            if self.target_layout == "channels_first":
                return self._ranked(x)
            if self.target_layout == "last_dims":
                return self.norm(x.movedim(1, -1)).movedim(-1, 1)
            if x.dim() == 2:
                return self.norm(x.unsqueeze(1)).squeeze(1)
            tokens = x.flatten(2).transpose(1, 2)  # (N, L, C)
            return self.norm(tokens).transpose(1, 2).reshape(x.shape)
        shape = x.shape
        if self.target_layout == "last_dims":
            return self.norm(x)
        tokens = x.reshape(shape[0], -1, shape[-1])  # (N, L, C)
        if self.target_layout == "tokens":
            return self.norm(tokens).reshape(shape)
        return self._ranked(tokens.transpose(1, 2)).transpose(1, 2).reshape(shape)

    def extra_repr(self) -> str:
        ranks = f", ranks={self.ranks}" if self.ranks else ""
        return f"{self.source_layout} -> {self.target_layout}{ranks}"


class NormAct(nn.Module):
    """A norm followed by the dropout and activation of the fused timm layer it replaces (``BatchNormAct2d``,
    ``GroupNormAct``, ``LayerNormAct``...): ``act(drop(norm(x)))``."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(self.norm(x)))
