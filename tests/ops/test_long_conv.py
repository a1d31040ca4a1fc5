"""Long convolutions (ops/long_conv.py): FFT == direct == step-by-step, and the chunked diagonal SSM == its
recurrence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.ops.long_conv import (
    diag_ssm_chunked,
    diag_ssm_kernel,
    diag_ssm_reference,
    diag_ssm_step,
    long_conv_direct,
    long_conv_fft,
    long_conv_step,
    push_history,
)


def _conv_inputs(bsz=2, t=13, d=3, s=5, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (bsz, t, d)), jax.random.normal(k2, (s, d))


def _numpy_conv(u, k):
    """float64 causal convolution per channel with numpy's own direct convolution."""
    u, k = np.asarray(u, np.float64), np.asarray(k, np.float64)
    out = np.zeros_like(u)
    for bi in range(u.shape[0]):
        for di in range(u.shape[2]):
            out[bi, :, di] = np.convolve(u[bi, :, di], k[:, di])[: u.shape[1]]
    return out


def test_direct_equals_numpy():
    u, k = _conv_inputs(t=11, s=4)
    np.testing.assert_allclose(long_conv_direct(u, k), _numpy_conv(u, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t,s", [(1, 5), (13, 13), (13, 30), (37, 7)])
def test_fft_equals_direct_outputs_and_gradients(t, s):
    u, k = _conv_inputs(t=t, s=s, seed=t + s)
    np.testing.assert_allclose(long_conv_fft(u, k), long_conv_direct(u, k), rtol=1e-5, atol=1e-5)
    w = jax.random.normal(jax.random.key(9), u.shape)
    grad = lambda f: jax.grad(lambda u, k: jnp.sum(f(u, k) * w), argnums=(0, 1))(u, k)
    for a, b in zip(grad(long_conv_fft), grad(long_conv_direct)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("s", [1, 4, 9])
def test_history_prefill_and_steps_continue_the_sequence(s):
    # [0, 6) from zeros, then [6, 15) from the pushed history, then one step at a time: the full conv.
    u, k = _conv_inputs(t=20, s=s, seed=s)
    full = long_conv_direct(u, k)
    hist = push_history(jnp.zeros((2, s - 1, 3)), u[:, :6])
    np.testing.assert_allclose(long_conv_fft(u[:, 6:15], k, hist), full[:, 6:15], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(long_conv_direct(u[:, 6:15], k, hist), full[:, 6:15], rtol=1e-5, atol=1e-5)
    hist = push_history(hist, u[:, 6:15])
    for i in range(15, 20):
        y, hist = long_conv_step(u[:, i], k, hist)
        np.testing.assert_allclose(y, full[:, i], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(hist, u[:, 20 - (s - 1) :])


def test_fft_long_sequence_is_stable():
    # t = 8192 with a Hyena-like decaying filter of 8192 taps, against float64 numpy. A float32 FFT
    # convolution's error is about eps32 * log2(2t) ~ 1e-6 of the output's scale at worst (measured:
    # 2e-7 of max|y|); 2e-5 * max|y| leaves a wide margin and still catches a wrong padding (errors
    # of order max|y|) or a half-precision FFT (~1e-3).
    t = 8192
    u, k = _conv_inputs(bsz=1, t=t, d=2, s=t, seed=4)
    k = k * jnp.exp(-jnp.arange(t) / 1000.0)[:, None]
    y, ref = np.asarray(long_conv_fft(u, k)), _numpy_conv(u, k)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def _ssm_params(d=3, n=4, seed=1):
    """Real parameters (grad-friendly) of an S4D-like diagonal SSM, some modes slow (dt small), some oscillating."""
    ks = jax.random.split(jax.random.key(seed), 5)
    return {
        "log_dt": jax.random.uniform(ks[0], (d,), minval=np.log(1e-3), maxval=np.log(0.5)),
        "log_a_real": jnp.log(0.5) + 0.3 * jax.random.normal(ks[1], (d, n)),
        "a_imag": jnp.pi * jnp.arange(n) * jnp.ones((d, 1)),
        "bb": jax.random.normal(ks[2], (d, n, 2)),
        "c": jax.random.normal(ks[3], (d, n, 2)),
    }


def _ssm(p):
    log_a = jnp.exp(p["log_dt"])[:, None] * (-jnp.exp(p["log_a_real"]) + 1j * p["a_imag"])
    return log_a, p["bb"][..., 0] + 1j * p["bb"][..., 1], p["c"][..., 0] + 1j * p["c"][..., 1]


def _h0(bsz=2, d=3, n=4, seed=2):
    re, im = jax.random.normal(jax.random.key(seed), (2, bsz, d, n))
    return re + 1j * im


@pytest.mark.parametrize("chunk,t", [(1, 1), (4, 13), (7, 21), (64, 21)])
def test_chunked_ssm_equals_recurrence(chunk, t):
    x = jax.random.normal(jax.random.key(t), (2, t, 3))
    log_a, bb, c = _ssm(_ssm_params())
    for h0 in (None, _h0()):
        y_ref, h_ref = diag_ssm_reference(x, log_a, bb, c, h0)
        y, h = diag_ssm_chunked(x, log_a, bb, c, chunk, h0)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=2e-5)


def test_ssm_kernel_is_the_long_conv_of_the_recurrence():
    x = jax.random.normal(jax.random.key(3), (2, 17, 3))
    log_a, bb, c = _ssm(_ssm_params())
    y_conv = long_conv_fft(x, diag_ssm_kernel(log_a, bb, c, 17))
    np.testing.assert_allclose(y_conv, diag_ssm_reference(x, log_a, bb, c)[0], rtol=1e-5, atol=2e-5)


def test_ssm_split_sequence_and_steps_continue_from_state():
    x = jax.random.normal(jax.random.key(4), (2, 30, 3))
    log_a, bb, c = _ssm(_ssm_params())
    y_full, h_full = diag_ssm_chunked(x, log_a, bb, c, 8, _h0())
    y1, h = diag_ssm_chunked(x[:, :11], log_a, bb, c, 8, _h0())
    y2, h = diag_ssm_chunked(x[:, 11:25], log_a, bb, c, 8, h)
    ys = [y1, y2]
    for i in range(25, 30):
        y, h = diag_ssm_step(x[:, i], log_a, bb, c, h)
        ys.append(y[:, None])
    np.testing.assert_allclose(jnp.concatenate(ys, 1), y_full, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(h, h_full, rtol=1e-5, atol=2e-5)


def test_chunked_ssm_gradients_equal_the_recurrence():
    x = jax.random.normal(jax.random.key(5), (2, 19, 3))
    p = _ssm_params(seed=6)
    w = jax.random.normal(jax.random.key(7), x.shape)

    def loss(f):
        def fn(p, x):
            y, h = f(x, *_ssm(p))
            return jnp.sum(y * w) + jnp.sum(jnp.real(h) - 0.5 * jnp.imag(h))

        return jax.grad(fn, argnums=(0, 1))(p, x)

    got = loss(lambda x, *a: diag_ssm_chunked(x, *a, chunk_size=6, h0=_h0(seed=8)))
    ref = loss(lambda x, *a: diag_ssm_reference(x, *a, h0=_h0(seed=8)))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_chunked_ssm_long_sequence_is_stable():
    # t = 8192 against a float64 numpy recurrence. The chunk scan multiplies the carried state by
    # |a^c| < 1, so rounding errors are damped, not amplified: the error stays a few eps32 times
    # the memory of the slowest mode (~1/(dt |Re A|) steps): measured 1.1e-6 of max|y| (and of
    # max|h|) here; 2e-5 bounds it with a margin of ~20 and would catch any growth with t.
    t, d, n = 8192, 2, 3
    x = jax.random.normal(jax.random.key(10), (1, t, d))
    p = _ssm_params(d=d, n=n, seed=11)
    p["log_dt"] = jnp.log(jnp.array([1e-3, 0.1]))  # one channel with a ~2000-step memory
    log_a, bb, c = _ssm(p)
    y, h = diag_ssm_chunked(x, log_a, bb, c, 64)
    a64, bb64, c64 = (np.asarray(v, np.complex128) for v in (np.exp(np.asarray(log_a, np.complex128)), bb, c))
    x64 = np.asarray(x, np.float64)
    state = np.zeros((1, d, n), np.complex128)
    ref = np.zeros((1, t, d))
    for i in range(t):
        state = a64 * state + bb64 * x64[:, i, :, None]
        ref[:, i] = 2 * np.real(np.sum(c64 * state, axis=-1))
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(h, state, rtol=0, atol=2e-5 * np.abs(state).max())
