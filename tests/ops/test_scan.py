"""Every linear-scan implementation against the Python-loop REFERENCE: states, final state, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.ops.scan import ScanImpl, linear_scan, resolve_impl, scan_step

FAST = [ScanImpl.LINEAR, ScanImpl.ASSOCIATIVE, ScanImpl.CHUNKED]
F32, BF16 = jnp.float32, jnp.bfloat16
# (shape [b, t, w...], chunk size, dtype, with h0): odd lengths and widths, a chunk that does
# not divide t, a chunk longer than t, chunks of 1, length 1, an SSM-style trailing state dim n.
CASES = [
    ((2, 63, 7), 16, F32, True),
    ((2, 63, 7), 16, BF16, True),
    ((2, 63, 7), 10, F32, False),
    ((3, 1, 33), 4, F32, True),
    ((3, 1, 33), 4, BF16, False),
    ((2, 20, 5, 3), 8, F32, False),
    ((2, 20, 5, 3), 8, BF16, True),
    ((1, 40, 4), 64, F32, False),
    ((2, 17, 3), 1, F32, True),
]
# Compiled once per (shapes, impl, chunk): an eager associative scan dispatches op by op.
_jit_scan = jax.jit(linear_scan, static_argnames=("impl", "chunk_size"))
TOL = {F32: dict(rtol=1e-5, atol=1e-5), BF16: dict(rtol=2e-2, atol=2e-2)}


def _inputs(shape, dtype=F32, seed=0):
    """a in (0, 1) like a gated recurrence's decay, b and h0 normal, h0 float32 [b, w...]."""
    ka, kb, kh = jax.random.split(jax.random.key(seed), 3)
    a = jax.random.uniform(ka, shape, minval=0.0, maxval=1.0).astype(dtype)
    b = jax.random.normal(kb, shape).astype(dtype)
    h0 = jax.random.normal(kh, shape[:1] + shape[2:])
    return a, b, h0


def _outputs_and_grads(impl, a, b, h0, chunk_size):
    """(states, last state, gradients of a random weighted sum of both w.r.t. a, b and h0).

    One program per implementation: fast paths are jitted; REFERENCE runs eagerly, because
    compiling its unrolled time loop takes longer than running it at test lengths.
    """
    kw, kl = jax.random.split(jax.random.key(1))
    w_all = jax.random.normal(kw, a.shape)
    w_last = jax.random.normal(kl, a.shape[:1] + a.shape[2:])

    def loss(a, b, h0):
        states, last = linear_scan(a, b, h0, impl=impl, chunk_size=chunk_size)
        return jnp.sum(states.astype(F32) * w_all) + jnp.sum(last * w_last), (states, last)

    argnums = (0, 1) if h0 is None else (0, 1, 2)
    run = jax.grad(loss, argnums=argnums, has_aux=True)
    grads, (states, last) = (run if impl is ScanImpl.REFERENCE else jax.jit(run))(a, b, h0)
    return states, last, grads


@pytest.mark.parametrize("shape,chunk_size,dtype,with_h0", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_matches_reference(shape, chunk_size, dtype, with_h0):
    a, b, h0 = _inputs(shape, dtype)
    h0 = h0 if with_h0 else None
    tol = TOL[dtype]
    ref_states, ref_last, ref_grads = _outputs_and_grads(ScanImpl.REFERENCE, a, b, h0, chunk_size)
    for impl in FAST:
        msg = impl.name
        states, last, grads = _outputs_and_grads(impl, a, b, h0, chunk_size)
        assert states.shape == shape and states.dtype == dtype, msg
        assert last.shape == shape[:1] + shape[2:] and last.dtype == F32, msg
        np.testing.assert_allclose(np.asarray(states, F32), np.asarray(ref_states, F32), err_msg=msg, **tol)
        np.testing.assert_allclose(last, ref_last, err_msg=msg, **tol)
        for name, got, want in zip(("a", "b", "h0"), grads, ref_grads):
            assert got.dtype == want.dtype, f"{msg} d{name}"
            np.testing.assert_allclose(np.asarray(got, F32), np.asarray(want, F32), err_msg=f"{msg} d{name}", **tol)


def test_reference_is_the_recurrence():
    """REFERENCE itself against the recurrence written out in numpy float64."""
    a, b, h0 = _inputs((2, 9, 3))
    states, last = linear_scan(a, b, h0, impl=ScanImpl.REFERENCE)
    a, b, h = (np.asarray(v, np.float64) for v in (a, b, h0))
    want = []
    for i in range(a.shape[1]):
        h = a[:, i] * h + b[:, i]
        want.append(h)
    np.testing.assert_allclose(states, np.stack(want, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", FAST, ids=lambda i: i.name.lower())
def test_step_by_step_equals_scan(impl):
    """Decoding token by token with ``scan_step`` reproduces the parallel scan, after a prefill."""
    a, b, h0 = _inputs((2, 30, 5, 2))
    states, last = _jit_scan(a, b, h0, impl=impl, chunk_size=8)
    _, h = _jit_scan(a[:, :11], b[:, :11], h0, impl=impl, chunk_size=8)  # prefill
    stepped = []
    for i in range(11, a.shape[1]):
        h = scan_step(a[:, i], b[:, i], h)
        stepped.append(h)
    np.testing.assert_allclose(jnp.stack(stepped, axis=1), states[:, 11:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", FAST, ids=lambda i: i.name.lower())
def test_bfloat16_accumulates_in_float32(impl):
    """a close to 1 over a long sequence: the state integrates many small inputs.

    Rounding the state to bfloat16 (8 mantissa bits) at every step would stall once the
    state is ~256 times the input and drift far from the float32 result; accumulating in
    float32 keeps the final state within bfloat16 input rounding of the float32 reference.
    """
    t = 2048
    a = jnp.full((1, t, 4), 0.9995, jnp.bfloat16)  # exactly representable decay close to 1
    b = jnp.full((1, t, 4), 0.01, jnp.bfloat16)
    _, last = _jit_scan(a, b, impl=impl, chunk_size=64)
    _, want = linear_scan(a.astype(jnp.float32), b.astype(jnp.float32), impl=ScanImpl.LINEAR)
    np.testing.assert_allclose(last, want, rtol=1e-4)

    def bf16_state(h, ab):  # what accumulating in bfloat16 would give
        h = (ab[0] * h + ab[1]).astype(jnp.bfloat16)
        return h, None

    drifted, _ = jax.lax.scan(bf16_state, jnp.zeros((1, 4), jnp.bfloat16), (a[0][:, None], b[0][:, None]))
    assert abs(float(drifted[0, 0]) - float(want[0, 0])) > 100 * abs(float(last[0, 0]) - float(want[0, 0]))


def test_resolve_impl():
    assert resolve_impl(ScanImpl.CHUNKED) is ScanImpl.CHUNKED
    assert resolve_impl(ScanImpl.AUTO, "cpu") is ScanImpl.LINEAR
    for platform in ("gpu", "cuda", "tpu"):
        assert resolve_impl(ScanImpl.AUTO, platform) is ScanImpl.ASSOCIATIVE
    assert resolve_impl(ScanImpl.AUTO) is not ScanImpl.AUTO


def test_empty_sequence_passes_state_through():
    a, b, h0 = _inputs((2, 0, 3))
    states, last = linear_scan(a, b, h0)
    assert states.shape == (2, 0, 3)
    np.testing.assert_array_equal(last, h0)


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="same shape"):
        linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_scan(jnp.ones((2, 5, 3)), jnp.ones((2, 5, 3)), chunk_size=0)
