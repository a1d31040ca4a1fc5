"""The fused selective scan equals the materialised recurrence, in values, final state and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.ops.scan import ScanImpl
from slm_jax.ops.selective_scan import selective_scan


def inputs(b=2, t=63, w=5, n=3, seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(k[0], (b, t, w))
    dt = jax.nn.softplus(jax.random.normal(k[1], (b, t, w)))
    a = -jnp.exp(jax.random.normal(k[2], (w, n)))
    bb, cc = jax.random.normal(k[3], (b, t, n)), jax.random.normal(k[4], (b, t, n))
    h0 = jax.random.normal(k[5], (b, w, n))
    return x, dt, a, bb, cc, h0


def python_loop(x, dt, a, b, c, h0):
    """Alg. 2 of Gu & Dao (2023) one token at a time, in numpy float64."""
    x, dt, a, b, c, h = (np.asarray(v, np.float64) for v in (x, dt, a, b, c, h0))
    ys = []
    for t in range(x.shape[1]):
        h = np.exp(dt[:, t, :, None] * a) * h + (dt[:, t] * x[:, t])[..., None] * b[:, t, None, :]
        ys.append(np.einsum("bwn,bn->bw", h, c[:, t]))
    return np.stack(ys, 1), h


@pytest.mark.parametrize("impl", [ScanImpl.LINEAR, ScanImpl.ASSOCIATIVE, ScanImpl.REFERENCE, ScanImpl.AUTO])
@pytest.mark.parametrize("t", [63, 1])
def test_equals_python_loop(impl, t):
    args = inputs(t=t)
    y, last = selective_scan(*args, impl=impl)
    y_ref, last_ref = python_loop(*args)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, last_ref, rtol=1e-5, atol=1e-5)


def test_gradients_of_fused_equal_materialised():
    args = inputs()
    weights = jax.random.normal(jax.random.key(9), (2, 63, 5))

    def loss(impl):
        def f(*a):
            y, last = selective_scan(*a, impl=impl)
            return jnp.sum(y * weights) + jnp.sum(last**2)

        return jax.grad(f, argnums=tuple(range(6)))(*args)

    for g, g_ref in zip(loss(ScanImpl.LINEAR), loss(ScanImpl.REFERENCE)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


def test_split_sequence_continues_from_state():
    x, dt, a, b, c, h0 = inputs()
    y, last = selective_scan(x, dt, a, b, c, h0)
    y1, mid = selective_scan(x[:, :20], dt[:, :20], a, b[:, :20], c[:, :20], h0)
    y2, last2 = selective_scan(x[:, 20:], dt[:, 20:], a, b[:, 20:], c[:, 20:], mid)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(last2, last, rtol=1e-6, atol=1e-6)
