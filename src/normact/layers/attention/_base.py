"""The interface every attention score normalizer shares."""

from __future__ import annotations

from torch import Tensor, nn


class AttentionNormalizer(nn.Module):
    """Base of the attention score normalizers: ``forward(q, k, v, *, causal=False, mask=None, need_weights=False)``
    with q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) and ``mask`` a boolean tensor of the keys to attend
    ((B, S) padding, or broadcasting to (B, H, T, S)); returns (B, H, T, Dv), or ``(output, weights)`` with
    ``need_weights=True`` (the weights (B, H, T, S), which :func:`normact.probe` reads for its per-head
    entropy). Subclasses give ``_attend(q, k, v, causal, mask, return_weights)``."""

    _hyperparameters: tuple[str, ...] = ()

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = False,
        mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return self._attend(q, k, v, bool(causal), mask, bool(need_weights))

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool
    ) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyperparameters)
