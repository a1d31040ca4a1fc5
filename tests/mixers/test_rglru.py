"""Griffin's recurrent block (RG-LRU): parallel path == step path == a slow reference from the paper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import block_diag

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.rglru import RGLRU, block_diagonal
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, cache_bytes
from tests.mixers.test_mamba import causal_conv, check_paths_match_reference, close, step_by_step

D, W, H = 24, 36, 3  # widths not powers of two; gate blocks of 12


def model_cfg(preset="hawk", d_model=D, model_heads=H, **rglru):
    rglru = {"width": W, "n_heads": H, **rglru}
    model = {"preset": preset, "d_model": d_model, "n_heads": model_heads, "n_layers": 2, "vocab_size": 29, "rglru": rglru}
    return config_from_dict({"model": model}).model


def setup(t=63, bsz=2, dtype="float32", seed=0, **rglru):
    cfg = model_cfg(**rglru)
    mixer = RGLRU.from_config(cfg)
    if dtype != "float32":
        mixer = mixer.clone(dtype=jnp.dtype(dtype))
    x = jax.random.normal(jax.random.key(seed), (bsz, t, D))
    pos = jnp.broadcast_to(jnp.arange(t), (bsz, t))
    params = RGLRU.from_config(cfg).init(jax.random.key(seed + 1), x, pos)
    # O(1) activations (the init_std projections give ~0.1) so that GeLU and the gates are
    # in their nonlinear range, and gate biases spread so that r_t, i_t are not all near 0.5
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed + 2), 4)
    p = params["params"]
    p["in_proj"]["kernel"] = jax.random.normal(k1, (D, 2 * W)) * 1.5 / D**0.5
    p["out_proj"]["kernel"] = jax.random.normal(k2, (W, D)) / W**0.5
    p["gate_a"]["bias"] = jax.random.normal(k3, (W,))
    p["gate_x"]["bias"] = jax.random.normal(k4, (W,))
    return mixer, params, x, pos


def reference_rglru(params, x, mixer):
    """Griffin's recurrent block (Fig. 2, eqs. 1-4) with a Python loop over time; returns (y, h_T [b, w])."""
    p = params["params"]
    w, c = mixer.rnn_width, mixer.c
    gu = x @ p["in_proj"]["kernel"]
    g, u = gu[..., :w], gu[..., w:]
    u = causal_conv(p["conv1d"], u)
    dense = lambda q: block_diag(*q["kernel"])  # [w, w], zeros off the diagonal blocks
    a = jax.nn.sigmoid(p["a_param"])  # [w]
    h = jnp.zeros((x.shape[0], w))
    hs = []
    for i in range(x.shape[1]):
        r = jax.nn.sigmoid(u[:, i] @ dense(p["gate_a"]) + p["gate_a"]["bias"])
        gate_in = jax.nn.sigmoid(u[:, i] @ dense(p["gate_x"]) + p["gate_x"]["bias"])
        a_t = a ** (c * r)
        h = a_t * h + jnp.sqrt(1.0 - a_t**2) * (gate_in * u[:, i])
        hs.append(h)
    gelu = 0.5 * g * (1.0 + jnp.tanh(jnp.sqrt(2.0 / jnp.pi) * (g + 0.044715 * g**3)))
    y = jnp.stack(hs, axis=1) * gelu
    return y @ p["out_proj"]["kernel"], h


@pytest.mark.parametrize("t", [63, 1])
def test_parallel_equals_step_equals_reference(t):
    mixer, params, x, pos = setup(t=t)
    y_ref, h_ref = reference_rglru(params, x, mixer)
    check_paths_match_reference(mixer, params, x, pos, y_ref, h_ref)


def test_prefill_then_step():
    mixer, params, x, pos = setup(t=30, seed=3)
    y_par, _ = mixer.apply(params, x, pos)
    for split in (2, 17):  # prefill shorter and longer than the conv window
        y, cache = step_by_step(mixer, params, x, pos, split=split)
        close(y, y_par)
        assert cache["h"].shape == (2, W) and cache["h"].dtype == jnp.float32
        assert cache["conv"].shape == (2, 3, W)


def test_gradients_match_reference():
    mixer, params, x, pos = setup(t=13, seed=5)
    w = jax.random.normal(jax.random.key(7), (2, 13, D))
    loss_par = lambda p, x: jnp.sum(mixer.apply(p, x, pos)[0] * w)
    loss_ref = lambda p, x: jnp.sum(reference_rglru(p, x, mixer)[0] * w)
    g_par = jax.grad(loss_par, argnums=(0, 1))(params, x)
    g_ref = jax.jit(jax.grad(loss_ref, argnums=(0, 1)))(params, x)
    flat_par = jax.tree_util.tree_leaves_with_path(g_par)
    for (path, a), b in zip(flat_par, jax.tree.leaves(g_ref)):
        assert a.shape == b.shape, jax.tree_util.keystr(path)
        close(a, b, tol=1e-5)
        assert float(jnp.abs(a).max()) > 0, jax.tree_util.keystr(path)


