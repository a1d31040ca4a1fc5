"""Linear-attention heads (prune.la_heads) and d_model pruning of every decoder preset's mixers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict, replace
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import build_mixer
from slm_jax.models.lm import CausalLM
from slm_jax.presets import PRESETS, is_encoder, preset_pattern
from slm_jax.prune import linear
from slm_jax.prune.importance import activation_stats
from slm_jax.prune.options import prune_options
from slm_jax.prune.plan import plan
from slm_jax.prune.run import _check_shapes, _prune_linear, _prune_width
from tests.prune.runs import perturbed_params
from tests.sampling import default_sample

VOCAB = 11
TOKENS = np.asarray(jax.random.randint(jax.random.key(5), (1, 9), 0, VOCAB))
HEADED = {  # mixer options giving 3 heads, so that one of them can go
    "gla": {"n_heads": 3, "chunk_size": 4},
    "deltanet": {"n_heads": 3, "head_dim": 4, "chunk_size": 4},
    "gated_deltanet": {"n_heads": 3, "n_v_heads": 6, "head_dim": 4, "v_head_dim": 3, "chunk_size": 4},
    "mlstm": {"n_heads": 3, "qk_dim_factor": 0.25, "v_dim_factor": 0.5, "chunk_size": 4},
}
KEPT, DROPPED = np.array([0, 2]), 1  # heads of the 3
DECODERS = [name for name in sorted(PRESETS) if not is_encoder(name)]


def config(pattern, d_model=24, norm_eps=1e-5, init_std=0.02, **mixers):
    model = {"vocab_size": VOCAB, "d_model": d_model, "n_heads": 4, "n_layers": len(pattern), "d_ff": 16}
    model.update(norm_eps=norm_eps, init_std=init_std)
    return config_from_dict({"model": {**model, "layer_pattern": list(pattern), "mixers": mixers}})


def as_numpy(params):
    return jax.tree.map(np.array, jax.device_get(params))  # writable copies


def pruned(cfg, params, sets):
    """(pruned Config, pruned params) of ranking and pruning ``params`` of ``cfg`` as ``--set`` options ask."""
    shapes, changes = plan(cfg.model, prune_options(None, sets))
    stats = activation_stats(cfg.model, params, [TOKENS], "mean_sq")
    new, out = replace(cfg, **changes), _prune_width(cfg.model, params, stats, shapes)
    _check_shapes(new, out)
    return new, out


def logits(cfg, params):
    return np.asarray(jax.jit(CausalLM(cfg.model).apply)(params, jnp.asarray(TOKENS))[0])


def assert_decodes_like_the_full_pass(cfg, params):
    """Prefill 5 tokens, then one at a time (compiled: two shapes), against the full pass."""
    model, toks = CausalLM(cfg.model), jnp.asarray(TOKENS)
    step = jax.jit(model.apply)
    pos = jnp.arange(toks.shape[1])[None]
    out, cache = step(params, toks[:, :5], pos[:, :5], model.init_cache(1, toks.shape[1]))
    outs = [out]
    for i in range(5, toks.shape[1]):
        out, cache = step(params, toks[:, i : i + 1], pos[:, i : i + 1], cache)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), logits(cfg, params), rtol=2e-4, atol=2e-4)


def random_mixer(name, **options):
    """(mixer module, numpy params with distinct values) of a one-layer ``name`` model."""
    model = config([name], **({name: options} if options else {})).model
    module = build_mixer(model, name)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 3, 24)), jnp.zeros((1, 3), int)))
    rng = np.random.default_rng(0)
    return module, jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes["params"])


@pytest.mark.parametrize("name", sorted(HEADED) + sorted(linear.TIED))
def test_keeping_every_head_and_channel_is_the_identity(name):
    module, params = random_mixer(name, **HEADED.get(name, {}))
    if name in HEADED:
        layout, n = linear.head_layout(name, module), 3
    else:
        _, layout = linear.tied_layout(name, module)
        n = linear.n_units(layout)
    kept = linear.take(params, layout, np.arange(n))
    assert jax.tree.structure(kept) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, kept, params)


@pytest.mark.parametrize("name", sorted(HEADED))
def test_removing_a_head_equals_zeroing_its_output_rows_and_decodes_like_the_full_pass(name):
    cfg = config([name], init_std=0.3, **{name: HEADED[name]})
    params = as_numpy(perturbed_params(cfg))
    layout = linear.head_layout(name, build_mixer(cfg.model, name))
    _, changes = plan(cfg.model, prune_options(None, ["prune.la_heads=2"]))
    new = replace(cfg, **changes)
    mixer = params["params"]["layers_0"]["mixer"]
    small = {"params": {**params["params"], "layers_0": {**params["params"]["layers_0"]}}}
    small["params"]["layers_0"]["mixer"] = linear.take(mixer, layout, KEPT)
    _check_shapes(new, small)
    out = linear.out_proj(name)
    (_, [(_, units)]) = layout[f"{out}/kernel"]
    mixer[out]["kernel"][units[DROPPED]] = 0.0  # the reference: the dropped head contributes nothing
    np.testing.assert_allclose(logits(new, small), logits(cfg, params), rtol=1e-5, atol=1e-5)
    assert_decodes_like_the_full_pass(new, small)


def test_the_head_with_the_least_output_activation_is_the_one_removed():
    cfg = config(["gla"], gla=HEADED["gla"])
    params = as_numpy(perturbed_params(cfg))
    mixer = params["params"]["layers_0"]["mixer"]
    dv, r = 8, 2 * 12 + 24  # 3 heads of value width 8; the swish gate r sits after q, k (12 each) and v (24)
    mixer["in_proj"]["kernel"][:, r + dv : r + 2 * dv] *= 1e-3  # head 1's gate ~ 0: its output ~ 0
    new, small = pruned(cfg, params, ["prune.la_heads=2"])
    assert new.model.mixers.gla.n_heads == 2 and new.model.mixers.gla.expand_v * 24 == 16
    kept = np.delete(mixer["out_proj"]["kernel"], np.s_[dv : 2 * dv], axis=0)
    np.testing.assert_array_equal(small["params"]["layers_0"]["mixer"]["out_proj"]["kernel"], kept)


def preset_config(name):
    """A tiny ``name`` model with one layer of each of its mixers."""
    pattern = list(dict.fromkeys(preset_pattern(name)))
    mixers = {
        "mamba2": {"head_dim": 8, "chunk_size": 4},
        "hyena": {"max_len": 16, "filter_hidden": 8},
        "baseconv": {"max_len": 16},
    }
    model = {"preset": name, "vocab_size": VOCAB, "d_model": 24, "n_heads": 4, "n_layers": len(pattern)}
    return config_from_dict({"model": {**model, "layer_pattern": pattern, "d_ff": 16, "mixers": mixers}})


# Default: one preset per mixer family; every preset with -m slow.
@pytest.mark.parametrize("name", default_sample(DECODERS, {"griffin", "jamba_like", "qwen35_like", "rwkv7", "hyena"}))
def test_d_model_pruning_works_on_every_decoder_preset_and_decodes_like_the_full_pass(name):
    cfg = preset_config(name)
    new, small = pruned(cfg, as_numpy(perturbed_params(cfg)), ["prune.d_model=16"])
    assert new.model.d_model == 16 and small["params"]["embed"]["embedding"].shape == (VOCAB, 16)
    assert_decodes_like_the_full_pass(new, small)


@pytest.mark.parametrize(
    "pattern,sets,message",
    [
        (["gla"], ["prune.la_heads=5"], "keeps more linear-attention heads than the model has (4)"),
        (["attention"], ["prune.la_heads=2"], "has no GLA, DeltaNet, Gated DeltaNet or mLSTM layer"),
        (["rwkv7"], ["prune.la_heads=2"], "rwkv7 heads have d_model / n_heads channels each"),
        (["rwkv7"], ["prune.d_model=18"], "does not split into the 4 rwkv7 heads"),
        (["retnet"], ["prune.d_model=20"], "of an even key width"),
        (["gla", "mlstm"], ["prune.la_heads=1"], "gla layers have 4 and mlstm layers have 2 heads"),
    ],
)
def test_impossible_linear_attention_shapes_are_one_sentence(pattern, sets, message):
    model = config(pattern, mlstm={"n_heads": 2}).model
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        plan(model, prune_options(None, sets))
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


DEAD_INNER = {  # (leaf, channel offset): zeroing these columns silences an inner channel of the mixer
    "h3": [("v_proj/kernel", 0), ("v_proj/bias", 0)],  # z = shift(k) v = 0
    "short_conv": [("in_proj/kernel", 24)],  # the output gate c
    "based": [("in_proj/kernel", 2 * 4 * 16)],  # the values, after q and k (4 heads of 16 features)
    "baseconv": [],  # its channels are the residual stream's: the dead residual channels are its dead channels
}


@pytest.mark.parametrize("name", sorted(DEAD_INNER))
def test_silent_residual_and_mixer_channels_are_the_ones_removed_on_d_model(name):
    # eps ~ 0: an RMS over fewer channels of the same sum of squares is a plain rescale; weights large enough that
    # the mixer's products of projections (H3: q * ssm(shift(k) v)) move the logits
    cfg = config([name], norm_eps=1e-12, init_std=0.5)
    params = as_numpy(perturbed_params(cfg))
    p, mixer = params["params"], params["params"]["layers_0"]["mixer"]
    dead = np.array([1, 4, 7, 10, 13, 16, 19, 22])  # 2 in every 6: the same number in each of 4 heads
    p["embed"]["embedding"][:, dead] = 0.0  # nothing writes these residual channels: they stay zero
    for leaf in (mixer["out_proj"], p["layers_0"]["mlp"]["down"]):
        leaf["kernel"][:, dead] = 0.0
        if "bias" in leaf:
            leaf["bias"][dead] = 0.0
    for path, offset in DEAD_INNER[name]:
        module, leaf = path.split("/")
        mixer[module][leaf][..., offset + dead] = 0.0
    new, small = pruned(cfg, params, ["prune.d_model=16"])
    for norm in ("mixer_norm", "mlp_norm"):  # RMS over 16 channels, not 24, of the same sum of squares
        small["params"]["layers_0"][norm]["scale"] *= np.sqrt(24 / 16)
    small["params"]["final_norm"]["scale"] *= np.sqrt(24 / 16)
    np.testing.assert_allclose(logits(new, small), logits(cfg, params), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(small["params"]["embed"]["embedding"], np.delete(p["embed"]["embedding"], dead, 1))


def test_retnet_keeps_whole_rope_pairs_ranked_by_their_query_and_key_weights():
    module, params = random_mixer("retnet")  # d 24: 4 heads of key width 6, pairs (i, i + 3)
    params["in_proj"]["kernel"][:, 1] *= 1e-3  # head 0, pair 1 (channels 1 and 4): the weakest
    shapes, _ = plan(config(["retnet"]).model, prune_options(None, ["prune.d_model=16"]))
    kept = _prune_linear(config(["retnet"]).model, "retnet", params, np.zeros(24), shapes, None)
    w = params["in_proj"]["kernel"]
    q = kept["in_proj"]["kernel"][:, :16]
    np.testing.assert_array_equal(q[:, :4], w[:, [0, 2, 3, 5]])  # head 0: pairs 0 and 2, still rotate-half
    np.testing.assert_array_equal(kept["in_proj"]["kernel"][:, 32:], w[:, 48:])  # values and gates whole
