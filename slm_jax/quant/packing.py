"""Two signed 4-bit integers per byte, paired along the input axis of a kernel.

Row ``2i`` of the int4 tensor goes to the low nibble of packed row ``i`` and row ``2i + 1``
to the high nibble, each as a two's-complement nibble (the layout of GPTQ/AWQ-style
checkpoints, packed along the reduction axis). An odd number of rows is padded with a zero
row, which ``unpack_int4`` drops again given the original row count.
"""

import jax.numpy as jnp

from slm_jax.array_typing import Array


def pack_int4(q: Array) -> Array:
    """i8[..., n, f] with values in [-8, 7] -> u8[..., ceil(n / 2), f]."""
    if q.shape[-2] % 2:
        pad = [(0, 0)] * (q.ndim - 2) + [(0, 1), (0, 0)]
        q = jnp.pad(q, pad)
    nibbles = (q & 0xF).astype(jnp.uint8)  # two's-complement nibble: -1 -> 0b1111
    lo, hi = nibbles[..., 0::2, :], nibbles[..., 1::2, :]
    return lo | (hi << 4)


def unpack_int4(packed: Array, rows: int) -> Array:
    """u8[..., ceil(rows / 2), f] -> i8[..., rows, f] (inverse of ``pack_int4``)."""
    sign_extend = lambda n: (n.astype(jnp.int8) ^ 8) - 8  # 0..15 -> -8..7
    lo, hi = sign_extend(packed & 0xF), sign_extend(packed >> 4)
    both = jnp.stack([lo, hi], axis=-2)  # [..., n/2, 2, f]
    both = both.reshape(*packed.shape[:-2], 2 * packed.shape[-2], packed.shape[-1])
    return both[..., :rows, :]
