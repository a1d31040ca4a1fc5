"""Causal long convolutions per channel: explicit filters, and the diagonal state-space filter.

Explicit filters (Hyena, Poli et al. 2023, arXiv:2302.10866; BaseConv, Arora et al. 2023,
"Zoology", arXiv:2312.04927). A filter k of s taps acts on every channel d of u on its own:

    y_i = sum_{j=0}^{min(i, s-1)} k_j u_{i-j}            u, y: [b, t, d]; k: [s, d]

  * ``long_conv_direct``: the sum over lags, O(t s) per channel: the reference, and the fast
    form for short filters (LFM2, BaseConv's short variant).
  * ``long_conv_fft``: zero-pad to 2T (T = t plus any history), rfft, multiply, irfft, all in
    float32: O(T log T) per channel, the training path. 2T >= T + s - 1 makes the circular
    convolution of the FFT a linear one. Packed rows (segment_ids) take an exact masked sum over lags.
  * ``long_conv_step``: one token from the last s - 1 inputs, O(s) per channel: decode.

The next output of a filter of s taps reads the last s - 1 inputs, so the decode state of an
explicit long filter is that history, [b, s - 1, d]: like the keys and values of attention, it
grows with the context (up to the filter length; a filter as long as the context, Hyena's, has
s = max_len) and mixers declare it in ``kv_leaves``. Prefill from a cached history runs the FFT
over [history, u] and keeps the last t outputs (``push_history`` moves the window).

Diagonal SSM filter (S4D, Gu et al. 2022, arXiv:2206.11893; the "diagonal SSM" of H3, Fu, Dao et
al. 2023, arXiv:2212.14052), per channel d with n complex modes (each one of a conjugate pair,
hence 2n real state numbers):

    h_i = a o h_{i-1} + bb o x_i        h: c64[b, d, n]; a = exp(log_a), Re(log_a) < 0
    y_i = 2 Re(sum_n c_n h_{i,n})

is the long convolution with kernel K_j = 2 Re(sum_n c_n bb_n a_n^j), but its decode state h is
CONSTANT in size. ``diag_ssm_chunked`` runs it in chunks of c steps: within a chunk the Toeplitz
matrix of K_0..K_{c-1} (one [c, c, d] table shared by every chunk and batch row); each chunk's
contribution to the state at its end; the state entering each chunk by a scan over chunks; and
that state's contribution 2 Re(c a^{i+1} h_in) to the chunk's outputs. Only the powers a^j with
0 <= j <= c appear, all of modulus <= 1, so nothing can overflow.
"""

import math

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.ops.segments import chunk_masks, same_as_lagged, segment_starts

_f32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST  # float32 contractions stay float32 on GPU/TPU too


def _history_or_zeros(u: Array, s: int, history: Array | None) -> Array:
    if history is None:
        return jnp.zeros((u.shape[0], s - 1, u.shape[2]), _f32)
    return history.astype(_f32)


def long_conv_direct(u: Array, k: Array, history: Array | None = None, segment_ids: Array | None = None) -> Array:
    """The sum over lags: u [b, t, d], k [s, d], history [b, s - 1, d] (None: zeros) -> f32[b, t, d].

    ``segment_ids`` i32[b, t] (packed rows, no history): a lag that reaches into another document reads zero.
    """
    t, s = u.shape[1], k.shape[0]
    padded = jnp.concatenate([_history_or_zeros(u, s, history), u.astype(_f32)], axis=1)  # [b, s - 1 + t, d]
    k = k.astype(_f32)
    # Lags >= t read only the zero padding when there is no history.
    lags = s if history is not None else min(s, t)
    y = jnp.zeros(u.shape, _f32)
    for j in range(lags):
        lagged = padded[:, s - 1 - j : s - 1 - j + t]
        if segment_ids is not None:
            lagged = jnp.where(same_as_lagged(segment_ids, j)[..., None], lagged, 0.0)
        y = y + k[j] * lagged
    return y


@jax.custom_vjp
def _lag_sum_in_document(u: Array, k: Array, depth: Array) -> Array:
    """y_i = sum_{j <= depth_i} k_j u_{i-j}: u f32[b, t, d], k f32[s, d], depth i32[b, t] (steps since the
    document's first token) -> f32[b, t, d]. A scan over lags; custom gradients keep memory at O(b t d)."""
    t, s = u.shape[1], k.shape[0]
    padded = jnp.pad(u, ((0, 0), (s - 1, 0), (0, 0)))

    def add_lag(y, j):
        lagged = jax.lax.dynamic_slice_in_dim(padded, s - 1 - j, t, axis=1)
        return y + k[j] * jnp.where((j <= depth)[..., None], lagged, 0.0), None

    return jax.lax.scan(add_lag, jnp.zeros_like(u), jnp.arange(s))[0]


