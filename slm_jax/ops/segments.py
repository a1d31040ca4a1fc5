"""Packed rows: several documents in one row, told apart by segment ids.

``segment_ids`` i32[b, t] numbers the documents of each row, constant within a document and
different for every document of a row (data/pipeline.py numbers them 0, 1, 2, ...; an id must not
come back after another document, since attention reads equal ids as one document). A
mixer given segment ids must act as if every document ran alone: attention never looks across
a boundary, and a recurrent state, a convolution window or a token shift starts from zeros at the
first token of each document. Positions (RoPE, learned tables) restart there too; they come in
as the usual ``positions`` argument. Segment ids are for the parallel (training) path only:
decoding continues one document per row.

The helpers below are the shapes a boundary takes in the mixers: a mask between two sets of
positions, the tokens where a state restarts, a value ``lag`` steps back that is zero when it
belongs to another document, and the four masks of a chunked scan (``chunk_masks``).
"""

from typing import NamedTuple

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


class ChunkMasks(NamedTuple):
    """The packed-row masks of a chunked scan, for chunks z of c tokens (i target, j source in a chunk).

    same: bool[b, z, c, c], tokens i and j are in one document (the intra-chunk, attention-like part).
    writes: bool[b, z, c], token j is in the document of the chunk's last token (it reaches the chunk-end state).
    survives: bool[b, z], the chunk holds no document start (the state entering it is carried to its end).
    reaches: bool[b, z, c], token i is in the document of the token before the chunk (the entering state
      reaches it); for chunk 0 that is the row's first document, which a given initial state continues.
    """

    same: Array
    writes: Array
    survives: Array
    reaches: Array


def chunk_masks(segment_ids: Array, n_chunks: int, chunk: int) -> ChunkMasks:
    """segment_ids i32[b, t] (t <= n_chunks chunk) -> the ``ChunkMasks`` of its chunks of ``chunk`` tokens.

    Documents are numbered by a running count of ``segment_starts``, so a repeated id after another
    document is a new document. The padded tail (t < n_chunks chunk) continues the last document: the
    chunked ops pad with steps that carry no input and decay 1, which change nothing inside it.
    """
    bsz, t = segment_ids.shape
    if t > n_chunks * chunk:
        raise ValueError(f"{t} tokens do not fit {n_chunks} chunks of {chunk}")
    doc = jnp.cumsum(segment_starts(segment_ids), axis=1, dtype=jnp.int32)
    doc = jnp.pad(doc, ((0, 0), (0, n_chunks * chunk - t)), mode="edge").reshape(bsz, n_chunks, chunk)
    last = doc[:, :, -1]  # [b, z]: the document of each chunk's last token
    before = jnp.concatenate([doc[:, :1, 0], last[:, :-1]], axis=1)  # [b, z]: of the token before each chunk
    return ChunkMasks(
        doc[..., :, None] == doc[..., None, :], doc == last[..., None], last == before, doc == before[..., None]
    )


def where_kept(v: Array, mask: Array | None, fill: float = 0.0) -> Array:
    """v where ``mask`` holds, else ``fill``; v itself when there is no mask (rows not packed).

    The mask's axes are v's leading ones (it broadcasts over v's trailing axes): a [b, z] mask keeps
    whole [b, z, ...] blocks.
    """
    return v if mask is None else jnp.where(mask.reshape(mask.shape + (1,) * (v.ndim - mask.ndim)), v, fill)
