"""Pieces of the implicit long filters of Hyena (Poli et al. 2023, arXiv:2302.10866, Sec. 3.3) and BaseConv.

Zoology's BaseConv (Arora et al. 2023, arXiv:2312.04927) builds its long filters the same way, so
both mixers take these from here.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array

_f32 = jnp.float32
FAN_IN_UNIFORM = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # torch nn.Linear's default


def positional_features(length: int, max_len: int, emb_dim: int) -> Array:
    """f32[length, emb_dim]: [j / (s - 1), cos(f_k w_j), -sin(f_k w_j)] for j < length, s = max_len (Hyena Sec. 3.3)."""
    j = jnp.arange(length, dtype=_f32)
    bands = (emb_dim - 1) // 2
    freqs = jnp.linspace(1e-4, bands - 1, bands, dtype=_f32)
    angle = (2 * math.pi / max_len) * j[:, None] * freqs  # [length, bands]
    return jnp.concatenate([(j / (max_len - 1))[:, None], jnp.cos(angle), -jnp.sin(angle)], axis=-1)