def _lag_sum_fwd(u: Array, k: Array, depth: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    return _lag_sum_in_document(u, k, depth), (u, k, depth)


def _lag_sum_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, None]:
    """With g^(j)_i = g_{i+j} where token i + j still has token i in its document (else 0):
    du_i = sum_j k_j g^(j)_i and dk_j = sum_{b, i} u_i g^(j)_i."""
    u, k, depth = res
    t, s = u.shape[1], k.shape[0]
    g_ahead = jnp.pad(g, ((0, 0), (0, s - 1), (0, 0)))
    depth_ahead = jnp.pad(depth, ((0, 0), (0, s - 1)), constant_values=-1)

    def add_lag(du, j):
        reach = jax.lax.dynamic_slice_in_dim(depth_ahead, j, t, axis=1)
        gj = jnp.where((j <= reach)[..., None], jax.lax.dynamic_slice_in_dim(g_ahead, j, t, axis=1), 0.0)
        return du + k[j] * gj, jnp.sum(u * gj, axis=(0, 1))

    du, dk = jax.lax.scan(add_lag, jnp.zeros_like(u), jnp.arange(s))
    return du, dk, None


_lag_sum_in_document.defvjp(_lag_sum_fwd, _lag_sum_bwd)


def long_conv_fft(u: Array, k: Array, history: Array | None = None, segment_ids: Array | None = None) -> Array:
    """FFT convolution in float32: u [b, t, d], k [s, d], history [b, s - 1, d] (None: zeros) -> f32[b, t, d].

    With a history the convolution runs over [history, u] (length T = s - 1 + t) and the last t
    outputs are kept; the filter is cut to T taps, since longer lags see nothing.

    ``segment_ids`` i32[b, t] (packed rows, no history): an FFT cannot stop at document boundaries, so
    the exact sum over lags, each masked to the token's own document, runs instead: O(t min(s, t)).
    """
    t = u.shape[1]
    if segment_ids is not None:
        idx = jnp.arange(t)
        depth = idx - jax.lax.cummax(jnp.where(segment_starts(segment_ids), idx, 0), axis=1)
        return _lag_sum_in_document(u.astype(_f32), k[: min(k.shape[0], t)].astype(_f32), depth)
    full = u.astype(_f32) if history is None else jnp.concatenate([history.astype(_f32), u.astype(_f32)], axis=1)
    n_time = full.shape[1]
    k = k[: min(k.shape[0], n_time)].astype(_f32)
    n = 1 << (2 * n_time - 2).bit_length()  # the smallest power of 2 >= 2T - 1: no wrap-around, and FFTs are fastest
    spec = jnp.fft.rfft(full, n=n, axis=1) * jnp.fft.rfft(k, n=n, axis=0)
    return jnp.fft.irfft(spec, n=n, axis=1)[:, n_time - t : n_time]


