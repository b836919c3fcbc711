"""Activations for activation sparsity: dReLU (TurboSparse), FATReLU (ProSparse) and the top-k activation of
Top-k Transformers (the Lazy Neuron paper). Squared ReLU ("ReLU² Wins") is ``relu2`` in ``rectified.py``."""

from __future__ import annotations

from torch import Tensor

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.layers.act._base import Activation, FunctionalActivation, SplitActivation
from normact.registry import Paper, register

__all__ = ["DReLU", "FATReLU", "TopK"]

TURBO_SPARSE = Paper(
    "Turbo Sparse: Achieving LLM SOTA Performance with Minimal Activated Parameters",
    2024,
    "2406.05955",
    "Song, Xie, Zhang, Wen, Ma, Mi, Chen",
)
PROSPARSE = Paper(
    "ProSparse: Introducing and Enhancing Intrinsic Activation Sparsity within Large Language Models",
    2024,
    "2402.13516",
    "Song, Han, Zhang, Hu, Shi, Li, Chen, Liu, Li, Yang, Sun",
)
LAZY_NEURON = Paper(
    "The Lazy Neuron Phenomenon: On Emergence of Activation Sparsity in Transformers (ICLR 2023)",
    2022,
    "2210.06313",
    "Li, You, Bhojanapalli, Li, Rawat, Reddi, Ye, Chern, Yu, Guo, Kumar",
)

# ProSparse's released checkpoints (SparseLLM/prosparse-llama-2-7b and -13b, config.json) use
# "hidden_act": "fatrelu" with "hidden_act_param": 0.01: the threshold of the final model.
PROSPARSE_THRESHOLD = 0.01


@register(
    "drelu",
    kind="act",
    paper=TURBO_SPARSE,
    formula="(a, b) = split(x, 2, dim); f(x) = max(0, a) * max(0, b)",
    functional=NF.drelu,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    gated=True,
)
class DReLU(SplitActivation):
    r"""dReLU (Song, Xie, Zhang, Wen, Ma, Mi & Chen, "Turbo Sparse", 2024, arXiv:2406.05955).

    .. math::
        (a, b) = \mathrm{split}(x), \qquad f(x) = \max(0, a) \odot \max(0, b)

    TurboSparse's gated FFN applies ReLU to **both** the gate and the up projection,
    :math:`\mathrm{FFN}(x) = (\max(0, xW_\text{gate}) \odot \max(0, xW_\text{up}))\,W_\text{down}` (Sec. 3.2,
    Eq. 2): an output is zero as soon as either branch is non-positive (density 1/4 for independent symmetric
    halves, against 1/2 for ReGLU). The halves follow :class:`SwiGLU`'s layout (first half: gate projection,
    second: up projection); the function is symmetric in them. Non-negative, and non-decreasing in each half.
    Exactly at :math:`a = 0` (or :math:`b = 0`) the derivative with respect to that half is 0, that of ReLU's
    :math:`a \le 0` piece.

    Args:
        dim: the axis to split (its size must be even), as ``torch.nn.GLU``. Default: -1.

    Shape:
        Input ``(*, 2h, *)``; output ``(*, h, *)``.
    """

    _functional = staticmethod(NF.drelu)


@register(
    "fatrelu",
    kind="act",
    paper=PROSPARSE,
    formula="f(x) = x if x >= threshold else 0; threshold = 0.01",
    functional=NF.fatrelu,
    smooth=False,
    monotonic=True,
    bounded_below=True,
)
class FATReLU(FunctionalActivation):
    r"""FATReLU, forced activation threshold ReLU (Song et al., "ProSparse", 2024, arXiv:2402.13516).

    .. math::
        f(x) = \begin{cases} x & x \ge T \\ 0 & x < T \end{cases}, \qquad T = 0.01

    ProSparse's last step, *activation threshold shifting*, replaces ReLU by FATReLU (Kurtz et al., 2020) with a
    small positive threshold :math:`T`, pruning weakly activated neurons. The default :math:`T = 0.01` is the
    ``hidden_act_param`` of the released ProSparse-LLaMA-2-7B/13B checkpoints. The function jumps from 0 to
    :math:`T` at :math:`x = T` (``f(T) = T``, ``f(T - 10^{-6}) = 0``); its derivative is 0 below :math:`T` and 1
    above; exactly at :math:`x = T` it is 1, that of the :math:`x \ge T` piece. ``threshold=0`` gives ReLU.

    Differs from ``torch.nn.Threshold(T, 0)`` only at :math:`x = T` exactly: torch keeps :math:`x > T`, FATReLU
    keeps :math:`x \ge T` (as ProSparse's and Kurtz et al.'s code). The comparison runs in the input's dtype.

    Args:
        threshold: :math:`T \ge 0`. Default: 0.01.
    """

    __constants__ = ["threshold"]
    _hyperparameters = ("threshold",)
    _functional = staticmethod(NF.fatrelu)

    def __init__(self, threshold: float = PROSPARSE_THRESHOLD) -> None:
        super().__init__()
        self.threshold = check_float("threshold", threshold, nonnegative=True)


@register(
    "topk",
    kind="act",
    paper=LAZY_NEURON,
    formula="f(x)_i = max(0, x_i) if x_i is among the k largest of x[..., :] else 0 (ties: lower index first)",
    functional=NF.topk_activation,
    defaults={"k": 1},
    smooth=False,
    bounded_below=True,
    elementwise=False,
    aliases=("topk_relu",),
)
class TopK(Activation):
    r"""Top-k activation of Top-k Transformers (Li et al., "The Lazy Neuron Phenomenon", 2022, arXiv:2210.06313).

    .. math::
        f(x)_i = \begin{cases} \max(0, x_i) & x_i \text{ is among the } k \text{ largest entries of } x \\
        0 & \text{otherwise} \end{cases}

    The paper enforces sparser MLP activation maps by keeping only the :math:`k` largest entries of each token's
    ReLU activation map (the MLP hidden vector after ReLU) and zeroing the rest (Top-k thresholding). Top-k and
    ReLU commute, so this is :math:`\mathrm{Top}_k(\mathrm{ReLU}(x))` as well as
    :math:`\mathrm{ReLU}(\mathrm{Top}_k(x))`: at most :math:`k` non-zeros per vector, and :math:`k \ge d`
    reproduces ReLU. ``relu=False`` gives the plain top-k mask :math:`x \odot 1[x \text{ among the } k
    \text{ largest}]` (the kept entries may be negative).

    Not elementwise: it acts on the last dim (the hidden vector of each token). Entries are ranked by value;
    equal values by position (the lower index ranks higher), so exactly :math:`\min(k, d)` entries are kept,
    deterministically. The mask is piecewise constant: the gradient flows to the kept entries only (times the
    ReLU derivative). The registry's default ``k=1`` (winner-take-all) is a placeholder, not a value from the
    paper: pass the ``k`` of your width.

    Args:
        k: the number of entries kept per vector (>= 1).
        relu: apply ReLU to the kept entries (the paper's form). Default: True.

    Shape:
        Input ``(*, d)`` (at least 1-D); output of the same shape.
    """

    __constants__ = ["k", "relu"]

    def __init__(self, k: int, relu: bool = True) -> None:
        super().__init__()
        self.k = check_int("k", k)
        if not isinstance(relu, bool):
            raise TypeError(f"relu must be a bool, got {type(relu).__name__} {relu!r}")
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        return NF.topk_activation(x, self.k, self.relu)

    def extra_repr(self) -> str:
        return f"k={self.k}" + ("" if self.relu else ", relu=False")
