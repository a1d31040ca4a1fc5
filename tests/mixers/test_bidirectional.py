"""Every registered mixer in an encoder (``model.causal=false``, mixers/bidirectional.py).

For each mixer: the bidirectional output equals a naive two-direction reference built from the
mixer's own ``reference`` (forward, and on the reversed input, summed or concatenated and
projected; attention: its reference without the causal mask), token 0 depends on token 1
(a nonzero gradient, where the causal mixer's is exactly zero), a right-padded batch of unequal
lengths gives each sequence's own outputs at its valid positions, and a cache is refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.errors import ConfigError
from slm_jax.mixers.bidirectional import Bidirectional, reverse_within
from slm_jax.mixers.registry import MIXERS, build_mixer, mixer_names
from slm_jax.training.sharding import PARAM_AXES
from slm_jax.tree_paths import path_str
from tests.mixers.test_contract import D, close, model_cfg, o1_params

NAMES = mixer_names()
T = 11


def encoder_setup(name, t=T, seed=0, combine="sum"):
    cfg = model_cfg(name, causal=False, bidirectional_combine=combine)
    mixer = build_mixer(cfg, name)
    x = jax.random.normal(jax.random.key(seed), (2, t, D))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
    params = o1_params(mixer.init(jax.random.key(seed + 1), x, pos), jax.random.key(seed + 2))
    return mixer, params, x, pos


def two_direction_reference(mixer, params, x, pos):
    """Naive encoder output: the wrapped mixer's reference on x and on x reversed, combined."""
    if not isinstance(mixer, Bidirectional):  # a native encoder mixer: its own reference, unmasked
        return mixer.reference(params, x, pos)[0]
    p = params["params"]
    y_fwd = mixer.fwd.reference({"params": p["fwd"]}, x, pos)[0]
    y_bwd = mixer.bwd.reference({"params": p["bwd"]}, x[:, ::-1], pos)[0][:, ::-1]
    if mixer.combine == "sum":
        return y_fwd + y_bwd
    return jnp.concatenate([y_fwd, y_bwd], axis=-1) @ p["combine"]["kernel"]


def test_every_mixer_takes_a_route():
    """Attention runs natively without its mask; every other registered mixer is wrapped."""
    for name in NAMES:
        mixer = build_mixer(model_cfg(name, causal=False), name)
        native = getattr(MIXERS[name], "native_bidirectional", False)
        assert isinstance(mixer, Bidirectional) != native, name
        assert native == (name in ("attention", "local_attention")), name


def test_reverse_within_keeps_padding_in_place():
    x = jnp.arange(10).reshape(2, 5)[..., None]
    got = reverse_within(x, jnp.array([5, 3]))[..., 0]
    np.testing.assert_array_equal(got, [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]])
    np.testing.assert_array_equal(reverse_within(reverse_within(x, jnp.array([2, 4])), jnp.array([2, 4])), x)


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_equals_two_direction_reference(name):
    mixer, params, x, pos = encoder_setup(name)
    y, cache = mixer.apply(params, x, pos)
    assert cache is None and y.shape == x.shape
    close(y, jax.jit(lambda p, x: two_direction_reference(mixer, p, x, pos))(params, x))


@pytest.mark.parametrize("name", ["rglru", "mamba2"])
def test_concat_combine_equals_two_direction_reference(name):
    mixer, params, x, pos = encoder_setup(name, combine="concat")
    assert "combine" in params["params"]
    close(mixer.apply(params, x, pos)[0], jax.jit(lambda p, x: two_direction_reference(mixer, p, x, pos))(params, x))


@pytest.mark.parametrize("name", NAMES)
def test_first_token_depends_on_the_next(name):
    """d y[:, 0] / d x[:, 1] is nonzero in the encoder and zero in the causal mixer (the next token, since short
    convolutions and windows see only a few neighbours; FFT convolutions leave float round-off, hence the ratio)."""
    mixer, params, x, pos = encoder_setup(name, t=7, seed=3)
    causal = build_mixer(model_cfg(name), name)
    causal_params = {"params": params["params"]["fwd"]} if isinstance(mixer, Bidirectional) else params

    def grad_next(m, p):
        return jax.grad(lambda x: jnp.sum(m.apply(p, x, pos)[0][:, 0]))(x)[:, 1]

    seen = float(jnp.abs(grad_next(mixer, params)).max())
    assert seen > 1e-4, f"{name}: token 0 does not see token 1"
    assert float(jnp.abs(grad_next(causal, causal_params)).max()) <= 1e-5 * seen


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_each_sequence_alone(name):
    """Row 1 holds 6 real tokens and 5 of garbage padding; at its real positions it matches running alone."""
    mixer, params, x, pos = encoder_setup(name, seed=6)
    n = 6
    lengths = jnp.array([T, n], jnp.int32)
    y = mixer.apply(params, x, pos, None, lengths)[0]
    close(y[:1], mixer.apply(params, x[:1], pos[:1])[0])
    close(y[1:, :n], mixer.apply(params, x[1:, :n], pos[1:, :n])[0])


@pytest.mark.parametrize("name", NAMES)
def test_every_encoder_weight_has_sharding_axes(name):
    """The wrapped copies (mixer/fwd, mixer/bwd) and the combine projection are covered by PARAM_AXES."""
    mixer = build_mixer(model_cfg(name, causal=False, bidirectional_combine="concat"), name)
    x, pos = jnp.zeros((1, 5, D)), jnp.zeros((1, 5), jnp.int32)
    shapes = jax.eval_shape(mixer.init, jax.random.key(0), x, pos)
    for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        p = "params/layers_0/mixer/" + path_str(path).removeprefix("params/")
        assert any(p.endswith("/" + s) for s, _ in PARAM_AXES), f"{name}: encoder weight {p} has no sharding axes"


@pytest.mark.parametrize("name", ["attention", "rglru"])
def test_a_cache_is_refused(name):
    mixer, params, x, pos = encoder_setup(name, t=3)
    with pytest.raises(ConfigError, match="no decode cache"):
        mixer.apply(params, x, pos, {"k": jnp.zeros(1)})
