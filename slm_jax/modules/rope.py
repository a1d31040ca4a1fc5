"""Rotary position embedding (Su et al. 2021, arXiv:2104.09864), half-rotation layout.

The two halves of each head (not interleaved pairs) are rotated, as in Llama/GPT-NeoX and
Hugging Face's ``rotate_half``, so imported checkpoints need no permutation. Options that
imported checkpoints use:

* partial rotary (GPT-NeoX, Phi-3, RecurrentGemma): only the first ``rotary_dim`` channels of a
  head are rotated, with frequencies theta^(-2i / rotary_dim); the rest pass through;
* frequency scaling for long context: ``linear`` (position interpolation, Chen et al. 2023,
  arXiv:2306.15595) divides every frequency by ``factor``; ``llama3`` (Llama 3.1) divides the
  low frequencies by ``factor``, keeps the high ones and interpolates smoothly in between.
"""

import math

import jax.numpy as jnp

from slm_jax.array_typing import Array


def rope_frequencies(rotary_dim: int, theta: float = 10000.0, scaling=None) -> Array:
    """Inverse frequencies f32[rotary_dim / 2]; ``scaling`` is a ``RopeScalingConfig`` or None."""
    inv_freq = theta ** (-jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)
    kind = getattr(scaling, "kind", "none")
    if kind == "linear":
        return inv_freq / scaling.factor
    if kind == "llama3":
        low_wavelen = scaling.original_max_len / scaling.low_freq_factor  # longer waves: divided by factor
        high_wavelen = scaling.original_max_len / scaling.high_freq_factor  # shorter waves: unchanged
        wavelen = 2 * math.pi / inv_freq
        smooth = (scaling.original_max_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        medium = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        return jnp.where((wavelen >= high_wavelen) & (wavelen <= low_wavelen), medium, scaled)
    return inv_freq


def apply_rope(
    x: Array, positions: Array, theta: float = 10000.0, rotary_dim: int | None = None, scaling=None
) -> Array:
    """Rotate x: f32[b, t, h, e] by angle positions * inv_freq; positions: i32[b, t].

    The first ``rotary_dim`` (None = e) channels of each head are rotated; the others pass through.
    """
    e = x.shape[-1]
    r = e if rotary_dim is None else rotary_dim
    if r == 0:
        return x
    inv_freq = rope_frequencies(r, theta, scaling)  # [r/2]
    angle = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, r/2]
    cos = jnp.cos(angle)[:, :, None, :]  # [b, t, 1, r/2]
    sin = jnp.sin(angle)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2, rest = x32[..., : r // 2], x32[..., r // 2 : r], x32[..., r:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1).astype(x.dtype)
