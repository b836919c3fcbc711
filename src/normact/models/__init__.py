"""normact's own networks built from the registry: a small GPT and ViT on the transformer blocks, and nGPT."""

from normact.models.ngpt import NGPT
from normact.models.transformer import GPT, ViT, embedding_norm_of, final_norm_of

__all__ = ["GPT", "NGPT", "ViT", "embedding_norm_of", "final_norm_of"]
