"""Gated linear attention: a chunked parallel form, its naive recurrence and one decode step.

One op serves GLA (Yang, Wang, Shen, Panda & Kim 2024, "Gated Linear Attention Transformers
with Hardware-Efficient Training", arXiv:2312.06635), RetNet's retention (Sun et al. 2023,
arXiv:2307.08621) and Based (Arora et al. 2024, arXiv:2402.18668). Per head,

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t          S: [k, v]
    o_t = q_t S_t                                     o: [v]

with alpha_t = exp(log_alpha_t) in (0, 1] given in log space in one of three forms:
  * per key channel, f32[b, t, h, k] (GLA: data-dependent);
  * one scalar per head, anything broadcastable to [b, t, h, 1] (RetNet: [h, 1] fixed gammas);
  * None: no decay (Based), served by the scalar path with log_alpha = 0.
log_alpha must be <= 0 (a decay, not a growth): the chunked form relies on it for stability.

Letters: b batch, t time, h heads, k query/key width, v value width (of one head), c / s the
target / source position inside a chunk, z the chunk index, g the width of log_alpha (1 or k),
i / u a sub-chunk and the position inside it. Everything runs in float32; ``o`` comes back in
``v``'s dtype and the state in float32.

The chunked form (``linear_attention``, Yang et al. 2024, Sec. 4) splits time into chunks of c:
  1. intra-chunk: o[c] = sum_{s <= c} scores[c, s] v_s with
     scores[c, s] = sum_k q[c, k] k[s, k] exp(la[s+1, k] + ... + la[c, k]);
  2. each chunk's own state: sum_s (k_s o exp(la over (s, chunk end]))^T v_s;
  3. the state entering every chunk, carried by ``lax.scan`` over chunks;
  4. its read-out: o[c] += (q_c o exp(la over [chunk start, c])) S_in.
Every exponent is a decay over a forward span of at most one chunk (a chunk-local origin), so
<= 0: nothing overflows however strong the decay. Spans are summed directly (masked cumulative
sums, ``_segsum``; suffix sums from the chunk end), never as differences of prefix sums, which
would lose the small decays after a large one to rounding. With one decay per head, (1) is
q k^T times the masked [c, s] decay matrix. With one per key channel the decay cannot leave the
dot product over k without exp(-cum) (which overflows), so (1) uses GLA's secondary chunking
(Sec. 4.3): sub-chunks of u positions; for a source s in a sub-chunk j before the target's
sub-chunk i, the span (s, c] is (s, end of j] + the whole sub-chunks between + [start of i, c],
each factor <= 1 and the product a matmul over k; the u x u blocks on the diagonal are computed
in log space as a [u, u, k] tensor. A length that is not a multiple of c is padded with zero
keys, values and log decays, which changes neither the outputs kept nor the final state.

Packed rows (``segment_ids``) restart the state at each document by masks, never by -inf decays
(whose differences would give NaN): the intra-chunk scores keep same-document pairs only; a chunk's
own state keeps the tokens of its last token's document; the state entering a chunk is read only
by tokens of the document before the chunk and survives the chunk only if no document starts in it.
"""

import jax.numpy as jnp
from jax import lax

from slm_jax.array_typing import Array
from slm_jax.ops.segments import chunk_masks
from slm_jax.ops.ssd import segsum

_f32 = jnp.float32


def _log_decay(log_alpha: Array | None, b: int, t: int, h: int, k: int) -> Array:
    """log_alpha in any accepted form -> f32[b, t, h, g] with g = k (per channel) or 1 (per head)."""
    if log_alpha is None:
        return jnp.zeros((b, t, h, 1), _f32)
    la = jnp.asarray(log_alpha, _f32)
    g = la.shape[-1] if la.ndim else 1
    if g not in (1, k):
        raise ValueError(
            f"log_alpha's last axis must be 1 (per head) or the key width {k} (per channel), got shape {la.shape}"
        )
    return jnp.broadcast_to(la, (b, t, h, g))


def _segsum(la: Array) -> Array:
    """f32[..., c, g] log decays -> f32[..., c, s, g]: ops/ssd.py's ``segsum`` for each of the g decay channels."""
    return jnp.moveaxis(segsum(jnp.moveaxis(la, -1, -2)), -3, -1)


def _suffix(la: Array) -> Array:
    """f32[..., c, g] -> f32[..., c, g]: the sum of la over (s, end], summed from the end (no differences)."""
    later = jnp.concatenate([la[..., 1:, :], jnp.zeros_like(la[..., :1, :])], axis=-2)
    return lax.cumsum(later, axis=la.ndim - 2, reverse=True)


