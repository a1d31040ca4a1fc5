"""Secure aggregation, simulated: pairwise additive masks that cancel in the sum (Bonawitz et al. 2017).

Each client turns its (already weighted) update into fixed-point integers modulo 2^32 and adds,
for every other participant j, a pseudo-random mask r_ij from a seed the pair shares: +r_ij if
i < j, -r_ij if i > j. Every mask appears once with each sign, so the server's sum modulo 2^32
is exactly the sum of the unmasked encodings, while one masked update alone is uniformly random.
The pair seeds stand in for the protocol's Diffie-Hellman key agreement; clients that drop out
before masking are simply not participants (the protocol's secret-sharing recovery of clients
that drop after masking is not simulated).

Cost. In the protocol both members of a pair expand the same seed, m (m - 1) expansions of the
model per round for m clients. The simulator holds every client, so it expands each pair's
stream once and hands it to both members (+ to one, - to the other): m (m - 1) / 2 expansions.
The stream is a counter-mode hash (MurmurHash3's 32-bit finalizer of an affine map of the
element index, keyed by two words drawn with JAX's threefry from the pair seed) in place of the
protocol's AES-CTR PRG: uniform-looking and ~10x cheaper than threefry on CPU, but not a
cryptographic generator. Whatever the stream, the masks cancel exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

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


def _fmix32(x: Array) -> Array:
    """MurmurHash3's 32-bit finalizer: a bijection of u32 that mixes every input bit into every output bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def pair_stream(key: Array, n: int) -> Array:
    """u32[n]: the mask stream of one pair seed ``key``: ``fmix32(k0 * i + k1)``, k0 (odd) and k1 drawn from ``key``."""
    k = jax.random.bits(key, (2,), jnp.uint32)
    return _fmix32(jnp.arange(n, dtype=jnp.uint32) * (k[0] | jnp.uint32(1)) + k[1])


def client_masks(like: PyTree, peers: Array, alive: Array, round_key: Array) -> PyTree:
    """Every client's summed mask ``sum_j sign(i, j) r_ij``: a pytree of u32 [m, *leaf] like ``like``.

    ``peers`` i32[m] are the ids of this round's clients and ``alive`` bool[m] which of them take
    part (a pair with a non-participant adds nothing). Each pair's stream is expanded once
    (a loop over the m (m - 1) / 2 pairs, memory m times the model) and added to the smaller id's
    mask, subtracted from the larger's.
    """
    leaves, treedef = jax.tree.flatten(like)
    sizes = [math.prod(x.shape) for x in leaves]
    m, n = peers.shape[0], sum(sizes)
    first, second = (jnp.asarray(a, jnp.int32) for a in np.triu_indices(m, 1))

    def add_pair(p, masks):
        a, b = first[p], second[p]
        r = pair_stream(pair_key(round_key, peers[a], peers[b]), n) * (alive[a] & alive[b]).astype(jnp.uint32)
        up = jnp.where(peers[a] < peers[b], r, -r)  # +r_ab for the smaller id, -r_ab (mod 2^32) for the larger
        return masks.at[a].add(up).at[b].add(-up)

    flat = jax.lax.fori_loop(0, first.shape[0], add_pair, jnp.zeros((m, n), jnp.uint32))
    parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=1)
    return jax.tree.unflatten(treedef, [p.reshape(m, *x.shape) for p, x in zip(parts, leaves, strict=True)])


def mask_update(update: PyTree, mask: PyTree) -> PyTree:
    """One client's masked update: ``to_fixed(update) + mask`` modulo 2^32 (u32 leaves like ``update``)."""
    return jax.tree.map(lambda x, r: to_fixed(x) + r, update, mask)


def unmask_sum(masked: PyTree) -> PyTree:
    """The server's view: sum the masked updates over the leading clients axis modulo 2^32, then decode."""
    return jax.tree.map(lambda u: from_fixed(jnp.sum(u, axis=0, dtype=jnp.uint32)), masked)