def fft_flops_per_token(seq_len: int) -> float:
    """Per channel and token, one FFT convolution of a length-T signal: three real FFTs of n = 2T
    points (signal, filter, inverse) at n log2 n each, one operation per point and radix-2 stage
    (the split-radix count for real data is ~2.5 n log2 n), and the n/2 + 1 complex products at 6."""
    n = 2 * seq_len
    return (3 * n * math.log2(n) + 6 * (n // 2 + 1)) / seq_len


def long_conv_step(u: Array, k: Array, history: Array) -> tuple[Array, Array]:
    """One decode step: u [b, d] (the new input), k [s, d], history [b, s - 1, d] oldest first.

    Returns (y f32[b, d], the new history [b, s - 1, d] in the history's dtype). An elementwise
    product and sum rather than a matmul, so it is exact float32 on every backend.
    """
    window = jnp.concatenate([history, u[:, None].astype(history.dtype)], axis=1)  # [b, s, d]: window[s-1-j] = u_{i-j}
    y = jnp.sum(window.astype(_f32) * k[::-1].astype(_f32), axis=1)
    return y, window[:, 1:]


def push_history(history: Array, u: Array) -> Array:
    """The last s - 1 inputs after feeding u [b, t, d] to history [b, s - 1, d] (history's dtype)."""
    full = jnp.concatenate([history, u.astype(history.dtype)], axis=1)
    return full[:, full.shape[1] - history.shape[1] :]


def _cmatmul(spec: str, z: Array, x: Array) -> Array:
    """einsum of a complex table z with a real array x, as two real einsums (no complex matmuls)."""
    re = jnp.einsum(spec, z.real, x, precision=_HIGHEST)
    im = jnp.einsum(spec, z.imag, x, precision=_HIGHEST)
    return jax.lax.complex(re, im)


def diag_ssm_kernel(log_a: Array, bb: Array, c: Array, length: int) -> Array:
    """K_j = 2 Re(sum_n c_n bb_n a_n^j) for j < length: log_a, bb, c c64[d, n] -> f32[length, d]."""
    powers = jnp.exp(jnp.arange(length, dtype=_f32)[:, None, None] * log_a)  # [length, d, n]
    return 2.0 * jnp.sum(jnp.real(powers * (bb * c)), axis=-1)


def diag_ssm_chunked(
    x: Array,
    log_a: Array,
    bb: Array,
    c: Array,
    chunk_size: int = 64,
    h0: Array | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """Chunked diagonal SSM.

    Args:
      x: f32[b, t, d] inputs.
      log_a: c64[d, n] log of the state decay, Re(log_a) < 0; bb, c: c64[d, n] input and output maps.
      chunk_size: chunk length c (min(c, t) is used; the last chunk is zero-padded).
      h0: optional c64[b, d, n] state before the first input.
      segment_ids: optional i32[b, t] (packed rows): the state restarts from zero at each document's
        first token, by 0/1 masks on the Toeplitz product, the chunk-end states and the carried state.

    Returns:
      (y f32[b, t, d], final state c64[b, d, n]).
    """
    bsz, t, d = x.shape
    cs = min(chunk_size, t)
    nc = -(-t // cs)
    rem = t - (nc - 1) * cs  # real steps in the last chunk, 1..cs
    xc = jnp.pad(x.astype(_f32), ((0, 0), (0, nc * cs - t), (0, 0))).reshape(bsz, nc, cs, d)
    powers = jnp.exp(jnp.arange(cs + 1, dtype=_f32)[:, None, None] * log_a)  # [cs + 1, d, n]: a^j
    if segment_ids is not None:  # as f32 0/1 factors; the padded tail continues the last document
        intra, write, carry, enter = (m.astype(_f32) for m in chunk_masks(segment_ids, nc, cs))

    # 1. inside each chunk, from a zero state: the Toeplitz matrix of the kernel.
    kern = diag_ssm_kernel(log_a, bb, c, cs)  # [cs, d]
    lag = jnp.arange(cs)[:, None] - jnp.arange(cs)[None, :]  # [i, j]: i - j
    toeplitz = jnp.where((lag >= 0)[:, :, None], kern[jnp.maximum(lag, 0)], 0.0)  # [i, j, d]
    if segment_ids is None:
        y = jnp.einsum("ijd,bzjd->bzid", toeplitz, xc, precision=_HIGHEST)
    else:
        y = jnp.einsum("ijd,bzij,bzjd->bzid", toeplitz, intra, xc, precision=_HIGHEST)

    # 2. each chunk's state at its end from a zero start: sum_j a^{cs-1-j} bb x_j.
    written = xc if segment_ids is None else xc * write[..., None]
    local = _cmatmul("jdn,bzjd->zbdn", powers[cs - 1 :: -1] * bb, written)  # [z, b, d, n]

    # 3. the state entering each chunk: h_{z+1} = a^cs h_z + local_z (a^cs carry_z with segments).
    h = jnp.zeros((bsz, d, log_a.shape[-1]), jnp.complex64) if h0 is None else h0.astype(jnp.complex64)
    if segment_ids is None:
        h_in = jax.lax.scan(lambda hz, loc: (powers[cs] * hz + loc, hz), h, local)[1]  # [z, b, d, n]
    else:
        step = lambda hz, inp: (powers[cs] * hz * inp[1][:, None, None] + inp[0], hz)
        h_in = jax.lax.scan(step, h, (local, carry.T))[1]

    # 4. its contribution to the chunk's outputs: 2 Re(sum_n c_n a_n^{i+1} h_in,n).
    out_map = powers[1:] * c  # [i, d, n]
    entering = 2.0 * (
        jnp.einsum("idn,zbdn->bzid", out_map.real, h_in.real, precision=_HIGHEST)
        - jnp.einsum("idn,zbdn->bzid", out_map.imag, h_in.imag, precision=_HIGHEST)
    )
    y = y + (entering if segment_ids is None else entering * enter[..., None])
    y = y.reshape(bsz, nc * cs, d)[:, :t]

    # The final state from the last chunk's entering state and its rem real inputs (not the
    # padded end, which would have decayed it by a^(cs - rem) more); with segments, the last document's.
    last, h_prev = xc[:, -1, :rem], h_in[-1]  # [b, rem, d], [b, d, n]
    if segment_ids is not None:
        last, h_prev = last * intra[:, -1, rem - 1, :rem, None], h_prev * enter[:, -1, rem - 1, None, None]
    h_last = powers[rem] * h_prev + _cmatmul("jdn,bjd->bdn", powers[rem - 1 :: -1] * bb, last)
    return y, h_last


def diag_ssm_step(x: Array, log_a: Array, bb: Array, c: Array, h: Array) -> tuple[Array, Array]:
    """One step: x f32[b, d], log_a/bb/c c64[d, n], h c64[b, d, n] -> (y f32[b, d], h c64[b, d, n])."""
    h = jnp.exp(log_a) * h + bb * x.astype(_f32)[..., None]
    return 2.0 * jnp.sum(jnp.real(c * h), axis=-1), h


def diag_ssm_reference(x: Array, log_a: Array, bb: Array, c: Array, h0: Array | None = None) -> tuple[Array, Array]:
    """The recurrence as a Python loop over time: x f32[b, t, d] -> (y f32[b, t, d], h c64[b, d, n])."""
    h = jnp.zeros((x.shape[0], x.shape[2], log_a.shape[-1]), jnp.complex64) if h0 is None else h0
    ys = []
    for i in range(x.shape[1]):
        y, h = diag_ssm_step(x[:, i], log_a, bb, c, h)
        ys.append(y)
    return jnp.stack(ys, axis=1), h
