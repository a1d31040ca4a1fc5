"""The gated per-head output norm of GLA and RetNet: rmsnorm(o) per head * scale * swish(r).

Gated Linear Attention (Yang et al. 2024, arXiv:2312.06635) and RetNet (Sun et al. 2023,
arXiv:2307.08621) as fla-org/flash-linear-attention implements them (``FusedRMSNormGated``).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array

_f32 = jnp.float32


class HeadNormGate(nn.Module):
    """rmsnorm(o) over each head's v channels * scale * swish(r): o, r [b, t, h, v] -> dtype[b, t, h v].

    One ``scale`` [v] shared by the heads (fla's FusedRMSNormGated over the head width); the
    statistics and the gate in float32. Used by GLA and RetNet.
    """

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, o: Array, r: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (o.shape[-1],), self.param_dtype)
        o32 = o.astype(_f32)
        o32 = o32 * jax.lax.rsqrt(jnp.mean(o32 * o32, axis=-1, keepdims=True) + self.eps) * scale.astype(_f32)
        y = o32 * jax.nn.silu(r.astype(_f32))
        return y.reshape(*o.shape[:-2], -1).astype(self.dtype)


def head_norm_gate_reference(o: Array, r: Array, scale: Array, eps: float) -> Array:
    """``HeadNormGate`` written out: o, r [b, t, h, v], scale [v] -> [b, t, h v]."""
    normed = o / jnp.sqrt(jnp.mean(o**2, axis=-1, keepdims=True) + eps) * scale
    return (normed * r * jax.nn.sigmoid(r)).reshape(*o.shape[:-2], -1)


def head_norm_gate_flops(value_dim: int) -> float:
    """Elementwise FLOPs per token of ``HeadNormGate`` over value_dim = h v channels: square,
    mean, normalise, scale, swish (about 4) and the gate."""
    return 9 * value_dim
