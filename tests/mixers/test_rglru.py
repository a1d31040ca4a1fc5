"""Griffin's RG-LRU block beyond the contract (tests/mixers/test_contract.py): block-diagonal gates, init, sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import build_mixer
from slm_jax.mixers.rglru import block_diagonal

D, W, H = 24, 36, 3  # widths not powers of two; gate blocks of 12


def model_cfg(d_model=D, **rglru):
    model = {
        "preset": "hawk",
        "d_model": d_model,
        "n_heads": H,
        "n_layers": 2,
        "vocab_size": 29,
        "mixers": {"rglru": {"width": W, "n_heads": H, **rglru}},
    }
    return config_from_dict({"model": model}).model


def init(cfg):
    mixer = build_mixer(cfg, "rglru")
    return mixer, mixer.init(jax.random.key(0), jnp.ones((1, 4, cfg.d_model)), jnp.zeros((1, 4), jnp.int32))["params"]


def test_gates_are_block_diagonal():
    """Perturbing one head's channels of the conv output moves only that head's gates."""
    _, p = init(model_cfg())
    assert p["gate_a"]["kernel"].shape == (H, W // H, W // H)
    ps = [
        (jax.random.normal(jax.random.key(i), p[n]["kernel"].shape), p[n]["bias"])
        for i, n in enumerate(("gate_a", "gate_x"))
    ]
    u = jax.random.normal(jax.random.key(3), (2, 5, W))
    base = block_diagonal(u, ps)
    moved = block_diagonal(u.at[..., 12:24].add(1.0), ps)  # head 1 only
    changed = np.abs(np.asarray(moved - base)).max(axis=(0, 1)) > 0  # [2 w]
    expect = np.zeros(W, bool)
    expect[12:24] = True
    np.testing.assert_array_equal(changed, np.concatenate([expect, expect]))


@pytest.mark.parametrize("a_min, a_max", [(0.9, 0.999), (0.5, 0.6)])
def test_initialisation_follows_the_paper(a_min, a_max):
    """a^c = sigmoid(Lambda)^c is uniform in [a_min^2, a_max^2] (Sec. 2.4)."""
    mixer, p = init(model_cfg(width=600, n_heads=4, a_min=a_min, a_max=a_max))
    ac = (1.0 / (1.0 + np.exp(-np.asarray(p["a_param"], np.float64)))) ** mixer.c
    lo, hi = a_min**2, a_max**2
    assert ac.min() >= lo * (1 - 1e-5) and ac.max() <= hi * (1 + 1e-5)
    span = hi - lo
    assert ac.min() < lo + 0.02 * span and ac.max() > hi - 0.02 * span  # spans the range
    assert abs(ac.mean() - (lo + hi) / 2) < 0.05 * span  # uniform, not log-uniform in a
    assert float(jnp.abs(p["gate_a"]["bias"]).max()) == 0.0
    np.testing.assert_allclose(np.std(p["gate_a"]["kernel"]), (600 // 4) ** -0.5, rtol=0.05)  # LeCun per block


def test_default_width_is_four_thirds_d_model():
    assert build_mixer(config_from_dict({"model": {"d_model": 48, "n_heads": 4}}).model, "rglru").rnn_width == 64
    # round(4/3 * 128) = 171 is not divisible by 4 heads: the nearest multiple of 4
    mixer = build_mixer(config_from_dict({"model": {"preset": "hawk", "d_model": 128, "n_heads": 4}}).model, "rglru")
    assert mixer.rnn_width == 172 and mixer.num_heads == 4


@pytest.mark.parametrize(
    "rglru, match",
    [
        ({"width": 35}, "model.mixers.rglru.width .* model.mixers.rglru.n_heads"),
        ({"n_heads": 5}, "divisible by model.mixers.rglru.n_heads"),
        ({"c": 0.0}, "model.mixers.rglru.c must be positive"),
        ({"a_min": 0.99, "a_max": 0.9}, "a_min < a_max"),
        ({"a_max": 1.0}, "a_max < 1"),
        ({"conv_width": 0}, "conv_width"),
    ],
)
def test_bad_sizes_give_a_config_error(rglru, match):
    with pytest.raises(ConfigError, match=match):
        model_cfg(**rglru)
