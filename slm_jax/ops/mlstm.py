"""The mLSTM cell (matrix memory, exponential gating), chunked, with its naive recurrent reference.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517), Sec. 2.3 and
App. A.3 (stabilised mLSTM). Per head, with q, k [n], v [e], a matrix memory C [n, e] (the
transpose of the paper's v k^T, as xLSTM-7B's kernels store it), a normaliser n [n] and scalar
log-gates log i_t (exponential input gate: the pre-activation itself) and log f_t (sigmoid forget
gate: logsigmoid of the pre-activation), every step is

    m_t = max(log f_t + m_{t-1}, log i_t)                          the stabiliser state
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(log i_t - m_t) k_t v_t^T
    n_t = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(log i_t - m_t) k_t
    h_t = C_t^T q_t / (max(|n_t . q_t|, exp(-m_t)) + eps)

(C, n) are the paper's unstabilised memory and normaliser times exp(-m_t), so every gate factor
is <= 1 and nothing overflows however large the exponential input gate gets; h_t is the paper's
C~ q / max(|n~ . q|, 1), apart from eps. The initial state is C = 0, n = 0, m = 0 (as in
xLSTM-7B / Hugging Face ``xlstm``, whose m starts at 0, not -inf). Query scaling (1 / sqrt(n)) is
the caller's business.

Letters (array_typing.py): b batch, t time, h heads, n query/key head width, e value head width;
c / s target / source position inside a chunk of length c, z the chunk index. Everything is
float32 whatever the input dtype; ``y`` comes back in ``v``'s dtype and the state in float32.

The chunked form (``mlstm_chunked``; the xLSTM-7B / mlstm_kernels "chunkwise" algorithm) splits
time into chunks of c steps. With the chunk-local cumulative log forget gate F_c = sum_{j<=c} log f_j
and the state (C0, n0, m0) entering the chunk, unrolling the recurrence gives

    log D[c, s] = (F_c - F_s) + log i_s   (s <= c; -inf above the diagonal)
    m_c = max(F_c + m0, max_s log D[c, s])                    = the recurrent m_t exactly
    h_c = [exp(F_c + m0 - m_c) C0^T q_c + sum_s exp(log D[c, s] - m_c) (q_c . k_s) v_s]
          / (max(|same with n0 and 1 in place of C0 and v_s|, exp(-m_c)) + eps)

so all chunks run in parallel as masked [c, c] "attention" once the entering states are known,
and those come from a ``lax.scan`` over chunks of (C, n, m). Every exponent above is <= 0 by
construction (each is a log weight minus the max over the same terms), F_c - F_s is a masked
segment sum (never a difference of long cumulative sums), and padding a short last chunk with
log f = 0, log i = -inf leaves outputs and state unchanged. Because both forms carry the same m,
their (C, n, m) agree directly, not only after de-stabilising (C e^m, n e^m).

With ``segment_ids`` (packed rows, ops/segments.py) (C, n, m) restart at (0, 0, 0) at each
document's first token: D is masked to same-document pairs, F_c sums only the document's own
gates, and the entering state (else m0 = 0) serves only positions still in the document of the
token before the chunk; a chunk holding a document start does not carry its entering state on.
"""

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.ops.segments import chunk_masks, where_kept

_f32 = jnp.float32

State = tuple[Array, Array, Array]  # (C f32[b, h, n, e], n f32[b, h, n], m f32[b, h])


def zero_state(bsz: int, heads: int, qk_dim: int, v_dim: int) -> State:
    """The empty mLSTM state: C = 0 [b, h, n, e], n = 0 [b, h, n], m = 0 [b, h]."""
    return (
        jnp.zeros((bsz, heads, qk_dim, v_dim), _f32),
        jnp.zeros((bsz, heads, qk_dim), _f32),
        jnp.zeros((bsz, heads), _f32),
    )


def _segsum(x: Array) -> Array:
    """f32[..., c] -> f32[..., c, s]: sum of x over (s, c] for s <= c, -inf above the diagonal.

    Summing masked copies keeps each entry exact to one rounding per term, where differencing a
    cumulative sum would lose the digits of large partial sums (strong forgetting).
    """
    c = x.shape[-1]
    strict = jnp.tril(jnp.ones((c, c), bool), k=-1)
    seg = jnp.cumsum(jnp.where(strict, x[..., :, None], 0.0), axis=-2)
    return jnp.where(jnp.tril(jnp.ones((c, c), bool)), seg, -jnp.inf)


