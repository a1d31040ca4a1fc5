"""Chunked mLSTM against its naive recurrence and a float64 numpy loop: outputs, final state, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.ops import mlstm as ops

# jitted once per shape: eager dispatch of the scans would dominate the run time
mlstm_chunked = jax.jit(ops.mlstm_chunked, static_argnums=5)
mlstm_recurrent = jax.jit(ops.mlstm_recurrent)
mlstm_step = jax.jit(ops.mlstm_step)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _inputs(bsz=2, t=45, h=3, n=12, e=5, seed=0, gate_scale=3.0):
    """numpy float32 inputs (no per-shape XLA compiles for random draws); exponential input gates up to e^(3 sigma)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)
    q, k, v = normal(bsz, t, h, n) / np.float32(n**0.5), normal(bsz, t, h, n), normal(bsz, t, h, e)
    log_i = gate_scale * normal(bsz, t, h)
    log_f = _log_sigmoid(gate_scale * normal(bsz, t, h) + 1.0)
    state = (normal(bsz, h, n, e), normal(bsz, h, n), normal(bsz, h))
    return q, k, v, log_i, log_f, state


def _numpy_loop(q, k, v, log_i, log_f, state=None, eps=1e-6):
    """The stabilised recurrence of the paper written out in float64, per step."""
    q, k, v, log_i, log_f = (np.asarray(x, np.float64) for x in (q, k, v, log_i, log_f))
    bsz, t, h, n = q.shape
    if state is None:
        c_mem, n_mem, m = np.zeros((bsz, h, n, v.shape[-1])), np.zeros((bsz, h, n)), np.zeros((bsz, h))
    else:
        c_mem, n_mem, m = (np.array(s, np.float64) for s in state)
    ys = np.zeros(v.shape)
    for i in range(t):
        m_new = np.maximum(log_f[:, i] + m, log_i[:, i])
        keep, write = np.exp(log_f[:, i] + m - m_new), np.exp(log_i[:, i] - m_new)
        c_mem = keep[..., None, None] * c_mem + write[..., None, None] * k[:, i, ..., :, None] * v[:, i, ..., None, :]
        n_mem = keep[..., None] * n_mem + write[..., None] * k[:, i]
        m = m_new
        den = np.maximum(np.abs(np.sum(q[:, i] * n_mem, -1)), np.exp(-m)) + eps
        ys[:, i] = np.einsum("bhn,bhne->bhe", q[:, i], c_mem) / den[..., None]
    return ys, (c_mem, n_mem, m)


