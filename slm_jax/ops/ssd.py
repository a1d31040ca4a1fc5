"""Structured state-space duality (SSD): the Mamba-2 scan, chunked, with its naive reference.

Dao & Gu 2024, "Transformers are SSMs" (arXiv:2405.21060), Sec. 6 and Listing 1
("ssd_minimal"). Per head the recurrence is scalar-decay, outer-product input:

    h_t = exp(dt_t * a) h_{t-1} + dt_t x_t B_t^T        h: [e, n]
    y_t = h_t C_t                                       y: [e]

Letters (array_typing.py): b batch, t time, h heads, e head width, n state size; k groups of
B and C, each shared by g = h / k heads exactly as a key/value head is shared by g query heads
in GQA; c chunk length, with c / s the target / source position inside a chunk and z the chunk
index. All math is float32 whatever the input dtype; ``y`` comes back in ``x``'s dtype and the
state in float32.

The chunked algorithm (``ssd``) splits time into chunks of length c and computes
  1. the intra-chunk output with the quadratic, attention-like form y = (C B^T o L) X, where
     L[c, s] = exp(a_{s+1} + ... + a_c) for s <= c (the masked "segment sum" decay);
  2. each chunk's contribution to the state at its end;
  3. the state entering every chunk, by a linear recurrence over chunks (ops/scan.py);
  4. that state's contribution to the outputs inside the chunk (y += exp(a_1..a_c) C h_in).
Its cost is O(t c (n + e)) per head, matmul-shaped, against O(t e n) sequential steps for the
recurrence. A length not divisible by c is padded with zeros (decay exp(0) = 1, no input), which
leaves both the outputs and the final state unchanged.

Packed rows (``segment_ids``, ops/segments.py) mask the four steps so that no state crosses a
document boundary: L[c, s] only within a document, a source reaches the chunk-end state only if it
is in the chunk's last document, the carried state survives only a chunk without a boundary, and
the entering state reaches only the targets still in the document of the token before the chunk.
"""

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.ops.scan import linear_scan
from slm_jax.ops.segments import chunk_masks, where_kept

_f32 = jnp.float32


def segsum(la: Array) -> Array:
    """f32[..., c] log-decays -> f32[..., c, s]: sum of la over (s, c], -inf above the diagonal.

    Summing a masked copy (rather than differencing a cumulative sum) keeps every entry exact
    to one rounding per term, as in the paper's stable ``segsum``.
    """
    c = la.shape[-1]
    strict = jnp.tril(jnp.ones((c, c), bool), k=-1)  # [c, s]: s < c
    terms = jnp.where(strict, la[..., :, None], 0.0)  # terms[c', s] = la[c'] if s < c'
    seg = jnp.cumsum(terms, axis=-2)  # seg[c, s] = sum_{s < c' <= c} la[c']
    return jnp.where(jnp.tril(jnp.ones((c, c), bool)), seg, -jnp.inf)