def _scores_per_head(q: Array, k: Array, la: Array) -> Array:
    """Intra-chunk scores with one decay per head: q, k f32[b, z, h, c, k], la f32[b, z, h, c, 1] -> [b, z, h, c, s]."""
    c = la.shape[-2]
    decay = jnp.exp(_segsum(la.reshape(-1, c, 1))[..., 0]).reshape(
        q.shape[:-1] + (c,)
    )  # at most 4 axes: see _scores_per_channel
    return jnp.einsum("bzhck,bzhsk->bzhcs", q, k) * decay


def _scores_per_channel(q: Array, k: Array, la: Array, u: int) -> Array:
    """Intra-chunk scores with one decay per key channel, by secondary chunking (sub-chunks of u, c % u == 0).

    q, k, la: f32[b, z, h, c, k] -> f32[b, z, h, c, s], zero above the diagonal. The leading
    axes are flattened into one (y = b z h) so that no tensor has more than 5 axes: XLA:CPU's
    YNNPACK reductions crash on some rank-7 shapes with a size-1 axis (jaxlib 0.10.2).
    """
    c, dk = q.shape[-2:]
    n = c // u
    sub = lambda a: a.reshape(-1, n, u, dk)  # [y, i, u, k]
    qs, ks, ls = sub(q), sub(k), sub(la)

    # Diagonal blocks: the [u, u', k] decays of each sub-chunk in log space.
    diag = jnp.sum(qs[:, :, :, None, :] * ks[:, :, None, :, :] * jnp.exp(_segsum(ls)), axis=-1)  # [y, i, u, u']

    # Target sub-chunk i against source sub-chunks j < i: the decay over (s, c] factors into
    # (s, end of j] x (the sub-chunks strictly between) x [start of i, c], each <= 1.
    q_in = qs * jnp.exp(jnp.cumsum(ls, axis=-2))  # [y, i, u, k]: over [start of i, c]
    whole = _segsum(jnp.sum(ls, axis=-2))  # [y, i, j, k]: over the sub-chunks (j, i]
    between = jnp.concatenate([jnp.full_like(whole[:, :1], -jnp.inf), whole[:, :-1]], axis=1)  # (j, i); -inf for j >= i
    k_to = ks[:, None] * jnp.exp(_suffix(ls)[:, None] + between[:, :, :, None, :])  # [y, i, j, u', k]
    off = jnp.einsum("yiuk,yijsk->yiujs", q_in, k_to)  # zero for j >= i

    on_diag = jnp.eye(n, dtype=_f32)[:, None, :, None]  # [i, u, j, u']: place diag at j == i
    scores = off + diag[:, :, :, None, :] * on_diag
    return scores.reshape(q.shape[:-1] + (c,))


