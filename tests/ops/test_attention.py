import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.ops.attention import attend, attention_mask, reference_attention


def _qkv(b, t, s, h, k, e, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, h, e), dtype)
    kk = jax.random.normal(keys[1], (b, k, s, e), dtype)  # head-major, as ops.attend takes them
    v = jax.random.normal(keys[2], (b, k, s, e), dtype)
    return q, kk, v


@pytest.mark.parametrize("h,k", [(4, 4), (6, 2), (5, 1)])  # MHA, GQA, MQA (odd head count)
@pytest.mark.parametrize("window", [0, 5])
def test_attend_matches_reference(h, k, window):
    b, t, e = 2, 13, 6
    q, kk, v = _qkv(b, t, t, h, k, e)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    out = attend(q, kk, v, pos, pos, window)
    np.testing.assert_allclose(out, reference_attention(q, kk, v, pos, pos, window), rtol=1e-5, atol=1e-5)


def test_attend_with_empty_and_shuffled_slots():
    # A ring buffer holds positions out of order and empty slots (-1): only the mask matters.
    b, t, s, h, k, e = 1, 3, 7, 2, 1, 4
    q, kk, v = _qkv(b, t, s, h, k, e, seed=1)
    q_pos = jnp.array([[5, 6, 7]])
    k_pos = jnp.array([[4, 2, -1, 3, 5, 6, 7]])
    out = attend(q, kk, v, q_pos, k_pos, window=4)
    np.testing.assert_allclose(out, reference_attention(q, kk, v, q_pos, k_pos, window=4), rtol=1e-5, atol=1e-5)


def test_mask_semantics():
    m = attention_mask(jnp.array([[3]]), jnp.array([[0, 1, 2, 3, 4, -1]]), window=3)
    assert m[0, 0].tolist() == [False, True, True, True, False, False]


def test_bfloat16_close_to_float32():
    q, kk, v = _qkv(2, 17, 17, 4, 2, 8)
    pos = jnp.broadcast_to(jnp.arange(17), (2, 17))
    ref = attend(q, kk, v, pos, pos)
    low = attend(q.astype(jnp.bfloat16), kk.astype(jnp.bfloat16), v.astype(jnp.bfloat16), pos, pos)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(jnp.float32), ref, atol=5e-2)


def test_gradients_match_reference_formula():
    # Gradients of the fast path against autodiff of a dense-mask formulation with repeated heads.
    b, t, h, k, e = 1, 9, 4, 2, 4
    q, kk, v = _qkv(b, t, t, h, k, e, seed=2)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))

    def dense(q, kk, v):
        kr, vr = (jnp.repeat(a.transpose(0, 2, 1, 3), h // k, axis=2) for a in (kk, v))
        s = jnp.einsum("bthe,bshe->bhts", q, kr) / jnp.sqrt(e)
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        return jnp.einsum("bhts,bshe->bthe", jax.nn.softmax(s, -1), vr)

    w = jax.random.normal(jax.random.key(3), (b, t, h, e))
    g_fast = jax.grad(lambda *a: (attend(*a, pos, pos) * w).sum(), argnums=(0, 1, 2))(q, kk, v)
    g_ref = jax.grad(lambda *a: (dense(*a) * w).sum(), argnums=(0, 1, 2))(q, kk, v)
    for a, r in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
