"""Secure aggregation, simulated: pairwise additive masks that cancel in the sum (Bonawitz et al. 2017).

Each client turns its (already weighted) update into fixed-point integers modulo 2^32 and adds,
for every other participant j, a pseudo-random mask r_ij from a seed the pair shares: +r_ij if
i < j, -r_ij if i > j. Every mask appears once with each sign, so the server's sum modulo 2^32
is exactly the sum of the unmasked encodings, while one masked update alone is uniformly random.
The pair seeds stand in for the protocol's Diffie-Hellman key agreement; clients that drop out
before masking are simply not participants (the protocol's secret-sharing recovery of clients
that drop after masking is not simulated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree

FRAC_BITS = 24  # fixed point: resolution 2^-24 ~ 6e-8, range +-128 for the sum


def to_fixed(x: Array) -> Array:
    """f32 -> u32: round(x * 2^FRAC_BITS) in two's complement (wraps modulo 2^32)."""
    return jax.lax.bitcast_convert_type(jnp.round(x * 2.0**FRAC_BITS).astype(jnp.int32), jnp.uint32)


def from_fixed(u: Array) -> Array:
    """u32 -> f32: inverse of :func:`to_fixed` (a sum of encodings decodes to the sum)."""
    return jax.lax.bitcast_convert_type(u, jnp.int32).astype(jnp.float32) / 2.0**FRAC_BITS


def pair_key(round_key: Array, i: Array, j: Array) -> Array:
    """The seed clients i and j share (symmetric in i, j)."""
    return jax.random.fold_in(jax.random.fold_in(round_key, jnp.minimum(i, j)), jnp.maximum(i, j))


def mask_update(update: PyTree, me: Array, peers: Array, alive: Array, round_key: Array) -> PyTree:
    """One client's masked update: ``to_fixed(update) + sum_j sign(me, j) r_(me, j)`` modulo 2^32.

    ``peers`` i32[m] are the ids of this round's clients and ``alive`` bool[m] which of them take
    part; the client's own id ``me`` is skipped. Returns a pytree of u32 like ``update``.
    """
    leaves, treedef = jax.tree.flatten(update)

    def add_peer(j, masked):
        peer = peers[j]
        sign = jnp.where(me < peer, jnp.uint32(1), jnp.uint32(0xFFFFFFFF))  # -1 modulo 2^32
        sign = jnp.where(alive[j] & (peer != me), sign, jnp.uint32(0))
        key = pair_key(round_key, me, peer)
        return [
            m + sign * jax.random.bits(jax.random.fold_in(key, n), m.shape, jnp.uint32) for n, m in enumerate(masked)
        ]

    masked = jax.lax.fori_loop(0, peers.shape[0], add_peer, [to_fixed(x) for x in leaves])
    return jax.tree.unflatten(treedef, masked)


def unmask_sum(masked: PyTree) -> PyTree:
    """The server's view: sum the masked updates over the leading clients axis modulo 2^32, then decode."""
    return jax.tree.map(lambda u: from_fixed(jnp.sum(u, axis=0, dtype=jnp.uint32)), masked)
