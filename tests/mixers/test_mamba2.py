"""Mamba-2 beyond the contract (tests/mixers/test_contract.py): initialisation and sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import build_mixer

D = 36  # w = 72 = 6 heads of 12, in 2 groups of 3 heads


def model_cfg(**mamba2):
    mamba2 = {"d_state": 8, "head_dim": 12, "n_groups": 2, "chunk_size": 16, **mamba2}
    model = {
        "preset": "mamba2",
        "d_model": D,
        "n_heads": 3,
        "n_layers": 2,
        "vocab_size": 29,
        "mixers": {"mamba2": mamba2},
    }
    return config_from_dict({"model": model}).model


def test_initialisation_follows_the_reference():
    mixer = build_mixer(model_cfg(dt_min=0.002, dt_max=0.05), "mamba2")
    p = mixer.init(jax.random.key(0), jnp.ones((1, 4, D)), jnp.zeros((1, 4), jnp.int32))["params"]
    assert p["A_log"].shape == p["D"].shape == p["dt_bias"].shape == (6,)
    a = jnp.exp(p["A_log"])
    assert 1.0 <= float(a.min()) and float(a.max()) <= 16.0
    np.testing.assert_array_equal(p["D"], 1.0)
    dt = jax.nn.softplus(p["dt_bias"])
    assert float(dt.min()) >= 0.002 * 0.999 and float(dt.max()) <= 0.05 * 1.001
    np.testing.assert_array_equal(p["norm"]["scale"], 1.0)
    assert p["in_proj"]["kernel"].shape == (D, 2 * 72 + 2 * 2 * 8 + 6)  # [z, x, B, C, dt]


@pytest.mark.parametrize(
    "bad,match", [({"head_dim": 10}, "divisible by model.mixers.mamba2.head_dim"), ({"n_groups": 4}, "n_groups")]
)
def test_bad_sizes_give_a_config_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        model_cfg(**bad)


@pytest.mark.parametrize(
    "fields", [{"gate_norm": "before_gate"}, {"gate_norm": "none"}, {"d_inner": 48}, {"dt_floor": 0.05}]
)
def test_option_paths_equal_the_reference(fields):
    """Falcon-H1's gate placements (norm before the gate, no norm), an inner width other than expand * d and a
    dt floor (Zamba2): full sequence, prefill + token-by-token decode and the final state equal the reference."""
    from tests.mixers.test_contract import close, o1_params

    mixer = build_mixer(model_cfg(**fields), "mamba2")
    t = 21
    x = jax.random.normal(jax.random.key(1), (2, t, D))
    pos = jnp.broadcast_to(jnp.arange(t), (2, t))
    params = o1_params(mixer.init(jax.random.key(2), x, pos), jax.random.key(3))
    assert ("norm" in params["params"]) == (mixer.gate_norm != "none")
    assert mixer.num_params() == sum(a.size for a in jax.tree.leaves(params))
    y_ref, state = mixer.reference(params, x, pos)
    close(mixer.apply(params, x, pos)[0], y_ref)
    y, cache = mixer.apply(params, x[:, :9], pos[:, :9], mixer.init_cache(2, t))
    steps = [y]
    for i in range(9, t):
        y, cache = mixer.apply(params, x[:, i : i + 1], pos[:, i : i + 1], cache)
        steps.append(y)
    close(jnp.concatenate(steps, axis=1), y_ref)
    close(cache["h"], state["h"])
    plain = build_mixer(model_cfg(), "mamba2")
    if "gate_norm" in fields:  # the placement changes the output (same parameters where they exist)
        p = {"params": {**params["params"], "norm": {"scale": jnp.ones(72)}}}
        assert np.abs(np.asarray(plain.apply(p, x, pos)[0] - mixer.apply(params, x, pos)[0])).max() > 1e-2
