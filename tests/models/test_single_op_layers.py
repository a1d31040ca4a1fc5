"""Single-op blocks (Nemotron-H): ``mlp`` layer-pattern entries (a block without a mixer, x + mlp(norm(x))),
``model.mixer_mlp: false`` (blocks with a mixer lose their MLP, x + mixer(norm(x))) and the ``relu2`` MLP
(Primer's squared ReLU).

Checked: full-sequence logits == prefill + one-token decode, unrolled and with ``scan_layers`` (a scanned period
plus unrolled leftovers); the blocks hold exactly the parameters they use and compute what the docstring says;
an MLP-only layer's cache is empty; the accounting formulas equal the real counts; quantization and LoRA reach the
MLP layers' projections; and each misuse is one ConfigError naming the field.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.finetune.lora import LoraSpec, apply_unmerged, init_adapters, merge, target_paths
from slm_jax.models import accounting
from slm_jax.models.block import build_block
from slm_jax.models.lm import CausalLM, stack_layers
from slm_jax.modules.mlp import MLP
from slm_jax.modules.norms import make_norm
from slm_jax.quant.params import linear_paths, quantize_params

BASE = {
    "vocab_size": 31,
    "d_model": 32,
    "n_heads": 4,
    "n_kv_heads": 2,
    "d_ff": 40,
    "mlp": "relu2",
    "mixer_mlp": False,
    "position": "none",
    "layer_pattern": ["mamba2", "mlp", "attention", "mlp"],
    "n_layers": 6,  # one period of 4 and a leftover mamba2, mlp under scan_layers
    "mixers": {"mamba2": {"d_state": 8, "head_dim": 16, "chunk_size": 4}},
}


def _cfg(**model):
    return config_from_dict({"model": {**BASE, **model}}).model


def _tokens(b=2, t=13):
    return jax.random.randint(jax.random.key(3), (b, t), 0, BASE["vocab_size"])


def _perturbed(model, toks, seed=1):
    """Params with every leaf moved off its init (norm scales of 1, biases of 0 would hide mistakes)."""
    params = model.init(jax.random.key(0), toks)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


def _decode(model, params, toks, split):
    b, t = toks.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    cache = model.init_cache(b, t)
    out, cache = model.apply(params, toks[:, :split], pos[:, :split], cache)
    outs = [out]
    for i in range(split, t):
        out, cache = model.apply(params, toks[:, i : i + 1], pos[:, i : i + 1], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("model", [{}, {"mixer_mlp": True, "mlp": "swiglu", "position": "rope"}])
def test_full_sequence_equals_prefill_plus_decode(model):
    cfg = _cfg(**model)
    lm, toks = CausalLM(cfg), _tokens()
    params = _perturbed(lm, toks)
    full, _ = lm.apply(params, toks)
    stepped, cache = _decode(lm, params, toks, split=5)
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), atol=1e-5, rtol=1e-5)
    assert cache["layers"][1] == {} and cache["layers"][3] == {}  # MLP-only layers keep no state


def test_scan_layers_same_logits_and_decode():
    cfg, scanned_cfg = _cfg(), _cfg(scan_layers=True)
    toks = _tokens()
    params = _perturbed(CausalLM(cfg), toks)
    stacked = stack_layers(params, scanned_cfg)
    lm = CausalLM(scanned_cfg)
    assert "periods" in stacked["params"] and "layers_5" in stacked["params"]
    want, _ = CausalLM(cfg).apply(params, toks)
    got, _ = lm.apply(stacked, toks)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    stepped, cache = _decode(lm, stacked, toks, split=4)
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert cache["periods"][1] == {}


def test_blocks_hold_and_compute_one_op():
    cfg = _cfg()
    x = jax.random.normal(jax.random.key(1), (2, 7, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    mlp_block, mixer_block = build_block(cfg, "mlp", layer=1), build_block(cfg, "attention", layer=2)
    mp = jax.tree.map(lambda a: a + 0.3, mlp_block.init(jax.random.key(2), x, pos))
    xp = mixer_block.init(jax.random.key(3), x, pos)
    assert set(mp["params"]) == {"mlp_norm", "mlp"} and set(mp["params"]["mlp"]) == {"up", "down"}
    assert set(xp["params"]) == {"mixer_norm", "mixer"}
    # an MLP block: x + down(relu(up(norm(x)))^2)
    norm = make_norm(cfg.norm, cfg.norm_eps, cfg.norm_offset, cfg.norm_bias, jnp.float32, jnp.float32)
    h = norm.apply({"params": mp["params"]["mlp_norm"]}, x)
    w = mp["params"]["mlp"]
    want = x + jnp.square(jax.nn.relu(h @ w["up"]["kernel"])) @ w["down"]["kernel"]
    got, cache = mlp_block.apply(mp, x, pos, {})
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert cache == {}
    # the relu2 MLP module itself
    y = MLP(cfg.ff_width, "relu2").apply({"params": w}, h)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want - x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", [{}, {"mixer_mlp": True}, {"mlp": "gelu", "mlp_bias": True}, {"post_norms": True}])
def test_accounting_equals_real_counts(model):
    cfg = _cfg(**model)
    params = CausalLM(cfg).init(jax.random.key(0), _tokens(1, 4))
    assert accounting.param_count(cfg) == sum(a.size for a in jax.tree.leaves(params))
    dense = _cfg(**{**model, "mixer_mlp": True, "layer_pattern": ["mamba2", "attention"]})
    # FLOPs: each mlp layer costs its MLP alone, each mixer layer its mixer alone
    mixers = [accounting._mixer_flops(cfg, n, 64) for n in cfg.layers]
    assert mixers[1] == 0 and mixers[3] == 0 and mixers[0] > 0
    assert accounting.forward_flops_per_token(cfg, 64) > 0
    assert accounting.decode_state_bytes(cfg, 1, 64) < accounting.decode_state_bytes(dense, 1, 64)
    lm = CausalLM(cfg)
    cache_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(lm.init_cache(1, 64)))
    assert accounting.decode_state_bytes(cfg, 1, 64) == cache_bytes


def test_quantization_and_lora_reach_mlp_layers():
    cfg = _cfg()
    lm, toks = CausalLM(cfg), _tokens()
    params = _perturbed(lm, toks)
    paths = linear_paths(cfg)
    assert ("layers_1", "mlp", "up") in paths and ("layers_0", "mixer", "in_proj") in paths
    q = quantize_params(params, paths, 8)
    assert "kernel" not in q["params"]["layers_1"]["mlp"]["up"]
    ref, _ = lm.apply(params, toks)
    out, _ = lm.apply(q, toks)
    assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
    spec = LoraSpec(rank=2, targets=r"(mixer/(in_proj|qkv)|mlp/up)$")
    chosen = target_paths(cfg, spec)
    assert "layers_1/mlp/up" in chosen and "layers_2/mixer/qkv" in chosen
    adapters = init_adapters(params, chosen, spec, jax.random.key(5))
    adapters = {p: {**a, "b": a["b"] + 0.05} for p, a in adapters.items()}
    merged, _ = lm.apply(merge(params, adapters, spec), toks)
    np.testing.assert_allclose(
        np.asarray(merged), np.asarray(apply_unmerged(lm, params, adapters, spec, toks)), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize(
    "model, key",
    [
        ({"mlp": "none", "mixer_mlp": True}, "model.mlp"),  # mlp layers need an MLP kind
        ({"mlp": "none", "layer_pattern": ["attention"]}, "model.mixer_mlp"),
        ({"parallel_residual": True}, "model.parallel_residual"),
        ({"mlp": "relu3"}, "relu2"),  # the message lists the kinds
        ({"mlp": "swiglu", "moe": {"n_experts": 4, "layers": [0]}}, "model.moe"),  # layer 0 is mamba2: no MLP
        ({"layer_pattern": ["mamba2", "mpl"]}, "mpl"),
    ],
)
def test_misuse_names_the_field(model, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(**model)


def test_moe_on_mlp_layers():
    """With model.moe choosing mlp layers, those blocks hold the MoE alone (Nemotron-H's "E" layers)."""
    cfg = _cfg(mlp="swiglu", moe={"n_experts": 4, "top_k": 2, "layers": [1, 5]})
    lm, toks = CausalLM(cfg), _tokens()
    params = lm.init(jax.random.key(0), toks)
    assert set(params["params"]["layers_1"]) == {"mlp_norm", "moe"} and "mlp" in params["params"]["layers_3"]
    assert accounting.param_count(cfg) == sum(a.size for a in jax.tree.leaves(params))
    full, _ = lm.apply(params, toks)
    stepped, _ = _decode(lm, params, toks, split=6)
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), atol=1e-5, rtol=1e-5)
