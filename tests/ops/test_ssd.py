"""Chunked SSD (Mamba-2) against its naive per-step recurrence: outputs, final state, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.ops.ssd import reference_ssd, segsum, ssd, ssd_step


def _inputs(bsz=2, t=63, h=4, e=3, k=2, n=5, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(keys[0], (bsz, t, h, e), dtype)
    dt = jax.nn.softplus(jax.random.normal(keys[1], (bsz, t, h)) - 1.0).astype(dtype)
    a = -jnp.exp(jax.random.uniform(keys[2], (h,), minval=-1.0, maxval=1.5))
    b = jax.random.normal(keys[3], (bsz, t, k, n), dtype)
    c = jax.random.normal(keys[4], (bsz, t, k, n), dtype)
    h0 = jax.random.normal(keys[5], (bsz, h, e, n))
    return x, dt, a, b, c, h0


def _python_loop(x, dt, a, b, c, h0):
    """The recurrence written out in numpy float64, per head, per step."""
    x, dt, a, b, c, h0 = (np.asarray(v, np.float64) for v in (x, dt, a, b, c, h0))
    bsz, t, h, e = x.shape
    g = h // b.shape[2]
    state = h0.copy()
    y = np.zeros_like(x)
    for i in range(t):
        for hi in range(h):
            bi, ci = b[:, i, hi // g], c[:, i, hi // g]  # [b, n]
            decay = np.exp(dt[:, i, hi] * a[hi])[:, None, None]
            state[:, hi] = decay * state[:, hi] + (dt[:, i, hi, None] * x[:, i, hi])[:, :, None] * bi[:, None, :]
            y[:, i, hi] = np.einsum("ben,bn->be", state[:, hi], ci)
    return y, state


def test_reference_equals_python_loop():
    x, dt, a, b, c, h0 = _inputs(t=9)
    y, last = reference_ssd(x, dt, a, b, c, h0)
    y_np, last_np = _python_loop(x, dt, a, b, c, h0)
    np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, last_np, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 7, 16, 64, 100])
@pytest.mark.parametrize("t", [63, 1])
def test_chunked_equals_recurrence(chunk, t):
    x, dt, a, b, c, h0 = _inputs(t=t)
    y_ref, last_ref = reference_ssd(x, dt, a, b, c, h0)
    y, last = ssd(x, dt, a, b, c, chunk_size=chunk, h0=h0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(last, last_ref, rtol=1e-5, atol=2e-5)


def test_without_initial_state_and_single_group():
    x, dt, a, b, c, _ = _inputs(t=20, h=3, k=1, e=2, n=4, seed=1)
    y_ref, last_ref = reference_ssd(x, dt, a, b, c)
    y, last = ssd(x, dt, a, b, c, chunk_size=8)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(last, last_ref, rtol=1e-5, atol=2e-5)


def test_split_sequence_continues_from_state():
    # ssd over [0, 17) then [17, 40) from its final state == ssd over [0, 40): the prefill contract.
    x, dt, a, b, c, h0 = _inputs(t=40, seed=2)
    y_full, last_full = ssd(x, dt, a, b, c, chunk_size=8, h0=h0)
    cut = lambda v, lo, hi: v[:, lo:hi]
    y1, mid = ssd(*(cut(v, 0, 17) for v in (x, dt)), a, *(cut(v, 0, 17) for v in (b, c)), chunk_size=8, h0=h0)
    y2, last = ssd(*(cut(v, 17, 40) for v in (x, dt)), a, *(cut(v, 17, 40) for v in (b, c)), chunk_size=8, h0=mid)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y_full, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(last, last_full, rtol=1e-5, atol=2e-5)
    # and one step at a time from the same state
    y_step, state = ssd_step(x[:, 17], dt[:, 17], a, b[:, 17], c[:, 17], mid)
    np.testing.assert_allclose(y_step, y2[:, 0], rtol=1e-5, atol=2e-5)


def test_gradients_match_reference():
    x, dt, a, b, c, h0 = _inputs(t=21, seed=3)
    w = jax.random.normal(jax.random.key(9), (2, 21, 4, 3))

    def loss(fn):
        def f(x, dt, a, b, c, h0):
            y, last = fn(x, dt, a, b, c, h0)
            return jnp.sum(y * w) + jnp.sum(jnp.sin(last))

        return f

    args = (x, dt, a, b, c, h0)
    got = jax.grad(loss(lambda *v: ssd(*v[:5], chunk_size=8, h0=v[5])), argnums=range(6))(*args)
    want = jax.grad(loss(lambda *v: reference_ssd(*v[:5], h0=v[5])), argnums=range(6))(*args)
    for name, gg, ww in zip(("x", "dt", "a", "b", "c", "h0"), got, want):
        np.testing.assert_allclose(gg, ww, rtol=1e-4, atol=1e-4, err_msg=name)
        assert np.all(np.isfinite(gg)), name


def test_bfloat16_inputs_close_to_float32():
    x, dt, a, b, c, h0 = _inputs(t=33, seed=4)
    y_ref, last_ref = reference_ssd(x, dt, a, b, c, h0)
    low = lambda v: v.astype(jnp.bfloat16)
    y, last = ssd(low(x), low(dt), a, low(b), low(c), chunk_size=8, h0=h0)
    assert y.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    scale = float(jnp.abs(y_ref).max())
    np.testing.assert_allclose(y.astype(jnp.float32), y_ref, atol=0.05 * scale)
    np.testing.assert_allclose(last, last_ref, atol=0.05 * float(jnp.abs(last_ref).max()))


def test_segsum_is_masked_sum():
    la = jnp.array([0.5, -1.0, 2.0, -0.25])
    s = np.asarray(segsum(la))
    for i in range(4):
        for j in range(4):
            want = float(la[j + 1 : i + 1].sum()) if j <= i else -np.inf
            assert s[i, j] == pytest.approx(want)
