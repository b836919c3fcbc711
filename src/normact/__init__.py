"""normact: the PyTorch lab for normalization layers and activation functions.

>>> import normact
>>> layer = normact.create("dyt", 768)
>>> normact.info("dyt").paper.arxiv
'2503.10622'
"""

from normact import functional, layers, models, probing, surgery
from normact.distributed import convert_sync
from normact.gaussian import GaussianMoments, activation_gain, gaussian_moments
from normact.layers import *  # noqa: F403  (the layer classes)
from normact.layers import __all__ as _layer_names
from normact.models import GPT, NGPT, ViT
from normact.probing import probe
from normact.registry import (
    KINDS,
    LayerInfo,
    LayerType,
    Paper,
    Param,
    Properties,
    UnknownLayerError,
    create,
    get_info,
    info,
    list_layers,
    register,
    resolve,
)
from normact.surgery import (
    convert_preln_to_rmsnorm,
    fold_batchnorm,
    fold_norm_affine,
    recalibrate_batchnorm,
    swap,
    use_attention,
)

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "KINDS",
    "NGPT",
    "GaussianMoments",
    "LayerInfo",
    "LayerType",
    "Paper",
    "Param",
    "Properties",
    "UnknownLayerError",
    "ViT",
    "activation_gain",
    "convert_preln_to_rmsnorm",
    "convert_sync",
    "create",
    "fold_batchnorm",
    "fold_norm_affine",
    "functional",
    "gaussian_moments",
    "get_info",
    "info",
    "layers",
    "list_layers",
    "models",
    "probe",
    "probing",
    "recalibrate_batchnorm",
    "register",
    "resolve",
    "surgery",
    "swap",
    "use_attention",
    *_layer_names,
]
