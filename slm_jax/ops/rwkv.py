"""RWKV-7's generalised delta rule (diagonal-plus-rank-one transitions), chunked, with its naive reference.

Peng et al. 2025, "RWKV-7 'Goose' with Expressive Dynamic State Evolution" (arXiv:2503.14456),
Sec. 4 (eq. for wkv_t). Per head the paper writes the state as S [e, n] (values x keys):

    S_t = S_{t-1} (diag(w_t) + a_t^T b_t) + v_t^T k_t        y_t = S_t r_t

with a vector decay w_t in (0, 1)^n and, in RWKV-7, a = -kappa_hat, b = kappa_hat * alpha (the
in-context learning rate). Here the state is kept transposed, S [n, e] as in fla's kernels
(``chunk_rwkv7``: ``h`` [K, V]), so every read is a row vector times S:

    u_t = a_t^T S_{t-1}                                   [e]: what the rank-one term removes
    S_t = diag(w_t) S_{t-1} + b_t u_t^T + k_t v_t^T
    y_t = r_t^T S_t                                       [e]

Letters (array_typing.py): b batch, t time, h heads, n key width, e value width; c / s target /
source position in a chunk of length c, z the chunk index. Decays are passed as log w <= 0. All
math is float32; ``y`` comes back in ``v``'s dtype and the state in float32.

The chunked form (``rwkv7_chunked``) is the WY-style algorithm of fla's ``chunk_dplr``, derived
here for this layout. Inside a chunk with entering state S0 and chunk-local cumulative log decay
L_t = sum_{j<=t} log w_j (per channel), the recurrence is a diagonal-decay recurrence with two
rank-one inputs b_s u_s^T and k_s v_s^T, so

    S_t = diag(e^{L_t}) S0 + sum_{s<=t} diag(e^{L_t - L_s}) (b_s u_s^T + k_s v_s^T)

and u_t = a_t^T S_{t-1} is the solution U [c, e] of the unit lower-triangular system

    (I - M_ab) U = A~ S0 + M_ak V,   M_xy[t, s] = sum_j x_t[j] e^{L_{t-1}[j] - L_s[j]} y_s[j] (s < t),
    A~[t] = a_t o e^{L_{t-1}}.

Writing U = W S0 + U0 (W = (I - M_ab)^-1 A~, U0 = (I - M_ab)^-1 M_ak V, with the [c, c] inverse
by forward substitution; all chunks in parallel), each chunk is one affine map of its entering state,

    S_end = P S0 + H,   P = diag(e^{L_c}) + B~^T W [n, n],   H = B~^T U0 + K~^T V [n, e],
    B~[s] = b_s o e^{L_c - L_s}, K~ likewise,

carried across chunks by a ``lax.scan``; then every output at once:
y_t = (r_t o e^{L_t})^T S0 + sum_{s<=t} N_rb[t, s] u_s + N_rk[t, s] v_s (N: as M with L_t, s <= t).

Stability: every decay factor is e^{L_t - L_s} with t >= s, formed by differencing the
chunk-local cumulative sums and masking above the diagonal before the exponential, so all
exponents are <= 0; nothing is divided by a decay. The price is a [c, c, n] tensor of pairwise
decays per chunk and head (c times the size of the keys; vector decays admit no [c, c] form
without dividing by e^{L_s}). The per-step log decays of RWKV-7 are >= -e^{-1/2}, so within a
chunk of 32 |L_t| <= 20 and its differences lose at most ~1e-6 to rounding. A short last chunk is
padded with w = 1 and zero a, b, k, v, which leaves outputs and state unchanged.

Packed rows (``segment_ids`` i32[b, t], ops/segments.py): the state restarts from zero at each
document's first token. The recurrence zeroes its carried state there; the chunked form masks
(segment-id comparisons, never -inf log decays, so gradients stay finite): pairwise decays to s in t's
document; S0 reaches t only in the document of the token before the chunk; s writes into the
chunk-end state only in the document of the chunk's last token; S0 survives the chunk only if
both are the same document. A given ``state`` continues the row's first document.

Cost: the [c, c, n] tensors make this form memory-bound on CPU. Median s under jit, float32,
[b, t, h, n = e] = [2, 1024, 4, 64], 2-core CPU shared with other jobs, forward / forward+backward:
chunked c = 16: 0.29 / 0.49, c = 32: 0.30 / 1.25, c = 64: 0.99 / 2.26; the lax.scan recurrence
(``rwkv7_recurrent``): 0.018 / 0.48.
"""

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.ops.segments import chunk_masks, segment_starts, where_kept

_f32 = jnp.float32


