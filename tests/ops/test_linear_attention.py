"""Chunked gated linear attention against its naive recurrence and a float64 loop: outputs, state, gradients.

Three decay kinds: per key channel (GLA), one scalar per head (RetNet) and none (Based).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.ops.linear_attention import (
    linear_attention,
    linear_attention_flops_per_token,
    linear_attention_step,
    reference_linear_attention,
)
from tests.mixers.flop_count import count_flops

KINDS = ("channel", "head", "none")


def _log_alpha(kind, key, bsz, t, h, dk, strong=False):
    """Log decays of one kind; ``strong`` adds decays of up to e^6 per step (exp(-cum) would overflow)."""
    if kind == "none":
        return None
    if kind == "head":  # RetNet-like gammas, plus one head that forgets almost everything each step
        gammas = 1 - 2.0 ** -(1 + np.arange(h))
        if strong:
            gammas[-1] = 1e-3
        return jnp.log(jnp.asarray(gammas, jnp.float32))[:, None]
    la = jax.nn.log_sigmoid(3 * jax.random.normal(key, (bsz, t, h, dk))) / 4
    if strong:  # channel 0 mixes tiny and huge decays: log alpha = -exp(N(0, 4))
        la = la.at[..., 0].set(-jnp.exp(2 * jax.random.normal(jax.random.fold_in(key, 1), (bsz, t, h))))
    return la


def _inputs(kind, bsz=2, t=37, h=3, dk=12, dv=5, seed=0, strong=False):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (bsz, t, h, dk))
    k = jax.random.normal(keys[1], (bsz, t, h, dk))
    v = jax.random.normal(keys[2], (bsz, t, h, dv))
    h0 = jax.random.normal(keys[4], (bsz, h, dk, dv))
    return q, k, v, _log_alpha(kind, keys[3], bsz, t, h, dk, strong), h0


def _numpy_loop(q, k, v, la, h0=None):
    """S_t = diag(exp(la_t)) S_{t-1} + k_t^T v_t, o_t = q_t S_t, in float64, one step at a time."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    bsz, t, h, dk = q.shape
    state = np.zeros((bsz, h, dk, v.shape[-1])) if h0 is None else np.asarray(h0, np.float64).copy()
    decay = None if la is None else np.broadcast_to(np.exp(np.asarray(la, np.float64)), (bsz, t, h, np.shape(la)[-1]))
    o = np.zeros((*q.shape[:-1], v.shape[-1]))
    for i in range(t):
        if decay is not None:
            state = decay[:, i, :, :, None] * state
        state = state + k[:, i, :, :, None] * v[:, i, :, None, :]
        o[:, i] = np.einsum("bhk,bhkv->bhv", q[:, i], state)
    return o, state


