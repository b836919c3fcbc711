"""Classifier heads on normalized features: the feature-normalized linear head of "Normalization Is All You Need"
(Zhang, Beitollahi, Bie & Chen, 2023)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int, check_tensor, check_trailing
from normact.registry import Paper, Param, register

__all__ = ["FeatureNormHead"]

FEATURE_NORM = Paper(
    "Normalization Is All You Need: Understanding Layer-Normalized Federated Learning under Extreme Label Shift",
    2023,
    "2308.09565",
    "Zhang, Beitollahi, Bie, Chen",
)


@register(
    "feature_norm_head",
    kind="norm",
    paper=FEATURE_NORM,
    formula="logits = scale * (W z / max(||z||_2, eps) + b), the norm over the last dim (features)",
    functional=NF.feature_norm_head,
    params=(
        Param("weight", "(num_classes, in_features)", "U(-1/sqrt(in_features), 1/sqrt(in_features)) (nn.Linear)"),
        Param("bias", "(num_classes,)", "U(-1/sqrt(in_features), 1/sqrt(in_features)) (bias=True only)"),
    ),
    defaults={"num_classes": 10},
    drop_in=False,
    input_layout="last_dims",
    aliases=("fn_head",),
)
class FeatureNormHead(nn.Module):
    r"""Feature-normalized classifier head, FN (Zhang, Beitollahi, Bie & Chen, 2023, arXiv:2308.09565).

    From "Normalization Is All You Need: Understanding Layer-Normalized Federated Learning under Extreme Label
    Shift" (TMLR 2024 as "Understanding the Role of Layer Normalization in Label-Skewed Federated Learning"):

    .. math::
        \mathrm{logits} = \tau\,\big(W \hat z + b\big), \qquad \hat z = \frac{z}{\max(\lVert z\rVert_2, \epsilon)}

    the latent features z normalized to unit length before the linear classifier; the paper identifies this as
    the ingredient of LayerNorm that makes FedAvg work under extreme label shift. The logits are invariant to
    :math:`z \to c z` (c > 0) and bounded by :math:`\tau(\lVert W_k\rVert + |b_k|)`.

    As the authors' code (huawei-noah/Federated-Learning, ``Layer_Normalization/models/cnn.py``: ``F.normalize``
    of the last hidden layer, then ``nn.Linear``, then ``/ tau``): :math:`\epsilon = 10^{-12}`, no bias by default,
    W (and b) initialised as ``nn.Linear``, :math:`\tau = 1/T` for their temperature T (default 1); the scale
    multiplies the bias too, as their division does.

    **Registry kind.** normact's kinds are norm, act, attention, weight (weight reparametrizations) and block
    (residual blocks, width in = width out): this head changes the width (features to classes), so it is
    registered as a ``norm`` with ``drop_in=False``, which keeps it out of the places a norm is swapped in (model
    surgery, the bench's models, transformer blocks).

    Args:
        in_features: the feature width d.
        num_classes: the classes (the registry name's default: 10).
        scale: :math:`\tau > 0`. Default: 1.
        bias: learn b. Default: False (the authors' default).
        eps: the smallest norm divided by. Default: 1e-12.

    Shape:
        Input (*, in_features); output (*, num_classes).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        scale: float = 1.0,
        bias: bool = False,
        eps: float = 1e-12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.num_classes = check_int("num_classes", num_classes)
        self.scale = check_float("scale", scale, positive=True)
        self.eps = check_eps(eps)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_features, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.num_classes, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W and b ~ U(-1/sqrt(in_features), 1/sqrt(in_features)), ``torch.nn.Linear``'s default."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def _check(self, z: object) -> None:
        check_tensor(z, "FeatureNormHead")
        check_trailing(z, (self.in_features,), "FeatureNormHead")  # type: ignore[arg-type]

    def normalized_features(self, z: Tensor) -> Tensor:
        """:math:`\\hat z`, the classifier's unit-norm input (float32 for half inputs)."""
        self._check(z)
        return NF.normalize_features(z, self.eps)

    def forward(self, z: Tensor) -> Tensor:
        self._check(z)
        return NF.feature_norm_head(z, self.weight, self.bias, self.scale, self.eps)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale:g}, "
            f"bias={self.bias is not None}, eps={self.eps:g}"
        )