def test_gates_are_block_diagonal():
    """Perturbing one head's channels of the conv output moves only that head's gates."""
    _, params, _, _ = setup(t=5, seed=6)
    kernel = params["params"]["gate_a"]["kernel"]
    assert kernel.shape == (H, W // H, W // H)
    u = jax.random.normal(jax.random.key(0), (2, 5, W))
    ps = [(params["params"][n]["kernel"], params["params"][n]["bias"]) for n in ("gate_a", "gate_x")]
    base = block_diagonal(u, ps)
    moved = block_diagonal(u.at[..., 12:24].add(1.0), ps)  # head 1 only
    changed = np.abs(np.asarray(moved - base)).max(axis=(0, 1)) > 0  # [2 w]
    expect = np.zeros(W, bool)
    expect[12:24] = True
    np.testing.assert_array_equal(changed, np.concatenate([expect, expect]))


def test_bfloat16_close_to_float32():
    mixer, params, x, pos = setup(t=40, dtype="bfloat16", seed=4)
    y_ref, _ = reference_rglru(params, x, mixer)
    y, _ = mixer.apply(params, x, pos)
    assert y.dtype == jnp.bfloat16
    y_step, cache = step_by_step(mixer, params, x.astype(jnp.bfloat16), pos)
    assert cache["h"].dtype == jnp.float32
    scale = float(jnp.abs(y_ref).max())
    np.testing.assert_allclose(y.astype(jnp.float32), y_ref, atol=0.03 * scale)
    np.testing.assert_allclose(y_step.astype(jnp.float32), y_ref, atol=0.03 * scale)


@pytest.mark.parametrize("a_min, a_max", [(0.9, 0.999), (0.5, 0.6)])
def test_initialisation_follows_the_paper(a_min, a_max):
    """a^c = sigmoid(Lambda)^c is uniform in [a_min^2, a_max^2] (Sec. 2.4)."""
    cfg = model_cfg(width=600, n_heads=4, a_min=a_min, a_max=a_max)
    mixer = RGLRU.from_config(cfg)
    p = mixer.init(jax.random.key(0), jnp.ones((1, 4, D)), jnp.zeros((1, 4), jnp.int32))["params"]
    ac = (1.0 / (1.0 + np.exp(-np.asarray(p["a_param"], np.float64)))) ** mixer.c
    lo, hi = a_min**2, a_max**2
    assert ac.min() >= lo * (1 - 1e-5) and ac.max() <= hi * (1 + 1e-5)
    span = hi - lo
    assert ac.min() < lo + 0.02 * span and ac.max() > hi - 0.02 * span  # spans the range
    assert abs(ac.mean() - (lo + hi) / 2) < 0.05 * span  # uniform, not log-uniform in a
    assert float(jnp.abs(p["gate_a"]["bias"]).max()) == 0.0
    np.testing.assert_allclose(np.std(p["gate_a"]["kernel"]), (600 // 4) ** -0.5, rtol=0.05)  # LeCun per block


def test_default_width_is_four_thirds_d_model():
    assert RGLRU.from_config(config_from_dict({"model": {"d_model": 48, "n_heads": 4}}).model).rnn_width == 64
    # round(4/3 * 128) = 171 is not divisible by 4 heads: the nearest multiple of 4
    cfg = config_from_dict({"model": {"preset": "hawk", "d_model": 128, "n_heads": 4}}).model
    mixer = RGLRU.from_config(cfg)
    assert mixer.rnn_width == 172 and mixer.num_heads == 4


def test_param_count_state_size_and_flops():
    cfg = model_cfg()
    toks = jnp.zeros((1, 5), jnp.int32)
    params = CausalLM(cfg).init(jax.random.key(0), toks)
    assert accounting.param_count(cfg) == sum(p.size for p in jax.tree.leaves(params))
    mixer = RGLRU.from_config(cfg)
    p = mixer.init(jax.random.key(0), jnp.ones((1, 4, D)), jnp.zeros((1, 4), jnp.int32))
    assert RGLRU.num_params(cfg) == sum(a.size for a in jax.tree.leaves(p))
    assert mixer.state_size(2, 16) == mixer.state_size(2, 4096) == cache_bytes(mixer.init_cache(2, 16))
    assert mixer.state_size(2, 16) == 2 * 3 * W * 4 + 2 * W * 4
    assert accounting.decode_state_bytes(cfg, 1, 64) == accounting.decode_state_bytes(cfg, 1, 8192)
    matmul = D * 2 * W + 2 * W * (W // H) + W * D
    assert 2 * matmul < RGLRU.flops_per_token(cfg, 64) < 2 * matmul + 40 * W


@pytest.mark.parametrize(
    "rglru, match",
    [
        ({"width": 35}, "model.rglru.width .* model.rglru.n_heads"),
        ({"n_heads": 5}, "divisible by model.rglru.n_heads"),
        ({"c": 0.0}, "model.rglru.c must be positive"),
        ({"a_min": 0.99, "a_max": 0.9}, "a_min < a_max"),
        ({"a_max": 1.0}, "a_max < 1"),
        ({"conv_width": 0}, "conv_width"),
    ],
)
def test_bad_sizes_give_a_config_error(rglru, match):
    with pytest.raises(ConfigError, match=match):
        RGLRU.from_config(model_cfg(**rglru))