def _close(got, want, tol=1e-5):
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        np.testing.assert_allclose(np.asarray(g), w, rtol=tol, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("kind", KINDS)
def test_reference_equals_float64_loop(kind):
    q, k, v, la, h0 = _inputs(kind, t=9)
    _close(jax.jit(reference_linear_attention)(q, k, v, la, h0), _numpy_loop(q, k, v, la, h0))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t,chunk", [(37, 1), (37, 5), (37, 16), (37, 64), (1, 64)])
def test_chunked_equals_recurrence(kind, t, chunk):
    q, k, v, la, h0 = _inputs(kind, t=t)
    want = jax.jit(reference_linear_attention)(q, k, v, la, h0)
    _close(jax.jit(linear_attention, static_argnums=4)(q, k, v, la, chunk, h0), want)


@pytest.mark.parametrize("sub_chunk", [1, 3, 8])
def test_sub_chunk_sizes_agree(sub_chunk):
    """Per channel, any sub-chunk (3 does not divide the chunk of 16: it is rounded up to 18)."""
    q, k, v, la, h0 = _inputs("channel", t=40, seed=1)
    want = jax.jit(reference_linear_attention)(q, k, v, la, h0)
    _close(jax.jit(lambda *a: linear_attention(*a, 16, h0, sub_chunk=sub_chunk))(q, k, v, la), want)


def test_without_initial_state():
    q, k, v, la, _ = _inputs("channel", t=20, h=1, dk=3, dv=7, seed=2)
    _close(
        jax.jit(lambda *a: linear_attention(*a, chunk_size=8))(q, k, v, la),
        jax.jit(reference_linear_attention)(q, k, v, la),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_split_sequence_continues_from_state(kind):
    """[0, 17) then [17, 40) from its final state == [0, 40) (prefill), and one step from there."""
    q, k, v, la, h0 = _inputs(kind, t=40, seed=3)
    cut = lambda a, lo, hi: a if a is None or a.ndim < 4 else a[:, lo:hi]
    run = jax.jit(
        lambda lo, hi, s: linear_attention(*(cut(a, lo, hi) for a in (q, k, v, la)), 8, s), static_argnums=(0, 1)
    )
    y_full, last_full = run(0, 40, h0)
    y1, mid = run(0, 17, h0)
    y2, last = run(17, 40, mid)
    _close((jnp.concatenate([y1, y2], 1), last), (y_full, last_full))
    la_t = la[:, 17] if kind == "channel" else la
    y_step, _ = linear_attention_step(q[:, 17], k[:, 17], v[:, 17], la_t, mid)
    _close((y_step,), (y2[:, 0],))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t,chunk", [(21, 8), (30, 64)])  # one chunk of two sub-chunks (a rank-7 XLA:CPU crash once)
def test_gradients_match_reference(kind, t, chunk):
    q, k, v, la, h0 = _inputs(kind, t=t, h=2, dk=6, dv=3, seed=4)
    w = jax.random.normal(jax.random.key(9), (2, t, 2, 3))
    args = (q, k, v, h0) if la is None else (q, k, v, h0, la)

    def loss(fn):
        def f(q, k, v, h0, la=None):
            y, last = fn(q, k, v, la, h0)
            return jnp.sum(y * w) + jnp.sum(jnp.sin(last))

        return f

    got = jax.jit(jax.grad(loss(lambda *a: linear_attention(*a[:4], chunk, a[4])), argnums=range(len(args))))(*args)
    want = jax.jit(jax.grad(loss(reference_linear_attention), argnums=range(len(args))))(*args)
    for name, g, r in zip(("q", "k", "v", "h0", "log_alpha"), got, want):
        assert np.all(np.isfinite(g)), name
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.abs(r).max(), err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequence_is_stable(kind):
    """t = 8192 in float32 against a float64 loop, with decays strong enough to overflow exp(-cum).

    Tolerance: 2e-6 of max|o|. The chunked form sums every decay span directly (no differences of
    prefix sums) and carries the state once per chunk, so its error is a few float32 roundings
    per output (measured 1.7e-7, 1.4e-7 and 2.3e-7 of max|o| for channel / head / none, the
    same as the naive float32 scan's); without decay the state is a sum of up to 8192 terms,
    whose rounding grows like sqrt(t / c) eps ~ 1e-6 at worst.
    """
    q, k, v, la, _ = _inputs(kind, bsz=1, t=8192, h=2, dk=4, dv=3, seed=5, strong=True)
    want = _numpy_loop(q, k, v, la)
    got = jax.jit(linear_attention, static_argnums=4)(q, k, v, la, 64)
    assert all(np.all(np.isfinite(g)) for g in got)
    _close(got, want, tol=2e-6)
    grads = jax.jit(jax.grad(lambda q, k: jnp.sum(linear_attention(q, k, v, la, 64)[0])))(q, k)
    assert np.all(np.isfinite(grads))


def test_bfloat16_inputs_close_to_float32():
    q, k, v, la, h0 = _inputs("channel", t=33, seed=6)
    want = jax.jit(reference_linear_attention)(q, k, v, la, h0)
    low = lambda a: a.astype(jnp.bfloat16)
    y, last = jax.jit(linear_attention, static_argnums=4)(low(q), low(k), low(v), la, 8, h0)
    assert y.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    np.testing.assert_allclose(y.astype(jnp.float32), want[0], atol=0.05 * float(jnp.abs(want[0]).max()))
    np.testing.assert_allclose(last, want[1], atol=0.05 * float(jnp.abs(want[1]).max()))


def test_log_alpha_shape_is_checked():
    q, k, v, _, _ = _inputs("none", t=4)
    with pytest.raises(ValueError, match="last axis"):
        linear_attention(q, k, v, jnp.zeros((3,)))  # [h] is ambiguous: per head is [h, 1]


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("t,chunk,dk,dv", [(32, 8, 8, 16), (21, 7, 12, 5), (100, 64, 21, 9)])
def test_flops_formula_matches_jaxpr(per_channel, t, chunk, dk, dv):
    q, v = jnp.zeros((1, t, 2, dk)), jnp.zeros((1, t, 2, dv))
    la = jnp.zeros((1, t, 2, dk)) if per_channel else jnp.zeros((2, 1))
    counted = count_flops(lambda q, k, v: linear_attention(q, k, v, la, chunk)[0], q, q, v) / (2 * t)
    assert counted / linear_attention_flops_per_token(dk, dv, t, chunk, per_channel) == pytest.approx(1.0, abs=0.02)
