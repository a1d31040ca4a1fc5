"""Token embedding with an optional tied output head (Press & Wolf 2017)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array


class Embed(nn.Module):
    """i32[b, t] -> dtype[b, t, d]; ``attend`` maps dtype[b, t, d] -> f32[b, t, v] with the same table."""

    vocab_size: int
    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.initializers.normal(self.init_std), (self.vocab_size, self.width), self.param_dtype
        )

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        return jnp.dot(x.astype(self.dtype), self.embedding.astype(self.dtype).T, preferred_element_type=jnp.float32)


def soft_cap(logits: Array, cap: float) -> Array:
    """cap * tanh(logits / cap) (Gemma 2); identity when cap == 0."""
    return cap * jnp.tanh(logits / cap) if cap else logits
