"""Rotary position embedding (Su et al. 2021, arXiv:2104.09864), half-rotation layout.

The two halves of each head (not interleaved pairs) are rotated, as in Llama/GPT-NeoX and
Hugging Face's ``rotate_half``, so imported checkpoints need no permutation.
"""

import jax.numpy as jnp

from slm_jax.array_typing import Array


def apply_rope(x: Array, positions: Array, theta: float = 10000.0) -> Array:
    """Rotate x: f32[b, t, h, e] by angle positions * theta^(-2i/e); positions: i32[b, t]."""
    e = x.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, e, 2, dtype=jnp.float32) / e)  # [e/2]
    angle = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, e/2]
    cos = jnp.cos(angle)[:, :, None, :]  # [b, t, 1, e/2]
    sin = jnp.sin(angle)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : e // 2], x32[..., e // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