def _unit_lower_inverse(m: Array) -> Array:
    """(I - m)^-1 for strictly lower-triangular m f32[..., c, c], by forward substitution over rows.

    Row i of the inverse is e_i + sum_{j<i} m[i, j] row_j: the chunk's own recurrence for u_t on
    c x c coefficients, as a ``lax.scan`` of c steps. Chosen over XLA's ``triangular_solve``,
    whose gradient is ~30x slower on CPU, and over the doubling product (I + m)(I + m^2)(I + m^4)...,
    whose partial sums of m^j grow combinatorially (and then cancel) when consecutive keys align.
    """
    c = m.shape[-1]
    x0 = jnp.zeros((c, *m.shape[:-2], c), m.dtype)  # rows of the inverse, row index leading

    def row(x, inputs):
        m_row, i = inputs  # m_row [..., c]: zero from column i on, so unfilled rows of x do not matter
        return x.at[i].set(jax.nn.one_hot(i, c, dtype=m.dtype) + jnp.einsum("...j,j...f->...f", m_row, x)), None

    x, _ = jax.lax.scan(row, x0, (jnp.moveaxis(m, -2, 0), jnp.arange(c)))
    return jnp.moveaxis(x, 0, -2)


def rwkv7_step(r: Array, log_w: Array, k: Array, v: Array, a: Array, b: Array, state: Array) -> tuple[Array, Array]:
    """One recurrent step (decode).

    Args:
      r, log_w, k, a, b: [b, h, n]; v: [b, h, e]; state: f32[b, h, n, e].

    Returns:
      y [b, h, e] in v's dtype and the new f32 state.
    """
    s = state.astype(_f32)
    a32, b32, k32, v32 = a.astype(_f32), b.astype(_f32), k.astype(_f32), v.astype(_f32)
    u = jnp.einsum("bhn,bhne->bhe", a32, s)  # the old state's read-out along a, before decay
    s = (
        jnp.exp(log_w.astype(_f32))[..., None] * s
        + b32[..., :, None] * u[..., None, :]
        + k32[..., :, None] * v32[..., None, :]
    )
    y = jnp.einsum("bhn,bhne->bhe", r.astype(_f32), s)
    return y.astype(v.dtype), s


