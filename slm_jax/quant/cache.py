"""int8 decode cache: every float leaf of a cache stored as int8 with group-wise float32 scales.

A leaf x [..., n] is split along its last axis into groups of g = the largest divisor of n
that is at most 64, each stored as ``q = round(x / s)`` with ``s = max|x_group| / 127``
(symmetric, round-to-nearest). For the caches of slm_jax's mixers that gives:

  attention k, v     [b, k, L, e]     one scale per (head, position)  (e <= 64)
  mamba h            [b, w, n]        one scale per channel            (n <= 64)
  mamba2 h           [b, h, e, n]     one scale per (head, channel)
  rglru h            [b, w]           one scale per 64 channels
  conv caches        [b, k - 1, c]    one scale per (position, 64 channels)

Integer leaves (slot positions, counters) are kept as they are. With ``leaves`` (``int8_kv``:
the mixer's declared ``kv_leaves``) only those leaves are quantized, the part that grows with
the context, and recurrent and convolution states stay in float. The cache's own structure says
whether it is quantized (``Int8Leaf`` in place of arrays), as quantized weights do in ``Linear``:
``Block`` dequantizes its layer's cache before the mixer runs and quantizes what the mixer
returns (``requantize_like``), so no mixer knows about it. Re-quantizing a value that was
already dequantized gives back the same integers (its group maximum maps to +-127 again),
so untouched KV slots do not drift; recurrent states are rounded once per step, which is the
error this option trades for memory (measured in benchmarks/cache_quant.py, docs/deploy.md).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree

QMAX = 127
GROUP = 32  # entries per scale along the last axis


class Int8Leaf(NamedTuple):
    """A quantized cache leaf: ``q`` i8[..., n] and ``scale`` f32[..., n / g]."""

    q: Array
    scale: Array


def _is_q(x) -> bool:
    return isinstance(x, Int8Leaf)


def quantize_leaf(x: Array) -> Int8Leaf:
    """f[..., n] -> Int8Leaf with one scale per ``GROUP`` entries of the last axis (the last group may be shorter)."""
    n, group = x.shape[-1], GROUP
    n_groups = -(-n // group)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n_groups * group - n)]
    xg = jnp.pad(x.astype(jnp.float32), pad).reshape(*x.shape[:-1], n_groups, group)
    scale = jnp.max(jnp.abs(xg), axis=-1) / QMAX  # [..., G]
    safe = jnp.where(scale > 0, scale, 1.0)  # an all-zero group (an empty slot) stays zero
    q = jnp.clip(jnp.round(xg / safe[..., None]), -QMAX, QMAX).astype(jnp.int8)
    return Int8Leaf(q.reshape(*x.shape[:-1], n_groups * group)[..., :n], scale)


def dequantize_leaf(leaf: Int8Leaf, dtype=jnp.float32) -> Array:
    """Int8Leaf -> dtype[..., n]."""
    n, n_groups, group = leaf.q.shape[-1], leaf.scale.shape[-1], GROUP
    scales = jnp.repeat(leaf.scale, group, axis=-1, total_repeat_length=n_groups * group)[..., :n]  # [..., n]
    return (leaf.q.astype(jnp.float32) * scales).astype(dtype)


def quantize_cache(cache: PyTree, leaves: tuple[str, ...] | None = None) -> PyTree:
    """Every floating leaf of a mixer's ``cache`` -> Int8Leaf (only those named in ``leaves`` when given).

    Other leaves are returned unchanged.
    """

    def one(path, x):
        name = getattr(path[-1], "key", None) if path else None
        chosen = jnp.issubdtype(x.dtype, jnp.floating) and (leaves is None or name in leaves)
        return quantize_leaf(x) if chosen else x

    return jax.tree_util.tree_map_with_path(one, cache)


def dequantize_cache(cache: PyTree) -> PyTree:
    """Int8Leaf leaves -> float32 arrays; a float cache (or None) passes through."""
    return jax.tree.map(lambda x: dequantize_leaf(x) if _is_q(x) else x, cache, is_leaf=_is_q)


def requantize_like(old: PyTree, new: PyTree) -> PyTree:
    """``new`` (a mixer's float output cache) quantized wherever ``old`` (its stored input) was."""
    if old is None or not any(_is_q(x) for x in jax.tree.leaves(old, is_leaf=_is_q)):
        return new
    return jax.tree.map(lambda o, n: quantize_leaf(n) if _is_q(o) else n, old, new, is_leaf=_is_q)