def _max_last(x: Array) -> Array:
    """f32[..., s] -> f32[...]: the max over the last axis, differentiated through one argmax entry.

    ``jnp.max``'s derivative divides by the number of entries equal to the max. Under ``jit`` XLA
    may recompute ``x`` for the backward in another fusion with another rounding (a fused
    multiply-add), so that no entry equals the forward's max: the count is 0 and the gradient
    0 / 0 = NaN. Gathering at the argmax has no such test (the derivative of ``torch.max(x, dim)``).
    """
    return jnp.take_along_axis(x, jnp.argmax(x, axis=-1)[..., None], axis=-1)[..., 0]


def mlstm_step(
    q: Array, k: Array, v: Array, log_i: Array, log_f: Array, state: State, eps: float = 1e-6
) -> tuple[Array, State]:
    """One recurrent step (decode).

    Args:
      q, k: [b, h, n]; v: [b, h, e]; log_i, log_f: [b, h] log input / forget gates.
      state: (C f32[b, h, n, e], n f32[b, h, n], m f32[b, h]).
      eps: added to the denominator.

    Returns:
      h [b, h, e] in v's dtype and the new f32 state.
    """
    c_mem, n_mem, m = (s.astype(_f32) for s in state)
    q32, k32, v32 = q.astype(_f32), k.astype(_f32), v.astype(_f32)
    li, lf = log_i.astype(_f32), log_f.astype(_f32)
    m_new = jnp.maximum(lf + m, li)
    keep, write = jnp.exp(lf + m - m_new), jnp.exp(li - m_new)  # both <= 1
    c_mem = keep[..., None, None] * c_mem + write[..., None, None] * (k32[..., :, None] * v32[..., None, :])
    n_mem = keep[..., None] * n_mem + write[..., None] * k32
    num = jnp.einsum("bhn,bhne->bhe", q32, c_mem)
    den = jnp.maximum(jnp.abs(jnp.sum(q32 * n_mem, axis=-1)), jnp.exp(-m_new)) + eps
    return (num / den[..., None]).astype(v.dtype), (c_mem, n_mem, m_new)


def mlstm_recurrent(
    q: Array, k: Array, v: Array, log_i: Array, log_f: Array, state: State | None = None, eps: float = 1e-6
) -> tuple[Array, State]:
    """The naive recurrence, one token at a time (``lax.scan`` of ``mlstm_step``); same contract as
    ``mlstm_chunked``."""
    bsz, _, h, n = q.shape
    start = zero_state(bsz, h, n, v.shape[-1]) if state is None else state

    def step(carry, inputs):
        y, carry = mlstm_step(*inputs, carry, eps=eps)
        return carry, y

    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    last, ys = jax.lax.scan(step, start, tuple(map(time_major, (q, k, v, log_i, log_f))))
    return jnp.moveaxis(ys, 0, 1), last


