"""The (gated) delta rule: a naive recurrence, the chunked WY / UT-transform form, and one step.

DeltaNet: Yang, Wang, Zhang, Shen, Kim 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length" (arXiv:2406.06484). Gated DeltaNet: Yang, Kautz, Hatamizadeh 2024,
"Gated Delta Networks: Improving Mamba2 with Delta Rule" (arXiv:2412.06464). Per head, with a
state S [n, e] (n = key width dk, e = value width dv; letters of array_typing.py):

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T        o_t = S_t^T q_t

alpha_t = exp(log_alpha_t) in (0, 1] (alpha = 1: DeltaNet), beta_t in (0, 1), and k_t unit
length (the mixers L2-normalise it), so I - beta k k^T is a contraction and the state stays
bounded over any length. Equivalently, the state is first decayed, then corrected towards v_t
by the error of its own prediction: S <- alpha S; S <- S + beta k (v - S^T k)^T.

The chunked form (``chunk_delta_rule``) splits time into chunks of c tokens. With S_0 the state
entering a chunk, g_r = sum_{i <= r} log_alpha_i the chunk-local cumulative log-decay and
G[r, s] = exp(g_r - g_s) for s <= r (0 above the diagonal), the per-token corrections
u_r = beta_r (v_r - alpha_r S_{r-1}^T k_r) satisfy a unit lower-triangular system

    (I + tril(diag(beta) (K K^T o G), -1)) u = beta V - diag(beta exp(g)) K S_0,

so with the UT transform T = (I + tril(diag(beta) (K K^T o G), -1))^{-1} diag(beta)
(one unit-lower-triangular inverse per chunk, ``unit_lower_inverse``, applied to both
right-hand sides at once)

    U = T V,  W = T (exp(g) o K),  u = U - W S_0              (the WY representation)
    o_r = exp(g_r) S_0^T q_r + sum_{s <= r} G[r, s] (q_r . k_s) u_s
    S_c = exp(g_c) S_0 + sum_s exp(g_c - g_s) k_s u_s^T.

A ``lax.scan`` over chunks carries S (and emits each chunk's entering state and corrections u);
everything else is chunk-parallel matmuls, O(t c (n + e + c) + t n e) work per head against
O(t n e) sequential steps of the recurrence. Decay ratios come only from masked segment sums
(ops/ssd.py's ``segsum``: never exp of a positive exponent), relative to each chunk's start.
A length not divisible by c is zero-padded: beta = 0, log_alpha = 0 is the identity step, so
outputs and the final state are unchanged. With ``segment_ids`` (packed rows, ops/segments.py) the
state restarts at each document's first token: G is masked to same-document pairs and exp(g_r) to
positions still in the document of the token before the chunk. All math is float32 whatever the input dtype;
outputs come back in ``v``'s dtype and the state in float32.
"""

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.ops.segments import chunk_masks
from slm_jax.ops.ssd import segsum

_f32 = jnp.float32


def l2norm(x: Array, eps: float = 1e-6) -> Array:
    """x / sqrt(sum x^2 + eps) over the last axis, in float32 (fla's ``l2norm``, as Qwen3-Next uses)."""
    x = x.astype(_f32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def unit_lower_inverse(a: Array) -> Array:
    """(I + A)^{-1} for strictly lower-triangular A f32[..., c, c], by recursive doubling of blocks.

    Starting from the 1 x 1 diagonal blocks (inverse 1), each level merges neighbouring inverted
    diagonal blocks X1, X2 of size s into the inverse of [[I + A11, 0], [A21, I + A22]], which is
    [[X1, 0], [-X2 A21 X1, X2]]: log2(c) levels of batched matmuls, about 2/3 c^3 FLOPs, the
    recursive triangular inversion of LAPACK's trtri. It is written with matmuls rather than
    ``jax.scipy.linalg.solve_triangular`` because on CPU that calls LAPACK through scipy's
    OpenBLAS, whose worker threads fight XLA's for the cores: measured on 2 cores, the backward
    pass of this op ran 50-100x slower (seconds instead of milliseconds) unless
    OPENBLAS_NUM_THREADS=1. c is padded to a power of two with zeros (identity rows).
    """
    c = a.shape[-1]
    p = 1 << (c - 1).bit_length()
    lead = a.shape[:-2]
    a = jnp.pad(a, [(0, 0)] * len(lead) + [(0, p - c), (0, p - c)])
    x, s = jnp.ones((*lead, p, 1, 1), a.dtype), 1  # the inverted diagonal blocks, [..., p / s, s, s]
    while s < p:
        m = p // (2 * s)
        # A21 of every merged pair: block row 2j + 1, block column 2j, as [..., m, s, s].
        blocks = a.reshape(*lead, m, 2, s, m, 2, s)[..., :, 1, :, :, 0, :]  # [..., m, s, m, s]
        a21 = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)
        x1, x2 = x[..., 0::2, :, :], x[..., 1::2, :, :]
        top = jnp.concatenate([x1, jnp.zeros_like(x1)], axis=-1)
        bottom = jnp.concatenate([-(x2 @ a21 @ x1), x2], axis=-1)
        x, s = jnp.concatenate([top, bottom], axis=-2), 2 * s
    return x[..., 0, :c, :c]


