"""Pieces shared by the functional forms of the norms over the last dimensions (LayerNorm, RMSNorm and their
variants): the input check and the reduced dims."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from normact._checks import check_eps, check_tensor, check_trailing, normalize_shape

__all__: list[str] = []  # private helpers: nothing for normact.functional to re-export


def last_dims(k: int) -> tuple[int, ...]:
    """The last ``k`` dims, ``(-k, ..., -1)``."""
    return tuple(range(-k, 0))


def check_last_dim_input(
    name: str, x: Tensor, normalized_shape: int | Sequence[int], eps: float | None, *, allow_none_eps: bool = False
) -> tuple[int, ...]:
    """The normalized shape as a tuple, after checking ``x`` (a floating tensor ending in that shape) and ``eps``
    (``None`` allowed with ``allow_none_eps``)."""
    shape = normalize_shape(normalized_shape)
    check_tensor(x, name)
    check_trailing(x, shape, name)
    check_eps(eps, allow_none=allow_none_eps)
    return shape