def rwkv7_recurrent(
    r: Array,
    log_w: Array,
    k: Array,
    v: Array,
    a: Array,
    b: Array,
    state: Array | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """The naive recurrence, one token at a time (``lax.scan`` of ``rwkv7_step``); same contract as
    ``rwkv7_chunked``. With ``segment_ids`` the carried state is zeroed before each document's first token."""
    bsz, _, h, n = k.shape
    start = jnp.zeros((bsz, h, n, v.shape[-1]), _f32) if state is None else state.astype(_f32)

    def step(carry, inputs):
        xs, keep = inputs
        y, carry = rwkv7_step(*xs, where_kept(carry, keep))
        return carry, y

    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    # The state before token i belongs to i's document, except at a document start (a given state continues the first).
    keep = None if segment_ids is None else time_major(~segment_starts(segment_ids).at[:, 0].set(False))
    last, ys = jax.lax.scan(step, start, (tuple(map(time_major, (r, log_w, k, v, a, b))), keep))
    return jnp.moveaxis(ys, 0, 1), last


def rwkv7_chunked(
    r: Array,
    log_w: Array,
    k: Array,
    v: Array,
    a: Array,
    b: Array,
    chunk_size: int = 32,
    state: Array | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """Chunked RWKV-7 state evolution.

    Args:
      r, log_w, k, a, b: [b, t, h, n] receptance, log decay (<= 0), key, and the rank-one
        transition vectors (S_{t-1} -> diag(w) S + b (a^T S)); v: [b, t, h, e].
      chunk_size: c; the last chunk is padded, t < c uses one chunk of t.
      state: optional f32[b, h, n, e] before the first token (zeros if None).
      segment_ids: optional i32[b, t], packed documents: the state restarts at each one's first token.

    Returns:
      y [b, t, h, e] in v's dtype and the final state f32[b, h, n, e] (of the last document when packed).
    """
    bsz, t, h, n = k.shape
    e = v.shape[-1]
    c = min(chunk_size, t)
    nz = -(-t // c)
    pad = nz * c - t
    xs = [x.astype(_f32) for x in (r, log_w, k, v, a, b)]
    if pad:  # w = 1 (log 0) and zero inputs: identity transitions
        xs = [jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)]) for x in xs]
    r32, lw, k32, v32, a32, b32 = (x.reshape(bsz, nz, c, h, x.shape[-1]) for x in xs)  # [b, z, c, h, n | e]
    # Segment masks (ops/segments.py), all None when not packing: same [b, z, c, s], write [b, z, s] into the
    # chunk-end state, survive [b, z] (S0 to the chunk end), enter [b, z, c] (S0 reaches t). Padding joins the
    # last document: its identity steps change nothing.
    same = write = survive = enter = None
    if segment_ids is not None:
        same, write, survive, enter = chunk_masks(segment_ids, nz, c)

    cum = jnp.cumsum(lw, axis=2)  # [b, z, c, h, n]: L_t, chunk-local
    cum_before = jnp.concatenate([jnp.zeros_like(cum[:, :, :1]), cum[:, :, :-1]], axis=2)  # L_{t-1}
    causal = jnp.tril(jnp.ones((c, c), bool))[:, :, None, None]  # [c, s, 1, 1]
    diff = jnp.where(causal, cum[:, :, :, None] - cum[:, :, None, :], -jnp.inf)  # [b, z, c, s, h, n], masked before exp
    decay_incl = jnp.exp(where_kept(diff, same, -jnp.inf))  # e^{L_t - L_s}, s <= t
    # e^{L_{t-1} - L_s} for s < t: the inclusive decays one row down
    decay_excl = jnp.concatenate([jnp.zeros_like(decay_incl[:, :, :1]), decay_incl[:, :, :-1]], axis=2)
    decay_excl = where_kept(decay_excl, same)

    a_dec = a32[:, :, :, None] * decay_excl  # [b, z, c, s, h, n]
    r_dec = r32[:, :, :, None] * decay_incl
    m_ab = jnp.einsum("bztshn,bzshn->bzhts", a_dec, b32)
    m_ak = jnp.einsum("bztshn,bzshn->bzhts", a_dec, k32)
    n_rb = jnp.einsum("bztshn,bzshn->bzhts", r_dec, b32)
    n_rk = jnp.einsum("bztshn,bzshn->bzhts", r_dec, k32)

    # U = W S0 + U0 with W = (I - M_ab)^-1 A~ and U0 = (I - M_ab)^-1 M_ak V.
    inverse = _unit_lower_inverse(m_ab)  # [b, z, h, c, c]
    w_state = jnp.einsum("bzhts,bzshn->bzhtn", inverse, where_kept(a32 * jnp.exp(cum_before), enter))  # [b, z, h, c, n]
    u_own = jnp.einsum("bzhts,bzhsr,bzrhe->bzhte", inverse, m_ak, v32)  # [b, z, h, c, e]

    # Each chunk as an affine map of its entering state: S_end = P S0 + H.
    to_end = where_kept(jnp.exp(cum[:, :, -1:] - cum), write)  # [b, z, c, h, n]: e^{L_c - L_s} <= 1
    b_end, k_end = b32 * to_end, k32 * to_end
    total = where_kept(jnp.exp(cum[:, :, -1]), survive)  # [b, z, h, n]
    p_map = jnp.einsum("bzshi,bzhsj->bzhij", b_end, w_state) + total[..., :, None] * jnp.eye(n, dtype=_f32)
    h_map = jnp.einsum("bzshn,bzhse->bzhne", b_end, u_own) + jnp.einsum("bzshn,bzshe->bzhne", k_end, v32)

    def chunk_step(s, maps):
        p, hh = maps
        return jnp.einsum("bhij,bhje->bhie", p, s) + hh, s

    start = jnp.zeros((bsz, h, n, e), _f32) if state is None else state.astype(_f32)
    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    last, entering = jax.lax.scan(chunk_step, start, (time_major(p_map), time_major(h_map)))
    entering = jnp.moveaxis(entering, 0, 1)  # [b, z, h, n, e]: state before each chunk

    u = jnp.einsum("bzhcn,bzhne->bzhce", w_state, entering) + u_own  # [b, z, h, c, e]
    r_state = where_kept(r32 * jnp.exp(cum), enter)  # [b, z, c, h, n]
    y = (
        jnp.einsum("bzchn,bzhne->bzhce", r_state, entering)
        + jnp.einsum("bzhts,bzhse->bzhte", n_rb, u)
        + jnp.einsum("bzhts,bzshe->bzhte", n_rk, v32)
    )
    y = jnp.moveaxis(y, 2, 3).reshape(bsz, nz * c, h, e)[:, :t]
    return y.astype(v.dtype), last


def rwkv7_flops_per_token(heads: int, key_dim: int, v_dim: int, chunk: int) -> float:
    """Forward FLOPs per token of ``rwkv7_chunked`` (2 per multiply-add, elementwise ops 1 each).

    Per head, as the chunked form runs it (the full c x c square, masked): the pairwise decays
    (2 c n: difference, exp) and the a / r products with them (2 c n), the four decay-weighted
    matrices (8 c n), the [c, c] inverse by forward substitution (2 c^2), W and U0 (2 c n +
    4 c e), the chunk map P and H (2 n^2 + 4 n e), the entering state's read-outs (2 n e for U;
    2 n e + 4 c e for y); the chunk scan is 2 n^2 e / c.
    """
    h, n, e, c = heads, key_dim, v_dim, chunk
    return h * (14 * c * n + 8 * c * e + 2 * c * c + 2 * n * n + 8 * n * e + 2 * n * n * e / c + 12 * n)