def ssd(
    x: Array,
    dt: Array,
    a: Array,
    b: Array,
    c: Array,
    chunk_size: int = 64,
    h0: Array | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """Chunked SSD scan.

    Args:
      x: f32[b, t, h, e] inputs.
      dt: f32[b, t, h] positive step sizes (already softplus-ed).
      a: f32[h] negative per-head decay rates (A = -exp(A_log)).
      b: f32[b, t, k, n] input maps B; c: f32[b, t, k, n] output maps C; k divides h.
      chunk_size: chunk length (the last chunk is zero-padded; t < chunk_size uses one chunk of t).
      h0: optional f32[b, h, e, n] state before the first token.
      segment_ids: optional i32[b, t] documents of packed rows: each starts from a zero state
        (the row's first included, so h0 is then unused); the final state is the last document's.

    Returns:
      y: [b, t, h, e] in x's dtype (without the D skip term) and the final state f32[b, h, e, n].
    """
    bsz, t, h, e = x.shape
    k, n = b.shape[2], b.shape[3]
    g = h // k
    q = min(chunk_size, t)
    nz = -(-t // q)
    pad = nz * q - t

    xdt = x.astype(_f32) * dt.astype(_f32)[..., None]  # [b, t, h, e]: dt_t x_t
    la = dt.astype(_f32) * a.astype(_f32)  # [b, t, h]: log decay, <= 0
    bb, cc = b.astype(_f32), c.astype(_f32)
    if pad:
        padt = lambda v: jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        xdt, la, bb, cc = padt(xdt), padt(la), padt(bb), padt(cc)
    xdt = xdt.reshape(bsz, nz, q, k, g, e)  # [b, z, c, k, g, e]
    bb = bb.reshape(bsz, nz, q, k, n)  # [b, z, c, k, n]
    cc = cc.reshape(bsz, nz, q, k, n)
    la = la.reshape(bsz, nz, q, k, g).transpose(0, 1, 3, 4, 2)  # [b, z, k, g, c]
    cum = jnp.cumsum(la, axis=-1)  # [b, z, k, g, c]: log decay from the chunk start to c
    same = writes = survives = reaches = None
    if segment_ids is not None:  # broadcast over the (k, g) head axes
        masks = chunk_masks(segment_ids, nz, q)
        same, writes, survives, reaches = (m.reshape(m.shape[:2] + (1, 1) + m.shape[2:]) for m in masks)

    # 1. intra-chunk (diagonal blocks): y[c] = sum_{s <= c} (C_c . B_s) L[c, s] dt_s x_s
    scores = jnp.einsum("bzckn,bzskn->bzkcs", cc, bb)  # shared by the g heads of a group
    mix = scores[:, :, :, None] * where_kept(jnp.exp(segsum(la)), same)  # [b, z, k, g, c, s]
    y = jnp.einsum("bzkgcs,bzskge->bzckge", mix, xdt)

    # 2. each chunk's own contribution to the state at its end (zero state on entry)
    to_end = where_kept(jnp.exp(cum[..., -1:] - cum), writes)  # [b, z, k, g, s]
    states = jnp.einsum("bzskn,bzkgs,bzskge->bzkgen", bb, to_end, xdt)  # [b, z, k, g, e, n]

    # 3. state entering each chunk: H_z = exp(sum of la over chunk z) H_{z-1} + states_z
    states = states.reshape(bsz, nz, h, e, n)
    decay = where_kept(jnp.exp(cum[..., -1]), survives)  # [b, z, k, g]
    decay = jnp.broadcast_to(decay.reshape(bsz, nz, h, 1, 1), states.shape)
    # Packed rows start from a zero state: h0 is unused (the shared masks would let it continue document 1).
    start = jnp.zeros((bsz, h, e, n), _f32) if h0 is None or segment_ids is not None else h0.astype(_f32)
    ends, last = linear_scan(decay, states, start)  # ends[:, z]: state after chunk z
    entering = jnp.concatenate([start[:, None], ends[:, :-1].astype(_f32)], axis=1)  # [b, z, h, e, n]

    # 4. entering state -> outputs: y[c] += exp(cum[c]) C_c h_in
    entering = entering.reshape(bsz, nz, k, g, e, n)
    y = y + jnp.einsum("bzckn,bzkgen,bzkgc->bzckge", cc, entering, where_kept(jnp.exp(cum), reaches))
    y = y.reshape(bsz, nz * q, h, e)[:, :t]
    return y.astype(x.dtype), last.astype(_f32)


def ssd_step(x: Array, dt: Array, a: Array, b: Array, c: Array, state: Array) -> tuple[Array, Array]:
    """One recurrent step (decode): x [b, h, e], dt [b, h], a [h], b/c [b, k, n], state f32[b, h, e, n].

    Returns y [b, h, e] in x's dtype (without the D skip term) and the new f32 state.
    """
    bsz, h, e = x.shape
    k, n = b.shape[-2:]
    dt32 = dt.astype(_f32)
    bh = jnp.repeat(b.astype(_f32), h // k, axis=1)  # [b, h, n]: head i reads group i // g
    ch = jnp.repeat(c.astype(_f32), h // k, axis=1)
    decay = jnp.exp(dt32 * a.astype(_f32))[..., None, None]  # [b, h, 1, 1]
    state = decay * state.astype(_f32) + jnp.einsum("bhe,bhn->bhen", dt32[..., None] * x.astype(_f32), bh)
    y = jnp.einsum("bhen,bhn->bhe", state, ch)
    return y.astype(x.dtype), state


def reference_ssd(x: Array, dt: Array, a: Array, b: Array, c: Array, h0: Array | None = None) -> tuple[Array, Array]:
    """The naive recurrence, one token at a time (``lax.scan`` of ``ssd_step``); same contract as ``ssd``."""
    bsz, t, h, e = x.shape
    start = jnp.zeros((bsz, h, e, b.shape[-1]), _f32) if h0 is None else h0.astype(_f32)

    def step(state, inputs):
        y, state = ssd_step(*inputs[:2], a, *inputs[2:], state)
        return state, y

    time_major = lambda v: jnp.moveaxis(v, 1, 0)
    last, ys = jax.lax.scan(step, start, (time_major(x), time_major(dt), time_major(b), time_major(c)))
    return jnp.moveaxis(ys, 0, 1), last


def ssd_flops_per_token(heads: int, head_dim: int, state: int, groups: int, chunk: int) -> float:
    """Forward FLOPs per token of ``ssd`` (2 per multiply-add; exp and scaling counted once).

    Intra-chunk scores (2 k n c) and their decay weighting (h c), applying them (2 h e c), the
    chunk state (2 h e n) and its read-out (2 h e n); the chunk-level scan is O(h e n / c).
    """
    h, e, n, k, c = heads, head_dim, state, groups, chunk
    return 2 * k * n * c + h * c + 2 * h * e * c + 4 * h * e * n + 2 * h * e * n / c
