"""Regression: the jitted gradients of the mLSTM mixer are finite and equal to the unjitted ones.

The chunked op's stabilisers were ``jnp.max`` reductions, whose derivative divides by the number
of entries equal to the max. Under ``jit`` XLA recomputed the operand (the log gate matrix) in the
backward fusion with a different rounding than the forward max, no entry matched, the count was
0 and 0 / 0 made every parameter's gradient NaN (the ``mlstm`` preset at training step ~13; the
unjitted gradient was finite). It showed with the preset's chunk of 64 at t = 64, d = 24 and the
draws below (seeds 1 and 2 of this setup; 0 happened to pass). The unjitted gradient is the
yardstick: tests/ops/test_mlstm.py checks the chunked op's gradients against its recurrence, and
the reference's 64-step loop is slow to compile.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.mixers.mlstm import MLSTM


def _setup(seed, t=64, d=24, heads=3, bsz=2):
    """A mixer with random gate kernels (the init zeros them) and a random input and output weight."""
    mixer = MLSTM(width=d, num_heads=heads, qk_dim=d // 2, v_dim=d, chunk_size=64)
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
    x = normal(bsz, t, d)
    params = dict(mixer.init(jax.random.key(seed), x, jnp.arange(t)[None])["params"])
    params["igate_preact"] = {"kernel": normal(d, heads)}
    params["fgate_preact"] = {"kernel": normal(d, heads)}
    params["igate_bias"] = normal(heads)
    params["ogate_preact"] = {"kernel": 0.2 * normal(d, d)}
    return mixer, params, x, normal(bsz, t, d)


@pytest.mark.parametrize("seed", [1, 2])
def test_jitted_gradients_are_finite_and_match_unjitted(seed):
    mixer, params, x, w = _setup(seed)
    pos = jnp.arange(x.shape[1])[None]
    grad = jax.grad(lambda p, x: jnp.sum(mixer.apply({"params": p}, x, pos)[0] * w), argnums=(0, 1))
    got, want = jax.jit(grad)(params, x), grad(params, x)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-3 * np.abs(r).max())
