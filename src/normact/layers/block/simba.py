r"""SimBa (Lee et al., 2024, arXiv:2410.09754): the residual block (registry kind ``block``) and the encoder of
SimBa's actor and critic, observation normalization by running statistics, a linear embedding, pre-LayerNorm
residual MLP blocks and a final LayerNorm:

.. math::
    z = \mathrm{LN}\big(B_L \circ \dots \circ B_1 (W_e\, \mathrm{RSNorm}(o) + b_e)\big), \qquad
    B(x) = x + W_2\,\mathrm{ReLU}(W_1 \mathrm{LN}(x) + b_1) + b_2
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int, check_tensor, shape_str
from normact.layers.act.rectified import ReLU
from normact.layers.block.attention import FeedForward
from normact.layers.norm.layer import LayerNorm
from normact.layers.norm.running_obs import SIMBA, RSNorm
from normact.registry import Param, register

__all__ = ["SimBaBlock", "SimBaEncoder"]

# the standard deviation of a standard normal truncated to (-2, 2): JAX's variance_scaling divides by it
_TRUNCATED_STD = 0.87962566103423978


def jax_he_normal_(weight: Tensor) -> Tensor:
    """JAX/Flax's ``he_normal`` (``variance_scaling(2.0, "fan_in", "truncated_normal")``) on a torch (out, in)
    weight: a normal truncated to two standard deviations, rescaled so that the variance is 2 / fan_in."""
    fan_in = weight.shape[1]
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_STD
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _check_features(x: object, width: int, layer: str, ranks: tuple[int, ...] | None = None) -> None:
    """A floating tensor of ``width`` features last (and a rank in ``ranks``), else TypeError/ValueError."""
    check_tensor(x, layer)
    assert isinstance(x, Tensor)
    if (ranks is None or x.dim() in ranks) and x.dim() >= 1 and x.shape[-1] == width:
        return
    layout = f"(*, {width})" if ranks is None else f"(N, {width}) or (N, L, {width})"
    raise ValueError(f"{layer} expects input of shape {layout}, got shape {shape_str(x.shape)}")


@register(
    "simba_block",
    kind="block",
    paper=SIMBA,
    formula="y = x + W2 ReLU(W1 LN(x) + b1) + b2, hidden width 4 dim, LN eps 1e-6; W1, W2 He-normal (truncated)",
    functional=NF.simba_block,
    params=(
        Param("norm.weight, norm.bias", "(dim,)", "1, 0"),
        Param("mlp.fc1.weight", "(mlp_ratio * dim, dim)", "truncated normal, variance 2 / dim (JAX he_normal)"),
        Param("mlp.fc2.weight", "(dim, mlp_ratio * dim)", "truncated normal, variance 2 / (mlp_ratio dim)"),
        Param("mlp.fc1.bias, mlp.fc2.bias", "(hidden,), (dim,)", "0"),
    ),
    smooth=False,
    input_layout="tokens",
)
class SimBaBlock(nn.Module):
    r"""SimBa's pre-LayerNorm residual feedforward block (Lee et al., 2024, arXiv:2410.09754).

    .. math::
        y = x + W_2\,\mathrm{ReLU}\big(W_1\,\mathrm{LN}(x) + b_1\big) + b_2

    a pre-LayerNorm MLP branch (4x expansion) on an identity shortcut, the linear path from input to output that
    gives SimBa (Lee, Hwang, Kim, Kim, Tai, Subramanian, Wurman, Choo, Stone & Seno) its simplicity bias. With
    :math:`W_2 = 0, b_2 = 0` the block is the identity.

    As the official code (SonyResearch/simba, ``scale_rl/networks/layers.py: ResidualBlock``): Flax's LayerNorm
    (:math:`\epsilon = 10^{-6}`, gain 1, bias 0), both dense layers with biases (0) and kernels from
    ``he_normal`` (a normal truncated to two standard deviations, variance 2 / fan_in: ``jax_he_normal_``).
    The children are ``norm`` (:class:`~normact.LayerNorm`) and ``mlp`` (``fc1``, ``act``, ``fc2``), as in
    :class:`~normact.TransformerBlock`, so that model surgery and the probe see them.

    Args:
        dim: the width d; ``forward`` takes (*, d).
        mlp_ratio: the hidden width is ``round(mlp_ratio * dim)``. Default: 4.
        eps: the LayerNorm's epsilon. Default: 1e-6 (Flax's).
        bias: biases on the two dense layers. Default: True.

    Shape:
        Input (*, dim); output the same shape.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4,
        eps: float = 1e-6,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.mlp_ratio = check_float("mlp_ratio", mlp_ratio, positive=True)
        self.eps = check_eps(eps)
        self.hidden = max(1, round(self.mlp_ratio * self.dim))
        kw = {"device": device, "dtype": dtype}
        self.norm = LayerNorm(self.dim, eps=self.eps, **kw)
        # nn.Linear draws its own init: keep the global RNG where it was, so that reset_parameters() after
        # torch.manual_seed(s) reproduces a block built after it
        with torch.random.fork_rng(devices=[]):
            fc1 = nn.Linear(self.dim, self.hidden, bias=bias, **kw)
            fc2 = nn.Linear(self.hidden, self.dim, bias=bias, **kw)
        self.mlp = FeedForward(fc1, ReLU(), fc2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LayerNorm gain 1 and bias 0; fc1 and fc2 He-normal (truncated, JAX's), biases 0."""
        self.norm.reset_parameters()
        for fc in (self.mlp.fc1, self.mlp.fc2):
            jax_he_normal_(fc.weight)
            if fc.bias is not None:
                nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.dim, "SimBaBlock")
        return NF.residual_branch(x, self.mlp, pre_norm=self.norm)

    def extra_repr(self) -> str:
        return f"{self.dim}, hidden={self.hidden}, eps={self.eps:g}, bias={self.mlp.fc1.bias is not None}"


class SimBaEncoder(nn.Module):
    r"""SimBa's encoder (Lee et al., 2024, arXiv:2410.09754): RSNorm, embedding, residual blocks, LayerNorm.

    RSNorm on the observations, a linear embedding, ``depth`` :class:`SimBaBlock` s and a final LayerNorm,

    .. math::
        z = \mathrm{LN}\big(B_L \circ \dots \circ B_1 (W_e\, \mathrm{RSNorm}(o) + b_e)\big)

    followed in SimBa by the actor's or critic's linear head (not part of this module). As the official code
    (``scale_rl/agents/sac/sac_network.py: SACEncoder`` with ``block_type="residual"``): the embedding is
    orthogonal with gain 1 and bias 0, the LayerNorms use :math:`\epsilon = 10^{-6}`. The official SAC
    configuration (``configs/agent/sac_simba.yaml``) is ``dim=128, depth=1`` for the actor and ``dim=512,
    depth=2`` for the critic. There the observation normalizer is a wrapper of the agent applied to the
    observations only, and the critic's actions are concatenated after it: give ``normalize_input=False`` and
    normalize the observations with an :class:`RSNorm` of your own for a critic.

    RSNorm is stateful: in ``train()`` mode every forward adds its inputs to the running statistics (the
    official agent updates them when it acts, and normalizes replayed batches with frozen statistics: call those
    in ``eval()`` mode, or set ``encoder.obs_norm.eval()``).

    Args:
        in_features: the observation width.
        dim: the embedding width d.
        depth: the number of residual blocks L.
        mlp_ratio: the blocks' hidden width over ``dim``. Default: 4.
        normalize_input: begin with an :class:`RSNorm` (``obs_norm``). Default: True.
        eps: the LayerNorms' epsilon. Default: 1e-6.
        obs_eps: RSNorm's epsilon. Default: 1e-8.

    Shape:
        Input (N, in_features) or (N, L, in_features); output (N, dim) or (N, L, dim).
    """

    def __init__(
        self,
        in_features: int,
        dim: int,
        depth: int,
        mlp_ratio: float = 4,
        normalize_input: bool = True,
        eps: float = 1e-6,
        obs_eps: float = 1e-8,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.dim = check_int("dim", dim)
        self.depth = check_int("depth", depth)
        kw = {"device": device, "dtype": dtype}
        self.obs_norm = RSNorm(self.in_features, eps=obs_eps, **kw) if normalize_input else None
        with torch.random.fork_rng(devices=[]):  # the draws happen in reset_parameters, as in SimBaBlock
            self.embed = nn.Linear(self.in_features, self.dim, **kw)
            self.blocks = nn.ModuleList(SimBaBlock(self.dim, mlp_ratio, eps, **kw) for _ in range(self.depth))
        self.norm = LayerNorm(self.dim, eps=eps, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """RSNorm's statistics reset; the embedding orthogonal (gain 1) with bias 0; the blocks and the final
        LayerNorm reset."""
        if self.obs_norm is not None:
            self.obs_norm.reset_parameters()
        nn.init.orthogonal_(self.embed.weight, gain=1.0)
        nn.init.zeros_(self.embed.bias)
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, "SimBaEncoder", ranks=(2, 3))
        h = x if self.obs_norm is None else self.obs_norm(x)
        h = self.embed(h)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, dim={self.dim}, depth={self.depth}"
