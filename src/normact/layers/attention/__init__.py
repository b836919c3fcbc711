"""Attention score normalizers (registry kind ``attention``): modules ``forward(q, k, v, *, causal=False,
mask=None, need_weights=False)`` over (batch, heads, tokens, head_dim) tensors, one file per family."""
