"""Packed rows: several documents in one row, told apart by segment ids.

``segment_ids`` i32[b, t] numbers the documents of each row, constant within a document and
changing where the next one begins (nondecreasing is usual, but only equality is read). A
mixer given segment ids must act as if every document ran alone: attention never looks across
a boundary, and a recurrent state, a convolution window or a token shift starts from zeros at the
first token of each document. Positions (RoPE, learned tables) restart there too; they come in
as the usual ``positions`` argument. Segment ids are for the parallel (training) path only:
decoding continues one document per row.

The helpers below are the three shapes a boundary takes in the mixers: a mask between two sets
of positions, the tokens where a state restarts, and a value ``lag`` steps back that is zero when
it belongs to another document.
"""

import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError


def check_parallel_only(segment_ids: Array | None, cache: PyTree) -> None:
    """One sentence when packed rows meet a decode cache (every mixer calls this first)."""
    if segment_ids is not None and cache is not None:
        raise ConfigError("segment_ids are for the parallel (training) path; decode one document per row.")


def same_segment(seg_a: Array, seg_b: Array) -> Array:
    """seg_a i32[b, n], seg_b i32[b, m] -> bool[b, n, m]: True where both tokens share a document."""
    return seg_a[:, :, None] == seg_b[:, None, :]


def segment_starts(segment_ids: Array) -> Array:
    """segment_ids i32[b, t] -> bool[b, t]: True at the first token of each document (t = 0 included)."""
    first = jnp.ones_like(segment_ids[:, :1], dtype=bool)
    return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def same_as_lagged(segment_ids: Array, lag: int) -> Array:
    """segment_ids i32[b, t] -> bool[b, t]: token i and token i - lag share a document (False for i < lag)."""
    if lag == 0:
        return jnp.ones(segment_ids.shape, bool)
    t = segment_ids.shape[1]
    if lag >= t:
        return jnp.zeros(segment_ids.shape, bool)
    lagged = segment_ids[:, : t - lag]
    return jnp.concatenate([jnp.zeros((segment_ids.shape[0], lag), bool), segment_ids[:, lag:] == lagged], axis=1)


def lagged_in_segment(x: Array, segment_ids: Array, lag: int) -> Array:
    """x [b, t, ...] -> x shifted ``lag`` steps later in time, zero where the source token is in
    another document or before the row's start: out[:, i] = x[:, i - lag] if same document else 0."""
    t = x.shape[1]
    shifted = jnp.pad(x, ((0, 0), (lag, 0)) + ((0, 0),) * (x.ndim - 2))[:, :t]
    keep = same_as_lagged(segment_ids, lag).reshape(segment_ids.shape + (1,) * (x.ndim - 2))
    return jnp.where(keep, shifted, jnp.zeros((), x.dtype))
