"""Block and attention options of imported families: attention score scale and soft cap (Gemma 2),
post-branch norms (Gemma 2's sandwich), parallel residual (GPT-NeoX), gated attention output (Qwen3-Next).

Each option must (1) keep full-sequence logits equal to prefill + one-token decode logits, (2) change
the output (so these tests can fail), and (3) compute what its docstring says, checked against a
composition of the block's own submodules or the slow attention reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import build_mixer
from slm_jax.models import accounting
from slm_jax.models.block import build_block
from slm_jax.models.lm import CausalLM, stack_layers
from slm_jax.modules.mlp import MLP
from slm_jax.modules.norms import make_norm

BASE = {
    "vocab_size": 29,
    "d_model": 32,
    "n_heads": 4,
    "n_kv_heads": 2,
    "n_layers": 3,
    "d_ff": 48,
    "layer_pattern": ["local_attention", "attention"],
    "mixers": {"local_attention": {"window": 5}},
}
OPTIONS = {
    "attn_softcap": {"attn_softcap": 0.05},  # far below the scores' spread, so the cap bites
    "attn_scale": {"attn_scale": 0.9},
    "post_norms": {"post_norms": True},
    "parallel_residual": {"parallel_residual": True},
    "residual_scale": {"residual_scale": 0.4},
    "logit_divisor": {"logit_divisor": 3.0},
    "attn_output_gate": {"attn_output_gate": True},
    "qk_norm_all_heads": {"qk_norm": True, "qk_norm_all_heads": True},
    "reordered_norms": {"reordered_norms": ["attention"]},  # OLMo hybrid: only the attention layers
    "olmo2_like": {
        "reordered_norms": ["attention"],
        "qk_norm": True,
        "qk_norm_all_heads": True,
        "layer_pattern": ["attention"],
    },
    "qwen3_next_like": {
        "attn_output_gate": True,
        "qk_norm": True,
        "norm_offset": 1.0,
        "rotary_fraction": 0.25,
        "layer_pattern": ["attention"],
    },
    "gemma2_like": {
        "attn_softcap": 0.05,
        "attn_scale": 0.3,
        "post_norms": True,
        "norm_offset": 1.0,
        "mlp": "geglu",
        "logit_softcap": 2.0,
    },
    "gpt_neox_like": {
        "parallel_residual": True,
        "norm": "layer",
        "norm_bias": True,
        "mlp": "gelu",
        "mlp_bias": True,
        "qkv_bias": True,
        "attn_out_bias": True,
        "rotary_fraction": 0.25,
        "tie_embeddings": False,
        "layer_pattern": ["attention"],
    },
}


def _cfg(**model):
    return config_from_dict({"model": {**BASE, **model}}).model


def _perturbed(variables, seed=2):
    """Noise on every leaf, so (1 + w) norm scales and zero-initialised biases are not trivial."""
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _perturbed_params(model, toks, seed=1):
    return _perturbed(model.init(jax.random.key(seed), toks), seed + 1)


def _tokens(b=2, t=13):
    return jax.random.randint(jax.random.key(0), (b, t), 0, BASE["vocab_size"])


def _decode(model, params, toks, split):
    """Prefill toks[:, :split], then one token at a time; all logits f32[b, t, v]."""
    b, t = toks.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    out, cache = model.apply(params, toks[:, :split], pos[:, :split], model.init_cache(b, t))
    outs = [out]
    for i in range(split, t):
        out, cache = model.apply(params, toks[:, i : i + 1], pos[:, i : i + 1], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_full_sequence_equals_prefill_plus_decode(name):
    model = CausalLM(_cfg(**OPTIONS[name]))
    toks = _tokens()
    params = _perturbed_params(model, toks)
    full, _ = model.apply(params, toks)
    np.testing.assert_allclose(_decode(model, params, toks, split=6), full, rtol=1e-5, atol=1e-5)


def test_options_through_scanned_layers():
    options = {**OPTIONS["gemma2_like"], "parallel_residual": True, "n_layers": 4}
    cfg, scan_cfg = _cfg(**options), _cfg(**options, scan_layers=True)
    toks = _tokens()
    params = _perturbed_params(CausalLM(cfg), toks)
    stacked = stack_layers(params, scan_cfg)
    ref, _ = CausalLM(cfg).apply(params, toks)
    np.testing.assert_allclose(CausalLM(scan_cfg).apply(stacked, toks)[0], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_decode(CausalLM(scan_cfg), stacked, toks, 4), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["attn_softcap", "attn_scale", "parallel_residual", "residual_scale", "attn_output_gate"]
)
def test_each_option_changes_the_logits(name):
    """Same parameters with and without the option: the logits must move well beyond float noise."""
    toks = _tokens()
    plain, option = CausalLM(_cfg()), CausalLM(_cfg(**OPTIONS[name]))
    params = _perturbed_params(option, toks)  # a gated projection has more columns than the plain one
    plain_params = _without_gates(params, _cfg())  # the same weights, without the gate columns
    diff = np.abs(np.asarray(option.apply(params, toks)[0] - plain.apply(plain_params, toks)[0])).max()
    assert diff > 1e-2, f"{name} changed the logits by only {diff}"


def _without_gates(params, cfg):
    """A gated model's parameters with each fused attention projection cut to the plain model's columns."""
    e, h, k = cfg.attn_head_dim, cfg.n_heads, cfg.kv_heads

    def cut(path, a):
        inside = any(getattr(key, "key", None) == "qkv" for key in path)
        return a[..., : (h + 2 * k) * e] if inside else a

    return jax.tree_util.tree_map_with_path(cut, params)


def test_output_gate_multiplies_each_channel():
    """out * sigmoid(gate): zero gate weights make every gate sigmoid(0) = 1/2, so the gated mixer with its
    output projection doubled equals the plain mixer with the same q, k, v and o weights."""
    cfg, plain_cfg = _cfg(attn_output_gate=True), _cfg()
    gated, plain = build_mixer(cfg, "attention"), build_mixer(plain_cfg, "attention")
    x = jax.random.normal(jax.random.key(3), (2, 7, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    v = _perturbed(gated.init(jax.random.key(4), x, pos), seed=5)
    width = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.attn_head_dim
    half_open = {"params": dict(v["params"])}
    half_open["params"]["qkv"] = {"kernel": v["params"]["qkv"]["kernel"].at[:, width:].set(0.0)}
    half_open["params"]["o"] = {"kernel": 2.0 * v["params"]["o"]["kernel"]}
    want = plain.apply(_without_gates(v, plain_cfg), x, pos)[0]
    np.testing.assert_allclose(gated.apply(half_open, x, pos)[0], want, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(gated.apply(v, x, pos)[0] - want)).max() > 1e-2  # real gates do change it


def test_logit_divisor_divides_the_logits():
    toks = _tokens()
    plain, divided = CausalLM(_cfg()), CausalLM(_cfg(logit_divisor=3.0))
    params = _perturbed_params(plain, toks)
    np.testing.assert_allclose(divided.apply(params, toks)[0], plain.apply(params, toks)[0] / 3.0, rtol=1e-6)


@pytest.mark.parametrize("option", ["post_norms", "parallel_residual", "residual_scale", "reordered_norms"])
def test_block_equals_its_composition(option):
    """post_norms: h = x + n3(mixer(n1(x))), out = h + n4(mlp(n2(h))); parallel_residual:
    out = x + mixer(n1(x)) + mlp(n2(x)); residual_scale r: h = x + r mixer(n1(x)), out = h + r mlp(n2(h));
    reordered_norms: h = x + n3(mixer(x)), out = h + n4(mlp(h)); all from the block's own submodules and parameters."""
    values = {"residual_scale": 0.4, "reordered_norms": ["attention"]}
    cfg = _cfg(**{option: values.get(option, True)})
    block = build_block(cfg, "attention")
    x = jax.random.normal(jax.random.key(3), (2, 7, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    variables = _perturbed(block.init(jax.random.key(4), x, pos), seed=5)
    p = variables["params"]
    rms = make_norm(cfg.norm, cfg.norm_eps, cfg.norm_offset, False, jnp.float32, jnp.float32)
    norm = lambda name, u: rms.apply({"params": p[name]}, u)
    mixer = lambda u: build_mixer(cfg, "attention").apply({"params": p["mixer"]}, u, pos)[0]
    mlp = lambda u: MLP(cfg.ff_width, cfg.mlp).apply({"params": p["mlp"]}, u)
    if option == "parallel_residual":
        expected = x + mixer(norm("mixer_norm", x)) + mlp(norm("mlp_norm", x))
    elif option == "residual_scale":
        h = x + 0.4 * mixer(norm("mixer_norm", x))
        expected = h + 0.4 * mlp(norm("mlp_norm", h))
    elif option == "reordered_norms":
        assert "mixer_norm" not in p and "mlp_norm" not in p
        h = x + norm("mixer_post_norm", mixer(x))
        expected = h + norm("mlp_post_norm", mlp(h))
    else:
        h = x + norm("mixer_post_norm", mixer(norm("mixer_norm", x)))
        expected = h + norm("mlp_post_norm", mlp(norm("mlp_norm", h)))
    np.testing.assert_allclose(block.apply(variables, x, pos)[0], expected, rtol=1e-5, atol=1e-5)
    if option in ("post_norms", "reordered_norms"):  # zero post-norm scales silence both branches exactly
        for name in ("mixer_post_norm", "mlp_post_norm"):
            p[name] = {"scale": jnp.zeros(cfg.d_model)}
        np.testing.assert_array_equal(block.apply(variables, x, pos)[0], x)


@pytest.mark.parametrize("window,kv,gate,qk", [(0, 4, False, "none"), (3, 2, False, "head"), (3, 2, True, "all")])
def test_scaled_capped_attention_equals_reference(window, kv, gate, qk):
    """The mixer's fast path (ops.attend) against its per-query reference loop, with scale, cap, gate and qk
    norms per head or over all heads."""
    window_cfg = {
        "mixers": {"attention": {"window": window}},
        "qk_norm": qk != "none",
        "qk_norm_all_heads": qk == "all",
    }
    cfg = _cfg(n_kv_heads=kv, attn_scale=0.7, attn_softcap=0.3, attn_output_gate=gate, **window_cfg)
    mixer = build_mixer(cfg, "attention")
    x = jax.random.normal(jax.random.key(6), (2, 9, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
    variables = _perturbed(mixer.init(jax.random.key(7), x, pos), seed=8)  # norm scales off 1
    variables = jax.tree.map(lambda a: a * 4.0, variables)  # larger scores, so the cap is far from linear
    got, _ = mixer.apply(variables, x, pos)
    ref, _ = mixer.reference(variables, x, pos)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    uncapped_cfg = _cfg(n_kv_heads=kv, attn_scale=0.7, attn_output_gate=gate, **window_cfg)
    uncapped, _ = build_mixer(uncapped_cfg, "attention").apply(variables, x, pos)
    assert np.abs(np.asarray(got - uncapped)).max() > 1e-2


@pytest.mark.parametrize(
    "name", ["post_norms", "gemma2_like", "gpt_neox_like", "qwen3_next_like", "qk_norm_all_heads", "reordered_norms"]
)
def test_param_count_formula(name):
    cfg = _cfg(**OPTIONS[name])
    params = CausalLM(cfg).init(jax.random.key(0), _tokens())
    assert accounting.param_count(cfg) == sum(a.size for a in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "model,key",
    [
        ({"post_norms": True, "norm_position": "post"}, "model.post_norms"),
        ({"parallel_residual": True, "norm_position": "post"}, "model.parallel_residual"),
        ({"parallel_residual": True, "mlp": "none"}, "model.parallel_residual"),
        ({"attn_softcap": -1.0}, "model.attn_softcap"),
        ({"qk_norm_all_heads": True}, "model.qk_norm_all_heads"),
        ({"reordered_norms": ["mamba"]}, "model.reordered_norms"),
        ({"reordered_norms": ["attention"], "norm_position": "post"}, "model.reordered_norms"),
        ({"attn_scale": -0.1}, "model.attn_scale"),
        ({"residual_scale": 0.0}, "model.residual_scale"),
        ({"logit_divisor": -2.0}, "model.logit_divisor"),
    ],
)
def test_bad_options_name_the_field(model, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(**model)
