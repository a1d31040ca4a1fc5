"""RMSNorm with float32 statistics (Zhang & Sennrich 2019, arXiv:1910.07467)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array


class RMSNorm(nn.Module):
    """x / rms(x) * scale over the last axis; f32[..., d] -> dtype[..., d].

    ``scale_offset=1`` gives Gemma's ``(1 + w)`` parameterisation (scale initialised at 0).
    """

    eps: float = 1e-5
    scale_offset: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.zeros if self.scale_offset else nn.initializers.ones
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)  # statistics in f32 whatever the compute dtype
        y = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps))
        return (y * (scale.astype(jnp.float32) + self.scale_offset)).astype(self.dtype)
