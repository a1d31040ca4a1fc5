"""Width pruning: keeping every channel is the identity, and dead channels are exactly the ones removed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict, replace
from slm_jax.models.lm import CausalLM
from slm_jax.prune import width
from slm_jax.prune.importance import activation_stats
from slm_jax.prune.options import prune_options
from slm_jax.prune.plan import plan
from slm_jax.prune.run import _prune_width
from tests.prune.runs import perturbed_params

VOCAB = 11
BATCHES = [np.asarray(jax.random.randint(jax.random.key(5), (2, 12), 0, VOCAB))]


def model_cfg(**model):
    base = {"vocab_size": VOCAB, "d_model": 16, "n_heads": 4, "n_layers": 2}
    return config_from_dict({"model": {**base, **model}})


def as_numpy(params):
    return jax.tree.map(np.array, jax.device_get(params))  # writable copies


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_top_indices_and_groups_pick_the_largest_scores():
    assert width.top_indices(np.array([3.0, 1.0, 4.0, 1.0, 5.0]), 3).tolist() == [0, 2, 4]
    assert width.top_per_group(np.array([1.0, 9.0, 2.0, 8.0, 7.0, 0.0]), 2, 2).tolist() == [1, 2, 3, 4]
    # 4 query heads in 2 groups: group 1 (heads 2, 3) sums higher; inside it head 3 is best.
    heads, groups = width.heads_to_keep(np.array([1.0, 1.0, 0.5, 3.0]), 2, 1, 1)
    assert heads.tolist() == [3] and groups.tolist() == [1]


@pytest.mark.parametrize(
    "model",
    [
        {"preset": "transformer", "n_kv_heads": 2},
        {"preset": "griffin", "mixers": {"rglru": {"n_heads": 2, "width": 20}, "local_attention": {"window": 4}}},
        {"preset": "mamba", "mixers": {"mamba": {"d_state": 3}}},
        {"preset": "mamba2", "mixers": {"mamba2": {"d_state": 3, "head_dim": 8, "n_groups": 2, "chunk_size": 4}}},
    ],
)
def test_keeping_every_channel_is_the_identity(model):
    full = model_cfg(**model)
    cfg = full.model
    params = as_numpy(perturbed_params(full))
    p = params["params"]
    for i, name in enumerate(cfg.layers):
        layer = p[f"layers_{i}"]
        if "mlp" in layer:
            assert_trees_equal(width.prune_mlp(layer["mlp"], np.arange(cfg.ff_width)), layer["mlp"])
        mixer = layer["mixer"]
        if name in ("attention", "local_attention"):
            kept = width.prune_attention(
                mixer, np.arange(cfg.n_heads), np.arange(cfg.kv_heads), cfg.n_heads, cfg.kv_heads
            )
            assert_trees_equal(kept, mixer)
        if name == "rglru":
            assert_trees_equal(width.prune_rglru(mixer, np.arange(20)), mixer)
        if name == "mamba":
            assert_trees_equal(width.prune_mamba(mixer, np.arange(32)), mixer)
        if name == "mamba2":
            assert_trees_equal(width.prune_mamba2(mixer, np.arange(4), 8), mixer)
    assert_trees_equal(width.prune_embedding(params, cfg.layers, np.arange(16), 16), params)


def prune_dead(cfg, params, sets):
    """Plan, rank on BATCHES and prune ``params`` of ``cfg`` (a Config) with ``--set`` options; the new model too."""
    shapes, changes = plan(cfg.model, prune_options(None, sets))
    stats = activation_stats(cfg.model, params, BATCHES, "mean_sq")
    pruned = _prune_width(cfg.model, params, stats, shapes)
    new = replace(cfg, **changes)
    return CausalLM(new.model), pruned


def logits(model, params):
    return np.asarray(model.apply(params, jnp.asarray(BATCHES[0]))[0])


def test_dead_mlp_channels_are_the_ones_removed_and_the_output_is_unchanged():
    cfg = model_cfg()
    params = as_numpy(perturbed_params(cfg))
    f, dead = cfg.model.ff_width, np.array([3, 10, 40, 41])
    for i in range(2):
        params["params"][f"layers_{i}"]["mlp"]["gate_up"]["kernel"][:, f + dead] = 0.0  # up = 0: silent channels
    model, pruned = prune_dead(cfg, params, [f"prune.d_ff={f - len(dead)}"])
    np.testing.assert_allclose(logits(model, pruned), logits(CausalLM(cfg.model), params), atol=1e-5)
    kept = pruned["params"]["layers_0"]["mlp"]["down"]["kernel"]
    np.testing.assert_array_equal(kept, np.delete(params["params"]["layers_0"]["mlp"]["down"]["kernel"], dead, 0))


def test_a_silent_kv_group_is_removed_with_its_query_heads():
    cfg = model_cfg(n_kv_heads=2)
    params = as_numpy(perturbed_params(cfg))
    e = 4  # 16 / 4 heads; values of group 0 sit at columns (4 + 2) * e + [0, e)
    for i in range(2):
        params["params"][f"layers_{i}"]["mixer"]["qkv"]["kernel"][:, 6 * e : 7 * e] = 0.0
    model, pruned = prune_dead(cfg, params, ["prune.n_heads=2", "prune.n_kv_heads=1"])
    np.testing.assert_allclose(logits(model, pruned), logits(CausalLM(cfg.model), params), atol=1e-5)
    o = params["params"]["layers_1"]["mixer"]["o"]["kernel"]
    np.testing.assert_array_equal(pruned["params"]["layers_1"]["mixer"]["o"]["kernel"], o[2 * e :])


def test_silent_rglru_and_mamba_channels_are_removed_and_the_output_is_unchanged():
    rg = model_cfg(preset="hawk", mixers={"rglru": {"width": 12, "n_heads": 2}})
    params = as_numpy(perturbed_params(rg))
    dead = np.array([1, 8])  # one per gate block of 6
    for i in range(2):
        params["params"][f"layers_{i}"]["mixer"]["in_proj"]["kernel"][:, np.concatenate([dead, 12 + dead])] = 0.0
    model, pruned = prune_dead(rg, params, ["prune.rglru_width=10"])
    np.testing.assert_allclose(logits(model, pruned), logits(CausalLM(rg.model), params), atol=1e-5)
    a = params["params"]["layers_0"]["mixer"]["a_param"]
    np.testing.assert_array_equal(pruned["params"]["layers_0"]["mixer"]["a_param"], np.delete(a, dead))

    mb = model_cfg(preset="mamba", d_model=8, mixers={"mamba": {"d_state": 3, "expand": 2}})
    params = as_numpy(perturbed_params(mb))
    dead = np.arange(8, 16)  # inner channels of the second half: x and z both zero
    for i in range(2):
        params["params"][f"layers_{i}"]["mixer"]["in_proj"]["kernel"][:, np.concatenate([dead, 16 + dead])] = 0.0
    model, pruned = prune_dead(mb, params, ["prune.mamba_expand=1"])
    np.testing.assert_allclose(logits(model, pruned), logits(CausalLM(mb.model), params), atol=1e-5)
    np.testing.assert_array_equal(
        pruned["params"]["layers_1"]["mixer"]["D"], params["params"]["layers_1"]["mixer"]["D"][:8]
    )


def test_silent_embedding_channels_and_mamba2_heads_are_the_ones_removed():
    cfg = model_cfg(preset="griffin", mixers={"rglru": {"n_heads": 2, "width": 20}, "local_attention": {"window": 4}})
    params = as_numpy(perturbed_params(cfg))
    dead = np.array([2, 7, 13])
    p = params["params"]
    p["embed"]["embedding"][:, dead] = 0.0  # nothing writes these residual channels: they stay zero
    for i, name in enumerate(cfg.model.layers):
        p[f"layers_{i}"]["mlp"]["down"]["kernel"][:, dead] = 0.0
        p[f"layers_{i}"]["mixer"]["o" if name == "local_attention" else "out_proj"]["kernel"][:, dead] = 0.0
    model, pruned = prune_dead(cfg, params, ["prune.d_model=13"])
    np.testing.assert_array_equal(pruned["params"]["final_norm"]["scale"], np.delete(p["final_norm"]["scale"], dead))
    assert np.isfinite(logits(model, pruned)).all()

    m2 = model_cfg(preset="mamba2", mixers={"mamba2": {"d_state": 3, "head_dim": 8, "n_groups": 2, "chunk_size": 4}})
    params = as_numpy(perturbed_params(m2))
    for i in range(2):  # z of heads 0 and 3 (one per group) zero: silu(0) = 0 silences them
        params["params"][f"layers_{i}"]["mixer"]["in_proj"]["kernel"][:, np.r_[0:8, 24:32]] = 0.0
    model, pruned = prune_dead(m2, params, ["prune.mamba2_expand=1"])
    np.testing.assert_array_equal(
        pruned["params"]["layers_0"]["mixer"]["A_log"], params["params"]["layers_0"]["mixer"]["A_log"][[1, 2]]
    )
    assert np.isfinite(logits(model, pruned)).all()


@pytest.mark.parametrize(
    "model",
    [
        {"layer_pattern": ["attention+mamba2"]},
        {"layer_pattern": ["mamba2", "mlp"], "mixer_mlp": False, "mlp": "relu2"},
    ],
)
def test_composite_layers_are_refused_with_a_fix(model):
    """Parallel and MLP-only layers have no pruning rules yet: one sentence says so, before any work."""
    from slm_jax.errors import ConfigError

    m = config_from_dict({"model": {"d_model": 32, "n_heads": 4, "n_layers": 2, "vocab_size": 29, **model}}).model
    with pytest.raises(ConfigError, match="slm prune does not handle"):
        plan(m, prune_options({"d_model": 16}))
