"""Mamba-1 beyond the contract (tests/mixers/test_contract.py): the non-selective ablation, init, sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import build_mixer
from tests.mixers.test_contract import check_against_reference, close, o1_params

D = 36  # not a power of two


def model_cfg(**mamba):
    model = {
        "preset": "mamba",
        "d_model": D,
        "n_heads": 3,
        "n_layers": 2,
        "vocab_size": 29,
        "mixers": {"mamba": {"d_state": 5, **mamba}},
    }
    return config_from_dict({"model": model}).model


def setup(t, selective, seed=0, **mamba):
    mixer = build_mixer(model_cfg(selective=selective, **mamba), "mamba")
    x = jax.random.normal(jax.random.key(seed), (2, t, D))
    pos = jnp.broadcast_to(jnp.arange(t), (2, t))
    return mixer, mixer.init(jax.random.key(seed + 1), x, pos), x, pos


@pytest.mark.parametrize("t", [21, 1])
def test_non_selective_paths_equal_the_reference(t):
    check_against_reference(*setup(t, selective=False))


def test_non_selective_dt_b_c_do_not_depend_on_input():
    def intermediates(selective):
        mixer, params, x, pos = setup(9, selective)
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
    mixer, params, _, _ = setup(4, True, dt_min=0.002, dt_max=0.05)
    p = params["params"]
    np.testing.assert_allclose(-jnp.exp(p["A_log"][3]), -jnp.arange(1, 6), rtol=1e-6)  # S4D-real
    np.testing.assert_array_equal(p["D"], 1.0)
    dt = jax.nn.softplus(p["dt_proj"]["bias"])
    assert float(dt.min()) >= 0.002 * 0.999 and float(dt.max()) <= 0.05 * 1.001
    assert float(jnp.std(jnp.log(dt))) > 0.3  # spread over the log range, not constant
    assert p["dt_proj"]["kernel"].shape == (mixer.dt_rank, 2 * D) and mixer.dt_rank == 3  # ceil(36 / 16)


def test_bad_sizes_give_a_config_error():
    with pytest.raises(ConfigError, match="dt_min"):
        model_cfg(dt_min=0.5, dt_max=0.1)


@pytest.mark.parametrize("t", [21, 1])
def test_dt_bc_norms_equal_the_reference(t):
    """Jamba's RMSNorms on dt, B and C (``dt_bc_norms``): every path equals the reference, which applies them
    by hand; gradients too; and the norms change the output."""
    mixer, params, x, pos = setup(t, True, seed=6, dt_bc_norms=True)
    assert {"dt_norm", "B_norm", "C_norm"} <= set(params["params"])
    params = o1_params(params, jax.random.key(9))
    for i, name in enumerate(("dt_norm", "B_norm", "C_norm")):  # scales away from 1
        scale = params["params"][name]["scale"]
        params["params"][name]["scale"] = scale + 0.3 * jax.random.normal(jax.random.key(10 + i), scale.shape)
    check_against_reference(mixer, params, x, pos)
    w = jax.random.normal(jax.random.key(8), x.shape)
    grad = lambda f: jax.jit(jax.grad(lambda p, u: jnp.sum(f(p, u) * w), argnums=(0, 1)))(params, x)
    close(grad(lambda p, u: mixer.apply(p, u, pos)[0]), grad(lambda p, u: mixer.reference(p, u, pos)[0]), tol=1e-4)
    plain = {"params": {k: v for k, v in params["params"].items() if not k.endswith("_norm")}}
    y_plain = mixer.clone(dt_bc_norms=False).apply(plain, x, pos)[0]
    assert float(jnp.abs(y_plain - mixer.apply(params, x, pos)[0]).max()) > 1e-3
