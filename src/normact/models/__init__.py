"""normact's own networks built from the registry: a small GPT and ViT on the transformer blocks."""

from normact.models.transformer import GPT, ViT, embedding_norm_of, final_norm_of

__all__ = ["GPT", "ViT", "embedding_norm_of", "final_norm_of"]
