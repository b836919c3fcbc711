"""Transformer residual blocks (registry kind ``block``): one :class:`TransformerBlock` whose ``placement`` argument
puts its norms where Pre-LN, Post-LN, Peri-LN, depth-scaled sandwich norm, DeepNorm, LayerNorm Scaling or NormFormer
put them, around a :class:`MultiHeadAttention` that takes any registered attention normalizer."""
