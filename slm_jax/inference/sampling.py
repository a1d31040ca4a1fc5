"""Next-token sampling: greedy, temperature, top-k (Fan et al. 2018) and top-p (Holtzman et al. 2020)."""

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array


def sample(logits: Array, rng: Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """One token per row from logits f32[b, v] -> i32[b]; temperature 0 is greedy.

    ``temperature``, ``top_k`` and ``top_p`` are Python values (static under jit).
    """
    logits = logits.astype(jnp.float32)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]  # [b, 1]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)  # first index reaching top_p
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