def delta_rule_step(
    q: Array, k: Array, v: Array, beta: Array, log_alpha: Array | None, state: Array
) -> tuple[Array, Array]:
    """One token (decode): q, k [b, h, n], v [b, h, e], beta [b, h], log_alpha [b, h] or None,
    state f32[b, h, n, e] -> (o [b, h, e] in v's dtype, new f32 state)."""
    s = state.astype(_f32)
    if log_alpha is not None:
        s = s * jnp.exp(log_alpha.astype(_f32))[..., None, None]
    k32 = k.astype(_f32)
    error = v.astype(_f32) - jnp.einsum("bhne,bhn->bhe", s, k32)  # what the state mispredicts for k
    s = s + jnp.einsum("bhn,bhe->bhne", k32, beta.astype(_f32)[..., None] * error)
    o = jnp.einsum("bhne,bhn->bhe", s, q.astype(_f32))
    return o.astype(v.dtype), s


def recurrent_delta_rule(
    q: Array, k: Array, v: Array, beta: Array, log_alpha: Array | None = None, initial_state: Array | None = None
) -> tuple[Array, Array]:
    """The naive recurrence, one token at a time (``lax.scan`` of ``delta_rule_step``).

    Args and returns as ``chunk_delta_rule``.
    """
    bsz, _, h, n = k.shape
    state = jnp.zeros((bsz, h, n, v.shape[-1]), _f32) if initial_state is None else initial_state.astype(_f32)
    time_major = lambda a: jnp.moveaxis(a, 1, 0)
    xs = (q, k, v, beta) if log_alpha is None else (q, k, v, beta, log_alpha)

    def step(s, inputs):
        la = inputs[4] if log_alpha is not None else None
        o, s = delta_rule_step(*inputs[:4], la, s)
        return s, o

    last, o = jax.lax.scan(step, state, tuple(time_major(a) for a in xs))
    return jnp.moveaxis(o, 0, 1), last


