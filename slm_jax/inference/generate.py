"""Prefill + cached decode, compiled: the decode runs as one ``lax.scan`` per chunk of tokens.

``generate`` yields chunks of new tokens so a caller can stream them; with ``chunk`` equal to
``max_new_tokens`` the whole decode is one compiled loop with no Python per token.
"""

from functools import partial
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.inference.sampling import sample


@partial(jax.jit, static_argnums=0)
def prefill(model: nn.Module, params: PyTree, tokens: Array, cache: PyTree) -> tuple[Array, PyTree]:
    """Run the prompt i32[b, t] through the model; return the last logits f32[b, v] and the cache."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits, cache = model.apply(params, tokens, positions, cache)
    return logits[:, -1], cache


@partial(jax.jit, static_argnums=(0, 6, 7, 8, 9), donate_argnums=(2,))
def decode(model, params, cache, logits, position, rng, n, temperature, top_k, top_p):
    """Sample ``n`` tokens in one compiled loop; returns (tokens i32[b, n], cache, logits, position, rng)."""

    def one(carry, _):
        cache, logits, position, rng = carry
        rng, key = jax.random.split(rng)
        token = sample(logits, key, temperature, top_k, top_p)  # [b]
        pos = jnp.broadcast_to(position, token.shape)[:, None]
        new_logits, cache = model.apply(params, token[:, None], pos, cache)
        return (cache, new_logits[:, -1], position + 1, rng), token

    (cache, logits, position, rng), tokens = jax.lax.scan(one, (cache, logits, position, rng), None, length=n)
    return tokens.T, cache, logits, position, rng


def generate(
    model: nn.Module,
    params: PyTree,
    prompt: np.ndarray,
    max_new_tokens: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    chunk: int | None = None,
) -> Iterator[np.ndarray]:
    """An iterator of i32[b, <= chunk] arrays of new tokens continuing ``prompt`` i32[b, t].

    The arguments are checked here, before anything is computed or yielded, so a caller that
    streams the output has printed nothing when a ConfigError is raised.
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ConfigError("The prompt is empty; give at least one token (a non-empty --prompt).")
    if max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens must be positive, got {max_new_tokens}.")
    if not (temperature >= 0 and top_k >= 0 and 0 < top_p <= 1):
        raise ConfigError("Sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1.")
    if chunk is not None and chunk < 0:
        raise ConfigError(f"--chunk must be positive (or 0 for one loop over all new tokens), got {chunk}.")
    return _stream(
        model,
        params,
        prompt,
        max_new_tokens,
        seed,
        temperature,
        top_k,
        top_p,
        min(chunk or max_new_tokens, max_new_tokens),
    )


def _stream(
    model: nn.Module,
    params: PyTree,
    prompt: np.ndarray,
    max_new_tokens: int,
    seed: int,
    temperature: float,
    top_k: int,
    top_p: float,
    chunk: int,
) -> Iterator[np.ndarray]:
    """The prefill, then one compiled decode loop per ``chunk`` tokens (arguments checked by ``generate``)."""
    b, t = prompt.shape
    cache = model.init_cache(b, t + max_new_tokens + chunk)  # + chunk: the last chunk may overrun
    logits, cache = prefill(model, params, jnp.asarray(prompt), cache)
    position, rng = jnp.int32(t), jax.random.key(seed)
    done = 0
    while done < max_new_tokens:
        tokens, cache, logits, position, rng = decode(
            model, params, cache, logits, position, rng, chunk, float(temperature), int(top_k), float(top_p)
        )
        take = min(chunk, max_new_tokens - done)
        done += take
        yield np.asarray(tokens[:, :take])
