"""Mamba-1 mixer: parallel path == step path == a slow reference written from the paper's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.mamba import Mamba
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, cache_bytes

D = 36  # not a power of two


def model_cfg(preset="mamba", **mamba):
    model = {"preset": preset, "d_model": D, "n_heads": 3, "n_layers": 2, "vocab_size": 29, "mamba": {"d_state": 5, **mamba}}
    return config_from_dict({"model": model}).model


def setup(t=63, bsz=2, dtype="float32", seed=0, **mamba):
    cfg = model_cfg(**mamba)
    mixer = Mamba.from_config(cfg)
    if dtype != "float32":
        mixer = mixer.clone(dtype=jnp.dtype(dtype))
    x = jax.random.normal(jax.random.key(seed), (bsz, t, D))
    pos = jnp.broadcast_to(jnp.arange(t), (bsz, t))
    params = Mamba.from_config(cfg).init(jax.random.key(seed + 1), x, pos)
    return mixer, params, x, pos


def causal_conv(p, x):
    """Depthwise causal conv written out: y_t = bias + sum_j kernel[j] x_{t - (k - 1) + j}."""
    kernel, bias = p["kernel"].reshape(-1, x.shape[-1]), p["bias"]  # [k, w]
    k, t = kernel.shape[0], x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    return bias + sum(kernel[j] * xp[:, j : j + t] for j in range(k))


def reference_mamba(params, x, mixer):
    """Alg. 2 of Gu & Dao (2023) with a Python loop over time; returns (y [b, t, d], h_T [b, w, n])."""
    p = params["params"]
    w, n, r = mixer.inner_width, mixer.d_state, mixer.dt_rank
    xz = x @ p["in_proj"]["kernel"]
    xs, z = xz[..., :w], xz[..., w:]
    xs = jax.nn.silu(causal_conv(p["conv1d"], xs))
    if mixer.selective:
        dbc = xs @ p["x_proj"]["kernel"]
        dt = dbc[..., :r] @ p["dt_proj"]["kernel"] + p["dt_proj"]["bias"]
        bb, cc = dbc[..., r : r + n], dbc[..., r + n :]
    else:
        dt = jnp.broadcast_to(p["dt_bias"], xs.shape)
        bb = jnp.broadcast_to(p["B"], xs.shape[:2] + (n,))
        cc = jnp.broadcast_to(p["C"], xs.shape[:2] + (n,))
    dt = jax.nn.softplus(dt)
    a = -jnp.exp(p["A_log"])  # [w, n]
    h = jnp.zeros((x.shape[0], w, n))
    ys = []
    for i in range(x.shape[1]):
        a_bar = jnp.exp(dt[:, i, :, None] * a)
        h = a_bar * h + dt[:, i, :, None] * bb[:, i, None, :] * xs[:, i, :, None]
        ys.append(jnp.einsum("bwn,bn->bw", h, cc[:, i]) + p["D"] * xs[:, i])
    y = jnp.stack(ys, axis=1) * jax.nn.silu(z)
    return y @ p["out_proj"]["kernel"], h


def step_by_step(mixer, params, x, pos, split=0):
    """Prefill x[:, :split] (if split > 0) then one token at a time with the cache."""
    cache = mixer.init_cache(x.shape[0], x.shape[1])
    outs = []
    if split:
        out, cache = mixer.apply(params, x[:, :split], pos[:, :split], cache)
        outs.append(out)
    step = jax.jit(lambda p, xt, pt, c: mixer.apply(p, xt, pt, c))
    for i in range(split, x.shape[1]):
        out, cache = step(params, x[:, i : i + 1], pos[:, i : i + 1], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1), cache


def close(a, b, tol=1e-5):
    """Relative-ish: |a - b| <= tol * (|b| + max|b|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def check_paths_match_reference(mixer, params, x, pos, y_ref, h_ref):
    """Parallel, token-by-token and one-shot prefill outputs and final states equal the reference's."""
    y_par, none = mixer.apply(params, x, pos)
    assert none is None
    y_step, cache = step_by_step(mixer, params, x, pos)
    close(y_par, y_ref)
    close(y_step, y_ref)
    close(cache["h"], h_ref)
    # the prefill path (all tokens at once with a cache) reaches the same state
    y_pre, cache_pre = mixer.apply(params, x, pos, mixer.init_cache(x.shape[0], x.shape[1]))
    close(y_pre, y_ref)
    close(cache_pre["h"], h_ref)
    np.testing.assert_allclose(cache_pre["conv"], cache["conv"], atol=1e-6)


@pytest.mark.parametrize("t", [63, 1])
@pytest.mark.parametrize("selective", [True, False])
def test_parallel_equals_step_equals_reference(t, selective):
    mixer, params, x, pos = setup(t=t, selective=selective)
    y_ref, h_ref = reference_mamba(params, x, mixer)
    check_paths_match_reference(mixer, params, x, pos, y_ref, h_ref)


def test_prefill_then_step():
    mixer, params, x, pos = setup(t=30, seed=3)
    y_par, _ = mixer.apply(params, x, pos)
    for split in (2, 17):  # prefill shorter and longer than the conv window
        y, cache = step_by_step(mixer, params, x, pos, split=split)
        close(y, y_par)
        assert cache["h"].shape == (2, 2 * D, 5) and cache["h"].dtype == jnp.float32
        assert cache["conv"].shape == (2, 3, 2 * D)


def test_bfloat16_close_to_float32():
    mixer, params, x, pos = setup(t=40, dtype="bfloat16", seed=4)
    y_ref, _ = reference_mamba(params, x, mixer)
    y, _ = mixer.apply(params, x, pos)
    assert y.dtype == jnp.bfloat16
    y_step, cache = step_by_step(mixer, params, x.astype(jnp.bfloat16), pos)
    assert cache["h"].dtype == jnp.float32
    scale = float(jnp.abs(y_ref).max())
    np.testing.assert_allclose(y.astype(jnp.float32), y_ref, atol=0.03 * scale)
    np.testing.assert_allclose(y_step.astype(jnp.float32), y_ref, atol=0.03 * scale)


@pytest.mark.parametrize("selective", [True, False])
def test_gradients_match_reference(selective):
    mixer, params, x, pos = setup(t=13, seed=5, selective=selective)
    w = jax.random.normal(jax.random.key(7), (2, 13, D))
    loss_par = lambda p, x: jnp.sum(mixer.apply(p, x, pos)[0] * w)
    loss_ref = lambda p, x: jnp.sum(reference_mamba(p, x, mixer)[0] * w)
    g_par = jax.grad(loss_par, argnums=(0, 1))(params, x)
    g_ref = jax.jit(jax.grad(loss_ref, argnums=(0, 1)))(params, x)
    flat_par = jax.tree_util.tree_leaves_with_path(g_par)
    for (path, a), b in zip(flat_par, jax.tree.leaves(g_ref)):
        close(a, b, tol=1e-4)
        assert float(jnp.abs(a).max()) > 0, jax.tree_util.keystr(path)


def test_non_selective_dt_b_c_do_not_depend_on_input():
    def intermediates(selective):
        mixer, params, x, pos = setup(t=9, selective=selective)
        run = lambda x: mixer.apply(params, x, pos, mutable=["intermediates"])[1]["intermediates"]
        return params, run(x), run(2.0 * x + 1.0)

    params, one, two = intermediates(selective=False)
    assert "x_proj" not in params["params"] and "dt_proj" not in params["params"]
    assert params["params"]["B"].shape == params["params"]["C"].shape == (5,)
    assert params["params"]["dt_bias"].shape == (2 * D,)
    for name in ("dt", "B", "C"):
        np.testing.assert_array_equal(one[name][0], two[name][0])
    _, one, two = intermediates(selective=True)
    for name in ("dt", "B", "C"):  # the selective model's do
        assert not np.allclose(one[name][0], two[name][0])


def test_initialisation_follows_the_paper():
    cfg = model_cfg(dt_min=0.002, dt_max=0.05)
    mixer = Mamba.from_config(cfg)
    x = jnp.ones((1, 4, D))
    p = mixer.init(jax.random.key(0), x, jnp.zeros((1, 4), jnp.int32))["params"]
    np.testing.assert_allclose(-jnp.exp(p["A_log"][3]), -jnp.arange(1, 6), rtol=1e-6)  # S4D-real
    np.testing.assert_array_equal(p["D"], 1.0)
    dt = jax.nn.softplus(p["dt_proj"]["bias"])
    assert float(dt.min()) >= 0.002 * 0.999 and float(dt.max()) <= 0.05 * 1.001
    assert float(jnp.std(jnp.log(dt))) > 0.3  # spread over the log range, not constant
    assert p["dt_proj"]["kernel"].shape == (mixer.dt_rank, 2 * D) and mixer.dt_rank == 3  # ceil(36 / 16)


@pytest.mark.parametrize("selective", [True, False])
def test_param_count_state_size_and_flops(selective):
    cfg = model_cfg(selective=selective)
    toks = jnp.zeros((1, 5), jnp.int32)
    params = CausalLM(cfg).init(jax.random.key(0), toks)
    assert accounting.param_count(cfg) == sum(p.size for p in jax.tree.leaves(params))
    mixer = Mamba.from_config(cfg)
    assert mixer.state_size(2, 16) == mixer.state_size(2, 4096) == cache_bytes(mixer.init_cache(2, 16))
    assert accounting.decode_state_bytes(cfg, 1, 64) == accounting.decode_state_bytes(cfg, 1, 8192)
    w, n = 2 * D, 5
    assert Mamba.flops_per_token(cfg, 64) > 2 * (D * 2 * w + w * D) + 7 * w * n


def test_bad_sizes_give_a_config_error():
    with pytest.raises(ConfigError, match="dt_min"):
        Mamba.from_config(model_cfg(dt_min=0.5, dt_max=0.1))