def mlstm_chunked(
    q: Array,
    k: Array,
    v: Array,
    log_i: Array,
    log_f: Array,
    chunk_size: int = 64,
    state: State | None = None,
    eps: float = 1e-6,
    segment_ids: Array | None = None,
) -> tuple[Array, State]:
    """Chunked parallel mLSTM.

    Args:
      q, k: [b, t, h, n]; v: [b, t, h, e].
      log_i: [b, t, h] log input gate (any real); log_f: [b, t, h] log forget gate (<= 0 for a
        sigmoid gate, but any real works: every exponent is taken relative to a max).
      chunk_size: c; the last chunk is padded, t < c uses one chunk of t.
      state: optional (C, n, m) before the first token (``zero_state`` if None).
      eps: added to the denominator.
      segment_ids: optional i32[b, t] documents of packed rows: the state restarts at each
        document's first token (``state`` continues the first document).

    Returns:
      h [b, t, h, e] in v's dtype and the final state (C f32[b, h, n, e], n f32[b, h, n], m f32[b, h]).
    """
    bsz, t, h, n = q.shape
    e = v.shape[-1]
    c = min(chunk_size, t)
    nz = -(-t // c)
    pad = nz * c - t
    q32, k32, v32 = q.astype(_f32), k.astype(_f32), v.astype(_f32)
    li, lf = log_i.astype(_f32), log_f.astype(_f32)
    if pad:  # padded steps: f = 1, i = 0 (log -inf), no key or value: the state passes through
        padt = lambda x, value=0.0: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=value)
        q32, k32, v32, lf = padt(q32), padt(k32), padt(v32), padt(lf)
        li = padt(li, -jnp.inf)
    q32, k32 = q32.reshape(bsz, nz, c, h, n), k32.reshape(bsz, nz, c, h, n)
    v32 = v32.reshape(bsz, nz, c, h, e)
    li = li.reshape(bsz, nz, c, h).transpose(0, 1, 3, 2)  # [b, z, h, c]
    lf = lf.reshape(bsz, nz, c, h).transpose(0, 1, 3, 2)
    cum = jnp.cumsum(lf, axis=-1)  # [b, z, h, c]: F_c, log forget from the chunk start to c
    log_d = _segsum(lf) + li[..., None, :]  # [b, z, h, c, s]
    continues = survives = None  # with segment_ids: c is in the document entering its chunk; no start in the chunk
    if segment_ids is not None:
        # Padding joins the last document (its steps are the identity); masks get a heads axis 2 to broadcast.
        masks = chunk_masks(segment_ids, nz, c)
        same = masks.same[:, :, None]  # [b, z, 1, c, s]
        log_d = jnp.where(same, log_d, -jnp.inf)
        cum = jnp.sum(jnp.where(same & jnp.tril(jnp.ones((c, c), bool)), lf[..., None, :], 0.0), axis=-1)
        continues = masks.reaches[:, :, None]  # [b, z, 1, c]: c is in the document that enters the chunk
        survives = masks.survives[:, :, None]  # [b, z, 1]: the entering state reaches the chunk's end

    # Each chunk's own contribution to its end state, relative to its own max a_max (parallel over chunks).
    to_end = log_d[..., -1, :]  # [b, z, h, s]: F_last - F_s + log i_s
    a_max = _max_last(to_end)  # [b, z, h]
    w_end = jnp.exp(to_end - a_max[..., None])
    c_own = jnp.einsum("bzshn,bzhs,bzshe->bzhne", k32, w_end, v32)
    n_own = jnp.einsum("bzshn,bzhs->bzhn", k32, w_end)

    # States entering each chunk: (C, n, m) carried over chunks, stabilised like one recurrent step.
    def chunk_step(carry, inputs):
        f_total, own_max, own_c, own_n, *cont = inputs  # cont: [survives] or []
        c_mem, n_mem, m = (where_kept(x, cont[0]) for x in carry) if cont else carry  # else the empty state
        m_new = jnp.maximum(f_total + m, own_max)
        keep, write = jnp.exp(f_total + m - m_new), jnp.exp(own_max - m_new)
        c_new = keep[..., None, None] * c_mem + write[..., None, None] * own_c
        n_new = keep[..., None] * n_mem + write[..., None] * own_n
        return (c_new, n_new, m_new), carry

    start = zero_state(bsz, h, n, e) if state is None else tuple(s.astype(_f32) for s in state)
    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    xs = (cum[..., -1], a_max, c_own, n_own) + (() if survives is None else (survives,))
    last, entering = jax.lax.scan(chunk_step, start, tuple(map(time_major, xs)))
    c_in, n_in, m_in = (jnp.moveaxis(x, 0, 1) for x in entering)  # [b, z, h, n, e], [b, z, h, n], [b, z, h]

    # Outputs: intra-chunk masked attention plus the entering state, both relative to the recurrent m_c.
    # A position starting its document in the chunk sees the empty state (m0 = 0) instead.
    m0 = m_in[..., None] if continues is None else jnp.where(continues, m_in[..., None], 0.0)
    from_state = cum + m0  # [b, z, h, c]: log weight of the entering state at c
    m_c = jnp.maximum(from_state, _max_last(log_d))
    scores = jnp.einsum("bzchn,bzshn->bzhcs", q32, k32) * jnp.exp(log_d - m_c[..., None])
    state_w = jnp.exp(from_state - m_c)  # [b, z, h, c]
    if continues is not None:
        state_w = jnp.where(continues, state_w, 0.0)
    num = jnp.einsum("bzhcs,bzshe->bzche", scores, v32)
    num = num + jnp.einsum("bzchn,bzhne,bzhc->bzche", q32, c_in, state_w)
    den = jnp.sum(scores, axis=-1) + jnp.einsum("bzchn,bzhn,bzhc->bzhc", q32, n_in, state_w)
    den = jnp.maximum(jnp.abs(den), jnp.exp(-m_c)) + eps  # [b, z, h, c]
    y = num / jnp.moveaxis(den, -1, 2)[..., None]
    return y.reshape(bsz, nz * c, h, e)[:, :t].astype(v.dtype), last


def mlstm_flops_per_token(heads: int, qk_dim: int, v_dim: int, chunk: int) -> float:
    """Forward FLOPs per token of ``mlstm_chunked`` (2 per multiply-add, elementwise ops 1 each).

    Per head: the chunk's q k^T scores (2 c n) and their gate weighting (~4 c: segment sum,
    exp, product), scores times values (2 c e) and row sums (c), the entering state's read-out
    (2 n e + 2 n), the chunk-end contribution (2 n e + 2 n); the chunk scan is O(n e / c).
    """
    h, n, e, c = heads, qk_dim, v_dim, chunk
    return h * (2 * c * n + 5 * c + 2 * c * e + 4 * n * e + 4 * n + 10 + 3 * n * e / c)
