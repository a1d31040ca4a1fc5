"""RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467) and LayerNorm (Ba et al. 2016, arXiv:1607.06450),
both with float32 statistics; ``make_norm`` picks one from ``model.norm``."""

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


class LayerNorm(nn.Module):
    """(x - mean(x)) / sqrt(var(x) + eps) * scale (+ bias) over the last axis; f32[..., d] -> dtype[..., d].

    The biased variance, as torch's ``nn.LayerNorm`` (BERT, DistilBERT; ModernBERT without the bias).
    """

    eps: float = 1e-5
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = centred * jnp.reciprocal(jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps))
        y = y * scale.astype(jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (d,), self.param_dtype).astype(jnp.float32)
        return y.astype(self.dtype)


def make_norm(
    kind: str, eps: float, offset: float, bias: bool, dtype: Any, param_dtype: Any, name: str | None = None
) -> nn.Module:
    """``kind`` rms -> RMSNorm(eps, offset), layer -> LayerNorm(eps, bias) (``model.norm``, ``model.norm_bias``)."""
    if kind == "layer":
        return LayerNorm(eps, bias, dtype=dtype, param_dtype=param_dtype, name=name)
    return RMSNorm(eps, offset, dtype=dtype, param_dtype=param_dtype, name=name)
