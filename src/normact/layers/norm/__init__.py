"""Normalization layers, one file per family."""

from normact.layers.norm.batch import BatchNorm1d, BatchNorm2d
from normact.layers.norm.dyt import DyT
from normact.layers.norm.group import GroupNorm, InstanceNorm2d
from normact.layers.norm.layer import LayerNorm, RMSNorm, RMSNormPaper
from normact.layers.norm.scale import ScaleNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "DyT",
    "GroupNorm",
    "InstanceNorm2d",
    "LayerNorm",
    "RMSNorm",
    "RMSNormPaper",
    "ScaleNorm",
]
