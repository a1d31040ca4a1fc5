"""Next-token sampling: greedy, temperature, top-k (Fan et al. 2018) and top-p (Holtzman et al. 2020)."""

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array


def filtered_logits(logits: Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Logits f32[..., v] divided by ``temperature`` (> 0), tokens outside top-k / top-p set to the float minimum."""
    logits = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]  # [..., 1]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)  # first index reaching top_p
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, neg, logits)
    return logits


def sample(logits: Array, rng: Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """One token per row from logits f32[b, v] -> i32[b]; temperature 0 is greedy.

    ``temperature``, ``top_k`` and ``top_p`` are Python values (static under jit).
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filtered_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)


def token_probs(logits: Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Array:
    """The probabilities f32[..., v] that ``sample`` draws from; temperature 0: the one-hot of the argmax."""
    if temperature == 0.0:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(filtered_logits(logits, temperature, top_k, top_p), axis=-1)
