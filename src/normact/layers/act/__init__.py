"""Activation functions, one file per family."""

from normact.layers.act.gated import GeGLU, SwiGLU
from normact.layers.act.rectified import ReLU, ReLU2
from normact.layers.act.self_gated import GELU, GoLU, Mish, SiLU, Swish

__all__ = ["GELU", "GeGLU", "GoLU", "Mish", "ReLU", "ReLU2", "SiLU", "SwiGLU", "Swish"]
