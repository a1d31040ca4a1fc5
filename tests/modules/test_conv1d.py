"""CausalConv1D equals numpy's full convolution, and cached chunks equal one full pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.modules.conv1d import CausalConv1D


def numpy_causal_conv(kernel, bias, x):
    """np.convolve per (batch, channel), truncated to the causal part."""
    b, t, c = x.shape
    y = np.zeros_like(x)
    for i in range(b):
        for j in range(c):
            y[i, :, j] = np.convolve(x[i, :, j], kernel[::-1, j])[:t] + bias[j]
    return y


@pytest.mark.parametrize("k,t,c", [(4, 63, 5), (3, 2, 7), (1, 9, 3)])
def test_parallel_equals_numpy_convolution(k, t, c):
    conv = CausalConv1D(c, k)
    x = jax.random.normal(jax.random.key(0), (2, t, c))
    params = conv.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.3, params)  # a non-zero bias too
    y, cache = conv.apply(params, x)
    assert cache is None
    p = jax.tree.map(np.asarray, params["params"])
    np.testing.assert_allclose(y, numpy_causal_conv(p["kernel"], p["bias"], np.asarray(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("splits", [(1,) * 10, (2, 1, 7), (6, 4)])
def test_cached_chunks_equal_full_pass(splits):
    conv = CausalConv1D(6, 4)
    x = jax.random.normal(jax.random.key(2), (3, sum(splits), 6))
    params = conv.init(jax.random.key(3), x)
    full, _ = conv.apply(params, x)
    cache, outs, start = jnp.zeros((3, 3, 6)), [], 0
    for n in splits:
        y, cache = conv.apply(params, x[:, start : start + n], cache)
        outs.append(y)
        start += n
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(cache, x[:, -3:])


def test_kernel_init_is_symmetric():
    kernel = CausalConv1D(512, 4).init(jax.random.key(0), jnp.zeros((1, 1, 512)))["params"]["kernel"]
    assert kernel.shape == (4, 512) and float(kernel.min()) < -0.4 and float(kernel.max()) > 0.4
    assert abs(float(kernel.mean())) < 0.02