def linear_attention(
    q: Array,
    k: Array,
    v: Array,
    log_alpha: Array | None = None,
    chunk_size: int = 64,
    h0: Array | None = None,
    sub_chunk: int = 16,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """Chunked gated linear attention.

    Args:
      q, k: [b, t, h, k] queries and keys (any scaling is the caller's).
      v: [b, t, h, v] values.
      log_alpha: log decays <= 0: f32[b, t, h, k] per key channel, broadcastable to [b, t, h, 1]
        per head (e.g. [h, 1]), or None for no decay.
      chunk_size: chunk length c (t < c uses one chunk of t; per channel, c is rounded up to a
        multiple of the sub-chunk).
      h0: optional f32[b, h, k, v] state before the first token.
      sub_chunk: sub-chunk length u of the per-channel intra-chunk scores.
      segment_ids: optional i32[b, t] documents of packed rows: each starts from a zero state (h0
        continues the first one); the final state is the last document's.

    Returns:
      o: [b, t, h, v] in v's dtype, and the final state f32[b, h, k, v]. One token continuing a
      state (decode) runs ``linear_attention_step`` instead of a one-token chunk.
    """
    bsz, t, h, dk = q.shape
    dv = v.shape[-1]
    la = _log_decay(log_alpha, bsz, t, h, dk)
    if t == 1 and h0 is not None:
        o, state = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], la[:, 0], h0)
        return o[:, None], state
    per_channel = la.shape[-1] > 1
    c = min(chunk_size, t)
    u = min(sub_chunk, c)
    if per_channel:
        c = -(-c // u) * u
    nz = -(-t // c)
    pad = nz * c - t

    def chunks(a: Array) -> Array:  # [b, t, h, e] -> f32[b, z, h, c, e], zero-padded
        a = jnp.pad(a.astype(_f32), [(0, 0), (0, pad), (0, 0), (0, 0)])
        return a.reshape(bsz, nz, c, h, a.shape[-1]).transpose(0, 1, 3, 2, 4)

    qc, kc, vc, lac = chunks(q), chunks(k), chunks(v), chunks(la)
    cum = jnp.cumsum(lac, axis=-2)  # [b, z, h, c, g]: log decay over [chunk start, c]
    decay_end = jnp.exp(cum[..., -1, :])  # [b, z, h, g]: over the whole chunk
    qe = qc * jnp.exp(cum)  # queries decayed over [chunk start, c]
    ke = kc * jnp.exp(_suffix(lac))  # keys decayed over (s, chunk end]

    # 1. intra-chunk
    scores = _scores_per_channel(qc, kc, lac, u) if per_channel else _scores_per_head(qc, kc, lac)
    if segment_ids is not None:
        # Padding continues the last document: its zero keys and values join it harmlessly.
        same, writes, survives, reaches = chunk_masks(segment_ids, nz, c)
        scores = scores * same[:, :, None]
        qe, ke = qe * reaches[:, :, None, :, None], ke * writes[:, :, None, :, None]  # the entering / chunk-end state
        decay_end = decay_end * survives[:, :, None, None]  # the carried state dies at a boundary
    o = jnp.einsum("bzhcs,bzhsv->bzhcv", scores, vc)

    # 2. each chunk's own state at its end
    states = jnp.einsum("bzhsk,bzhsv->bzhkv", ke, vc)

    # 3. the state entering each chunk: S_z = diag(exp(cum_z[end])) S_{z-1} + states_z
    def carry(state: Array, inputs: tuple[Array, Array]) -> tuple[Array, Array]:
        decay, own = inputs
        return decay[..., None] * state + own, state

    start = jnp.zeros((bsz, h, dk, dv), _f32) if h0 is None else h0.astype(_f32)
    time_major = lambda a: jnp.moveaxis(a, 1, 0)
    last, entering = lax.scan(carry, start, (time_major(decay_end), time_major(states)))

    # 4. the entering state's read-out
    o = o + jnp.einsum("bzhck,zbhkv->bzhcv", qe, entering)
    o = o.transpose(0, 1, 3, 2, 4).reshape(bsz, nz * c, h, dv)[:, :t]
    return o.astype(v.dtype), last


def linear_attention_step(q: Array, k: Array, v: Array, log_alpha: Array | None, state: Array) -> tuple[Array, Array]:
    """One recurrent step (decode): q, k [b, h, k], v [b, h, v], state f32[b, h, k, v].

    log_alpha: f32[b, h, k] per channel, broadcastable to [b, h, 1] per head, or None.
    Returns o [b, h, v] in v's dtype and the new f32 state.
    """
    s = state.astype(_f32)
    if log_alpha is not None:
        s = jnp.exp(jnp.asarray(log_alpha, _f32))[..., None] * s
    s = s + k.astype(_f32)[..., :, None] * v.astype(_f32)[..., None, :]
    o = jnp.einsum("bhk,bhkv->bhv", q.astype(_f32), s)
    return o.astype(v.dtype), s


def reference_linear_attention(
    q: Array, k: Array, v: Array, log_alpha: Array | None = None, h0: Array | None = None
) -> tuple[Array, Array]:
    """The naive recurrence, one token at a time (``lax.scan`` of ``linear_attention_step``); same contract as
    ``linear_attention``."""
    bsz, t, h, dk = q.shape
    la = _log_decay(log_alpha, bsz, t, h, dk)
    start = jnp.zeros((bsz, h, dk, v.shape[-1]), _f32) if h0 is None else h0.astype(_f32)

    def step(state: Array, inputs: tuple[Array, ...]) -> tuple[Array, Array]:
        qt, kt, vt, lat = inputs
        o, state = linear_attention_step(qt, kt, vt, lat, state)
        return state, o

    time_major = lambda a: jnp.moveaxis(a, 1, 0)
    last, o = lax.scan(step, start, (time_major(q), time_major(k), time_major(v), time_major(la)))
    return jnp.moveaxis(o, 0, 1), last


def linear_attention_flops_per_token(
    key_dim: int, value_dim: int, seq_len: int, chunk_size: int, per_channel: bool, sub_chunk: int = 16
) -> float:
    """Forward FLOPs per token and head of ``linear_attention`` at length ``seq_len`` (2 per multiply-add, other ops 1).

    Both forms: scores (2 c k), applying them (2 c v), the chunk state (2 k v) and its read-out
    (2 k v), the chunk-level scan (2 k v / c), decaying keys and queries. Per head the masked
    decay matrix costs 3 c; per channel the sub-chunk keys cost 3 k c / u, the diagonal
    [u, u, k] blocks 5 u k and the block assembly 2 c. Padding the last chunk is counted.
    """
    dk, dv, t = key_dim, value_dim, seq_len
    c = min(chunk_size, t)
    u = min(sub_chunk, c)
    if per_channel:
        c = -(-c // u) * u
    padded = -(-t // c) * c / t
    common = 2 * c * dk + 2 * c * dv + 4 * dk * dv + 2 * dk * dv / c + dv
    if not per_channel:
        return padded * (common + 3 * c + 2 * dk + 4)
    return padded * (common + 3 * dk * c / u + 5 * u * dk + 2 * c + 11 * dk)