def _close(got, want, tol):
    """Leaf by leaf, |got - want| <= tol * (|want| + max|want|)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w, np.float64)
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=tol, atol=tol * max(np.abs(w).max(), 1e-6))


def test_recurrence_equals_numpy_loop():
    q, k, v, log_i, log_f, state = _inputs(t=9)
    _close(mlstm_recurrent(q, k, v, log_i, log_f, state), _numpy_loop(q, k, v, log_i, log_f, state), 1e-5)
    _close(mlstm_recurrent(q, k, v, log_i, log_f), _numpy_loop(q, k, v, log_i, log_f), 1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
@pytest.mark.parametrize("t", [45, 1])
def test_chunked_equals_recurrence(chunk, t):
    q, k, v, log_i, log_f, state = _inputs(t=t)
    want = mlstm_recurrent(q, k, v, log_i, log_f, state)
    _close(mlstm_chunked(q, k, v, log_i, log_f, chunk, state), want, 2e-5)


def test_chunked_from_zero_state_equals_recurrence():
    q, k, v, log_i, log_f, _ = _inputs(t=20, h=2, n=4, e=12, seed=1)
    _close(mlstm_chunked(q, k, v, log_i, log_f, 8), mlstm_recurrent(q, k, v, log_i, log_f), 2e-5)


def test_split_sequence_continues_from_state():
    """Chunked over [0, 17) then [17, 40) from its final state == chunked over [0, 40), and one step continues it."""
    q, k, v, log_i, log_f, state = _inputs(t=40, seed=2)
    y_full, last_full = mlstm_chunked(q, k, v, log_i, log_f, 8, state)
    cut = lambda lo, hi: [x[:, lo:hi] for x in (q, k, v, log_i, log_f)]
    y1, mid = mlstm_chunked(*cut(0, 17), 8, state)
    y2, last = mlstm_chunked(*cut(17, 40), 8, mid)
    _close((np.concatenate([y1, y2], 1), last), (y_full, last_full), 2e-5)
    y_step, _ = mlstm_step(*[x[:, 17] for x in (q, k, v, log_i, log_f)], mid)
    _close(y_step, y2[:, 0], 2e-5)


def test_gradients_match_recurrence():
    q, k, v, log_i, log_f, state = _inputs(t=21, seed=3)
    w = np.random.default_rng(9).standard_normal(v.shape, np.float32)

    def loss(fn):
        def f(q, k, v, log_i, log_f, state):
            y, (c_mem, n_mem, m) = fn(q, k, v, log_i, log_f, state)
            return jnp.sum(y * w) + jnp.sum(jnp.sin(c_mem)) + jnp.sum(jnp.sin(n_mem)) + jnp.sum(m)

        return f

    args = (q, k, v, log_i, log_f, state)
    got = jax.jit(jax.grad(loss(lambda *a: ops.mlstm_chunked(*a[:5], 8, a[5])), argnums=range(6)))(*args)
    want = jax.jit(jax.grad(loss(lambda *a: ops.mlstm_recurrent(*a[:5], a[5])), argnums=range(6)))(*args)
    for g in jax.tree.leaves(got):
        assert np.all(np.isfinite(g))
    _close(got, want, 1e-4)


def test_padding_gives_finite_gradients():
    """t = 5 in chunks of 4 pads with log i = -inf: no NaN may leak into the gradients."""
    q, k, v, log_i, log_f, _ = _inputs(t=5, seed=4)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(ops.mlstm_chunked(*a, 4)[0]), argnums=range(5)))(q, k, v, log_i, log_f)
    for g in grads:
        assert np.all(np.isfinite(g))


def test_long_sequence_is_stable():
    """t = 8192 with input gates up to e^60 (unstabilised sums would overflow float32 at e^88).

    Against a float64 numpy loop. Queries and keys are positive so that n . q has no
    cancellation: h = num / max(|n . q|, e^-m) divides by a near-zero denominator otherwise, and
    the test would measure that conditioning instead of the recurrence. Errors are taken relative
    to each output's own scale (max over its e channels), which is strict: a row of signed values
    that nearly cancel amplifies the float32 rounding of its thousands of summed terms. Measured
    worst rows: chunked 2e-5, the naive float32 scan 1.5e-4 (it rounds m and the state at each of
    8192 steps, the chunked form once per chunk of 64); tolerances 1e-4 and 1e-3. Globally
    (relative to max |h|) both are below 6e-6.
    """
    q, k, v, log_i, log_f, _ = _inputs(bsz=1, t=8192, h=2, n=4, e=3, seed=5, gate_scale=1.0)
    q, k = np.abs(q), np.abs(k)
    log_i = 20.0 * log_i  # std 20: some steps have i ~ e^60
    log_f = _log_sigmoid(4.0 + 2.0 * np.random.default_rng(6).standard_normal(log_f.shape, np.float32))  # long memory
    want_y, (c_mem, n_mem, m) = _numpy_loop(q, k, v, log_i, log_f)
    row = np.abs(want_y).max(axis=-1, keepdims=True)  # each output's scale
    chunked, recurrent = mlstm_chunked(q, k, v, log_i, log_f, 64), mlstm_recurrent(q, k, v, log_i, log_f)
    for (got_y, got), tol in ((chunked, 1e-4), (recurrent, 1e-3)):
        assert np.all(np.isfinite(got_y)) and np.all(np.isfinite(got[0]))
        assert np.max(np.abs(got_y - want_y) / row) < tol
        # The state de-stabilised onto the float64 loop's m (e^(m_got - m) ~ 1; m itself is ~50 here).
        shift = np.exp(np.asarray(got[2], np.float64) - m)
        np.testing.assert_allclose(got[0] * shift[..., None, None], c_mem, rtol=tol, atol=tol * np.abs(c_mem).max())
        np.testing.assert_allclose(got[1] * shift[..., None], n_mem, rtol=tol, atol=tol * np.abs(n_mem).max())


def test_bfloat16_inputs_close_to_float32():
    q, k, v, log_i, log_f, state = _inputs(t=33, seed=7)
    y_ref, _ = mlstm_recurrent(q, k, v, log_i, log_f, state)
    low = lambda x: jnp.asarray(x, jnp.bfloat16)
    y, last = mlstm_chunked(low(q), low(k), low(v), log_i, log_f, 8, state)
    assert y.dtype == jnp.bfloat16 and last[0].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, atol=0.05 * np.abs(y_ref).max())
