"""Mamba-2 mixer: chunked SSD path == step path == a slow per-step reference of the paper's block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.mamba2 import Mamba2
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, cache_bytes
from tests.mixers.test_mamba import causal_conv, close, step_by_step

D = 36  # not a power of two; w = 72 = 6 heads of 12, in 2 groups of 3 heads
SMALL = {"d_state": 8, "head_dim": 12, "n_groups": 2, "chunk_size": 16}


def model_cfg(**mamba2):
    model = {"preset": "mamba2", "d_model": D, "n_heads": 3, "n_layers": 2, "vocab_size": 29, "mamba2": {**SMALL, **mamba2}}
    return config_from_dict({"model": model}).model


def setup(t=63, bsz=2, dtype="float32", seed=0, **mamba2):
    cfg = model_cfg(**mamba2)
    mixer = Mamba2.from_config(cfg)
    x = jax.random.normal(jax.random.key(seed), (bsz, t, D))
    pos = jnp.broadcast_to(jnp.arange(t), (bsz, t))
    params = mixer.init(jax.random.key(seed + 1), x, pos)
    if dtype != "float32":
        mixer = mixer.clone(dtype=jnp.dtype(dtype))
    return mixer, params, x, pos


def reference_mamba2(params, x, mixer):
    """The Mamba-2 block with the SSM as a Python loop over time; returns (y, h_T [b, h, e, n])."""
    p = params["params"]
    w, n, k, e = mixer.inner_width, mixer.d_state, mixer.n_groups, mixer.head_dim
    h = w // e
    bsz, t, _ = x.shape
    proj = x @ p["in_proj"]["kernel"]
    z, xbc, dt = proj[..., :w], proj[..., w : 2 * w + 2 * k * n], proj[..., 2 * w + 2 * k * n :]
    xbc = jax.nn.silu(causal_conv(p["conv1d"], xbc))
    xs = xbc[..., :w].reshape(bsz, t, h, e)
    bb = xbc[..., w : w + k * n].reshape(bsz, t, k, n)
    cc = xbc[..., w + k * n :].reshape(bsz, t, k, n)
    dt = jax.nn.softplus(dt + p["dt_bias"])  # [b, t, h]
    a = -jnp.exp(p["A_log"])  # [h]
    bh = jnp.repeat(bb, h // k, axis=2)  # [b, t, h, n]: head j reads group j // (h / k)
    ch = jnp.repeat(cc, h // k, axis=2)
    state = jnp.zeros((bsz, h, e, n))
    ys = []
    for i in range(t):
        decay = jnp.exp(dt[:, i] * a)[:, :, None, None]  # [b, h, 1, 1]
        state = decay * state + dt[:, i, :, None, None] * xs[:, i, :, :, None] * bh[:, i, :, None, :]
        y_i = jnp.einsum("bhen,bhn->bhe", state, ch[:, i]) + p["D"][:, None] * xs[:, i]
        ys.append(y_i.reshape(bsz, w))
    y = jnp.stack(ys, axis=1) * jax.nn.silu(z)  # gate, then RMS-normalise each group of w / k
    yg = y.reshape(bsz, t, k, w // k)
    yg = yg / jnp.sqrt(jnp.mean(yg**2, axis=-1, keepdims=True) + mixer.norm_eps)
    y = yg.reshape(bsz, t, w) * p["norm"]["scale"]
    return y @ p["out_proj"]["kernel"], state


@pytest.mark.parametrize("t,chunk", [(63, 16), (63, 64), (1, 16), (20, 7)])
def test_parallel_equals_step_equals_reference(t, chunk):
    mixer, params, x, pos = setup(t=t, chunk_size=chunk)
    y_ref, h_ref = reference_mamba2(params, x, mixer)
    y_par, none = mixer.apply(params, x, pos)
    assert none is None
    y_step, cache = step_by_step(mixer, params, x, pos)
    close(y_par, y_ref)
    close(y_step, y_ref)
    close(cache["h"], h_ref)
    y_pre, cache_pre = mixer.apply(params, x, pos, mixer.init_cache(2, t))  # prefill path
    close(y_pre, y_ref)
    close(cache_pre["h"], h_ref)
    np.testing.assert_allclose(cache_pre["conv"], cache["conv"], atol=1e-6)


def test_prefill_then_step():
    mixer, params, x, pos = setup(t=40, seed=3)
    y_par, _ = mixer.apply(params, x, pos)
    for split in (2, 21):  # shorter than the conv window; longer than a chunk and not a multiple
        y, cache = step_by_step(mixer, params, x, pos, split=split)
        close(y, y_par)
        assert cache["h"].shape == (2, 6, 12, 8) and cache["h"].dtype == jnp.float32
        assert cache["conv"].shape == (2, 3, 72 + 2 * 2 * 8)


def test_bfloat16_close_to_float32():
    mixer, params, x, pos = setup(t=40, dtype="bfloat16", seed=4)
    y_ref, _ = reference_mamba2(params, x, mixer)
    y, _ = mixer.apply(params, x, pos)
    assert y.dtype == jnp.bfloat16
    y_step, cache = step_by_step(mixer, params, x.astype(jnp.bfloat16), pos)
    assert cache["h"].dtype == jnp.float32
    scale = float(jnp.abs(y_ref).max())
    np.testing.assert_allclose(y.astype(jnp.float32), y_ref, atol=0.03 * scale)
    np.testing.assert_allclose(y_step.astype(jnp.float32), y_ref, atol=0.03 * scale)


def test_gradients_match_reference():
    mixer, params, x, pos = setup(t=11, seed=5, chunk_size=4)
    w = jax.random.normal(jax.random.key(7), (2, 11, D))
    loss_par = lambda p, x: jnp.sum(mixer.apply(p, x, pos)[0] * w)
    loss_ref = lambda p, x: jnp.sum(reference_mamba2(p, x, mixer)[0] * w)
    g_par = jax.grad(loss_par, argnums=(0, 1))(params, x)
    g_ref = jax.jit(jax.grad(loss_ref, argnums=(0, 1)))(params, x)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_par), jax.tree.leaves(g_ref)):
        close(a, b, tol=1e-4)
        assert float(jnp.abs(a).max()) > 0, jax.tree_util.keystr(path)


def test_initialisation_follows_the_reference():
    mixer, params, _, _ = setup(t=4, dt_min=0.002, dt_max=0.05)
    p = params["params"]
    assert p["A_log"].shape == p["D"].shape == p["dt_bias"].shape == (6,)
    a = jnp.exp(p["A_log"])
    assert 1.0 <= float(a.min()) and float(a.max()) <= 16.0
    np.testing.assert_array_equal(p["D"], 1.0)
    dt = jax.nn.softplus(p["dt_bias"])
    assert float(dt.min()) >= 0.002 * 0.999 and float(dt.max()) <= 0.05 * 1.001
    np.testing.assert_array_equal(p["norm"]["scale"], 1.0)
    assert p["in_proj"]["kernel"].shape == (D, 2 * 72 + 2 * 2 * 8 + 6)  # [z, x, B, C, dt]


def test_param_count_state_size_and_flops():
    cfg = model_cfg()
    params = CausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
    assert accounting.param_count(cfg) == sum(p.size for p in jax.tree.leaves(params))
    mixer = Mamba2.from_config(cfg)
    assert mixer.state_size(2, 16) == mixer.state_size(2, 4096) == cache_bytes(mixer.init_cache(2, 16))
    assert accounting.decode_state_bytes(cfg, 1, 64) == accounting.decode_state_bytes(cfg, 1, 8192)
    assert Mamba2.flops_per_token(cfg, 256) > 2 * Mamba2.num_params(cfg) - 2 * 600  # (non-matmul params ~ conv + 3h + w)


@pytest.mark.parametrize(
    "bad,match", [({"head_dim": 10}, "divisible by model.mamba2.head_dim"), ({"n_groups": 4}, "n_groups")]
)
def test_bad_sizes_give_a_config_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        Mamba2.from_config(model_cfg(**bad))