def chunk_delta_rule(
    q: Array,
    k: Array,
    v: Array,
    beta: Array,
    log_alpha: Array | None = None,
    initial_state: Array | None = None,
    chunk_size: int = 64,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """The chunked WY / UT-transform form of the (gated) delta rule (see the module docstring).

    Args:
      q, k: [b, t, h, n] queries and (unit-norm) keys; v: [b, t, h, e] values.
      beta: [b, t, h] write strengths in (0, 1).
      log_alpha: [b, t, h] log-decays (<= 0), or None for DeltaNet (alpha = 1).
      initial_state: optional f32[b, h, n, e] state before the first token.
      chunk_size: c; the last chunk is zero-padded, and t < c runs one chunk of t.
      segment_ids: optional i32[b, t] documents of packed rows: the state restarts from zero at each
        document's first token (``initial_state`` continues the first document).

    Returns:
      o: [b, t, h, e] in v's dtype, and the final state f32[b, h, n, e]. One token continuing a
      state (decode) runs ``delta_rule_step`` instead of a one-token chunk.
    """
    bsz, t, h, n = k.shape
    if t == 1 and initial_state is not None:
        la = None if log_alpha is None else log_alpha[:, 0]
        o, state = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], la, initial_state)
        return o[:, None], state
    e, out_dtype = v.shape[-1], v.dtype
    c = min(chunk_size, t)
    nz = -(-t // c)
    pad = nz * c - t

    def chunks(a: Array) -> Array:
        """[b, t, h, ...] -> f32[b, h, z, c, ...], zero-padded to z * c tokens."""
        a = jnp.pad(a.astype(_f32), [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(bsz, nz, c, h, *a.shape[3:]), 3, 1)

    q, k, v, beta = chunks(q), chunks(k), chunks(v), chunks(beta)
    la = jnp.zeros_like(beta) if log_alpha is None else chunks(log_alpha)  # [b, h, z, c]
    cum = jnp.cumsum(la, axis=-1)  # g_r: log-decay from the chunk start through r, <= 0
    decay = jnp.exp(segsum(la))  # G[r, s] = exp(g_r - g_s) for s <= r, else 0
    from_start = jnp.exp(cum)  # exp(g_r): how much of the entering state reaches r
    if segment_ids is not None:
        # Padding joins the last document: its steps are the identity. Masks broadcast over the heads axis 1;
        # the chunk-end rows of decay and from_start then mask the writes and the carried state too.
        masks = chunk_masks(segment_ids, nz, c)
        decay = jnp.where(masks.same[:, None], decay, 0.0)
        from_start = jnp.where(masks.reaches[:, None], from_start, 0.0)

    # The UT transform: [U | W] = (I + A)^{-1} [beta V | beta exp(g) K] with A strictly lower.
    kk = jnp.einsum("bhzcn,bhzsn->bhzcs", k, k)
    strict = jnp.tril(jnp.ones((c, c), bool), k=-1)
    t_inv = unit_lower_inverse(jnp.where(strict, beta[..., None] * kk * decay, 0.0))  # [b, h, z, c, s]
    rhs = beta[..., None] * jnp.concatenate([v, from_start[..., None] * k], axis=-1)  # [b, h, z, s, e + n]
    uw = jnp.einsum("bhzcs,bhzsx->bhzcx", t_inv, rhs)
    u, w = uw[..., :e], uw[..., e:]

    # Inter-chunk recurrence: u_z = U - W S_0 (the corrections), S_c = exp(g_c) S_0 + K_dec^T u.
    k_to_end = decay[..., -1, :, None] * k  # exp(g_c - g_s) k_s: each key decayed to the chunk end
    chunk_decay = from_start[..., -1]  # [b, h, z]: 0 where the chunk holds a document start
    start = jnp.zeros((bsz, h, n, e), _f32) if initial_state is None else initial_state.astype(_f32)

    def step(s, inputs):
        u_z, w_z, k_z, d_z = inputs
        corr = u_z - jnp.einsum("bhcn,bhne->bhce", w_z, s)
        s_next = d_z[..., None, None] * s + jnp.einsum("bhcn,bhce->bhne", k_z, corr)
        return s_next, (s, corr)

    z_major = lambda a: jnp.moveaxis(a, 2, 0)
    last, (entering, corr) = jax.lax.scan(
        step, start, (z_major(u), z_major(w), z_major(k_to_end), z_major(chunk_decay))
    )
    entering, corr = jnp.moveaxis(entering, 0, 2), jnp.moveaxis(corr, 0, 2)  # [b, h, z, n, e], [b, h, z, c, e]

    # Outputs, chunk-parallel: the entering state read by decayed queries, plus intra-chunk attention.
    qk = jnp.einsum("bhzcn,bhzsn->bhzcs", q, k) * decay
    o = jnp.einsum("bhzcn,bhzne->bhzce", from_start[..., None] * q, entering)
    o = o + jnp.einsum("bhzcs,bhzse->bhzce", qk, corr)
    o = jnp.moveaxis(o, 1, 3).reshape(bsz, nz * c, h, e)[:, :t]
    return o.astype(out_dtype), last


def delta_rule_flops_per_token(heads: int, key_dim: int, value_dim: int, chunk: int) -> float:
    """Forward FLOPs per token of ``chunk_delta_rule`` (2 per multiply-add, 1 per elementwise op).

    Per head: K K^T and Q K^T (2 c n each), the inverse (2/3 p^3 per chunk, p = c rounded up
    to a power of two) and its product with the e + n right-hand sides (2 c (e + n)), the
    corrections W S_0 and the state update K^T u (2 n e each), the read-out of the entering
    state (2 n e) and the intra-chunk attention (2 c e), plus about 4 c for the decay mask and
    6 n + 4 e for scalings; the chunk decay of the state is n e / c.
    """
    c, n, e = chunk, key_dim, value_dim
    p = 1 << (c - 1).bit_length()
    per_head = (
        4 * c * n + 2 * p**3 / (3 * c) + 2 * c * (e + n) + 6 * n * e + 2 * c * e + 4 * c + 6 * n + 4 * e + n * e / c
    )
    return heads * per_head
