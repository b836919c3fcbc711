"""MsgNorm, the message normalization of DeeperGCN (Li, Xiong, Thabet & Ghanem, 2020) for graph networks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int, check_tensor, check_trailing, shape_str
from normact.layers.norm._channel import add_learnable
from normact.registry import Paper, Param, register

__all__ = ["MessageNorm"]

DEEPER_GCN = Paper("DeeperGCN: All You Need to Train Deeper GCNs", 2020, "2006.07739", "Li, Xiong, Thabet, Ghanem")


@register(
    "msg_norm",
    kind="norm",
    drop_in=False,
    input_layout="tokens",
    paper=DEEPER_GCN,
    formula=(
        "y = s * ||x||_p * msg / max(||msg||_p, eps) per node (norms over the last dim); the caller forms "
        "x + y (DeeperGCN's h' = MLP(h + MsgNorm(h, m)), PyG's MessageNorm semantics)"
    ),
    functional=NF.msg_norm,
    params=(Param("scale", "(1,)", "1 (a parameter with learn_scale=True, else a buffer)"),),
    smooth=False,
    verified_against=("torch_geometric.nn.MessageNorm",),
)
class MessageNorm(nn.Module):
    r"""MsgNorm (Li, Xiong, Thabet & Ghanem, 2020, arXiv:2006.07739): the aggregated message of each node
    rescaled to the norm of the node's features.

    .. math::
        y_v = s \cdot \lVert x_v \rVert_p \cdot \frac{m_v}{\max(\lVert m_v \rVert_p, \epsilon)}

    DeeperGCN updates a node as :math:`h_v' = \mathrm{MLP}(h_v + s\,\lVert h_v\rVert_2\,
    m_v / \lVert m_v\rVert_2)`. Like PyG's ``torch_geometric.nn.MessageNorm`` (whose semantics this layer
    follows, and whose state dict loads into it), the layer returns only the normalized message
    :math:`y_v`; the caller adds it to :math:`x_v` and applies the MLP. ``forward(x, msg)`` takes the
    node features and the aggregated messages, both of shape ``(*, F)``.

    The scale :math:`s` is one scalar (``scale``, shape (1,)), initialized to 1 (paper and PyG); it is
    learned with ``learn_scale=True`` (the default here, the paper's learnable s; PyG's default is False)
    and otherwise kept fixed as a buffer of the same name. :math:`\epsilon = 10^{-12}` is
    ``torch.nn.functional.normalize``'s clamp of the message norm, as in PyG. ``p`` is PyG's ``p`` forward
    argument (default 2), a constructor argument here.

    ``num_features`` has no parameter attached: it only validates the last dimension (None accepts any
    size), and comes first so that ``normact.create("msg_norm", F)`` builds the layer like the other norms.
    The map is not differentiable where :math:`x_v = 0` (the norm), hence ``smooth=False``. float16/bfloat16
    inputs are normalized in float32.

    Args:
        num_features: the feature count F of x and msg, or None for any.
        learn_scale: learn s (a parameter) rather than keep it at 1 (a buffer). Default: True.
        p: the order of the norms, > 0. Default: 2.0.
        eps: lower bound of the message norm. Default: 1e-12.

    Shape:
        x: (*, F), msg: the same shape; output the same shape.
    """

    def __init__(
        self,
        num_features: int | None = None,
        learn_scale: bool = True,
        p: float = 2.0,
        eps: float = 1e-12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = None if num_features is None else check_int("num_features", num_features)
        self.learn_scale = bool(learn_scale)
        self.p = check_float("p", p, positive=True)
        self.eps = check_eps(eps)
        add_learnable(self, "scale", torch.empty(1, device=device, dtype=dtype), self.learn_scale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """scale = 1."""
        with torch.no_grad():
            self.scale.fill_(1.0)

    def forward(self, x: Tensor, msg: Tensor) -> Tensor:
        name = type(self).__name__
        check_tensor(x, name)
        if self.num_features is not None:
            check_trailing(x, (self.num_features,), name)
        elif x.dim() < 1:
            raise ValueError(f"{name} expects input of shape (*, F), got shape {shape_str(x.shape)}")
        check_tensor(msg, f"{name} (msg)")
        if msg.shape != x.shape:
            raise ValueError(
                f"{name} expects msg of the shape of x, {shape_str(x.shape)}, got shape {shape_str(msg.shape)}"
            )
        return NF.msg_norm(x, msg, self.scale, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, learn_scale={self.learn_scale}, p={self.p}, eps={self.eps}"
