"""Weight-shared blocks (``model.shared_block``, models/shared_block.py; Zamba2's shared transformer).

Checked: full-sequence logits == prefill + one-token decode (each use keeps its own KV cache) across the options
(mixer-input or residual add, the embedding concatenation, adapters, output projection, no MLP, GQA, RoPE); the
uses of one block share its parameters while each has its own adapters and projection, and the block computes
what the docstring says; packed rows stay apart and remat trains; the accounting formulas equal the real counts;
LoRA and quantization reach the shared projections; the Mamba-2 dt clamp (``dt_floor``, Zamba2's time_step_min)
holds in every path; and each misuse is one ConfigError naming the field.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.finetune.lora import LoraSpec, target_paths
from slm_jax.mixers.registry import build_mixer
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM
from slm_jax.models.shared_block import build_shared_block
from slm_jax.quant.params import linear_paths

BASE = {
    "vocab_size": 31,
    "d_model": 16,
    "n_heads": 4,
    "mlp": "none",
    "layer_pattern": ["mamba2"],
    "n_layers": 5,
    "mixers": {"mamba2": {"d_state": 8, "head_dim": 8, "chunk_size": 4, "dt_floor": 0.01}},
}
ZAMBA2 = {  # two blocks used in turn by three layers, everything on
    "n_blocks": 2,
    "layers": [1, 3, 4],
    "concat_embed": True,
    "mlp": "geglu_erf",
    "d_ff": 24,
    "attn_adapter_rank": 3,
    "mlp_adapter_rank": 2,
    "out_proj": True,
    "add_to": "mixer_input",
}
VARIANTS = {
    "zamba2": {},
    "residual_no_concat_no_adapters": {"concat_embed": False, "attn_adapter_rank": 0, "mlp_adapter_rank": 0},
    "attention_only_gqa_rope": {"mlp": "none", "out_proj": False, "n_blocks": 1, "layers": [0, 2]},
}
MODEL = {"attention_only_gqa_rope": {"n_kv_heads": 2, "position": "rope"}}


def _cfg(shared=None, **model):
    return config_from_dict({"model": {**BASE, "position": "none", **model, "shared_block": shared or {}}}).model


def _variant(name):
    return _cfg({**ZAMBA2, **VARIANTS[name]}, **MODEL.get(name, {}))


def _tokens(b=2, t=11):
    return jax.random.randint(jax.random.key(3), (b, t), 0, BASE["vocab_size"])


def _perturbed(model, toks, seed=1):
    """Params with every leaf moved off its init (zero adapter ``up`` kernels would hide mistakes)."""
    params = model.init(jax.random.key(0), toks)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_full_sequence_equals_prefill_plus_decode(name):
    cfg = _variant(name)
    lm, toks = CausalLM(cfg), _tokens()
    params = _perturbed(lm, toks)
    full, _ = lm.apply(params, toks)
    b, t = toks.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    cache = lm.init_cache(b, t)
    assert len(cache["shared"]) == len(cfg.shared_block.layers)  # one KV cache per use
    out, cache = lm.apply(params, toks[:, :6], pos[:, :6], cache)
    outs = [out]
    for i in range(6, t):
        out, cache = lm.apply(params, toks[:, i : i + 1], pos[:, i : i + 1], cache)
        outs.append(out)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=2e-5, rtol=1e-5)


def _rms(x, w, eps=1e-5):
    return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * w


def test_uses_share_the_block_and_keep_their_own_parameters():
    cfg = _variant("zamba2")
    lm, toks = CausalLM(cfg), _tokens(1, 5)
    params = _perturbed(lm, toks)
    shared = params["params"]["shared"]
    assert sorted(shared) == ["block_0", "block_1"]
    assert sorted(k for k in shared["block_0"] if k.startswith("use_")) == ["use_0", "use_2"]  # uses 0, 2 -> block 0
    assert sorted(k for k in shared["block_1"] if k.startswith("use_")) == ["use_1"]
    assert shared["block_0"]["attention"]["qkv"]["kernel"].shape == (32, 3 * 32)  # reads [x ; e], heads of 8
    # Use 2 (before layer 4) by hand: its adapters on q/k/v and the MLP, its projection, the block's weights.
    b, p = shared["block_0"], shared["block_0"]["use_2"]
    lr = lambda a, u: u @ a["down"]["kernel"] @ a["up"]["kernel"]
    u = jax.random.normal(jax.random.key(7), (1, 5, 32))
    h = _rms(u, b["attn_norm"]["scale"])
    delta = jnp.concatenate([lr(p[f"{n}_adapter"], h) for n in "qkv"], -1)
    block = build_shared_block(cfg, name=None)
    y, _ = block.apply({"params": b}, u, jnp.arange(5)[None], None, 2)
    qkv = h @ b["attention"]["qkv"]["kernel"] + delta
    q, k, v = (a.reshape(1, 5, 4, 8) for a in jnp.split(qkv, 3, -1))
    s = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(8) + jnp.triu(jnp.full((5, 5), -1e30), 1)
    a = jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(s, -1), v).reshape(1, 5, 32) @ b["attention"]["o"]["kernel"]
    g = _rms(a, b["mlp_norm"]["scale"])
    gate, up = jnp.split(g @ b["mlp"]["gate_up"]["kernel"] + lr(p["mlp_adapter"], g), 2, -1)
    want = (jax.nn.gelu(gate, approximate=False) * up) @ b["mlp"]["down"]["kernel"] @ p["proj"]["kernel"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_accounting_equals_real_counts(name):
    cfg = _variant(name)
    lm = CausalLM(cfg)
    params = lm.init(jax.random.key(0), _tokens(1, 4))
    assert accounting.param_count(cfg) == sum(a.size for a in jax.tree.leaves(params))
    plain = _cfg(**MODEL.get(name, {}))
    assert accounting.forward_flops_per_token(cfg, 64) > accounting.forward_flops_per_token(plain, 64)
    cache_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(lm.init_cache(1, 64)))
    assert accounting.decode_state_bytes(cfg, 1, 64) == cache_bytes


def test_packed_rows_and_remat():
    cfg = _cfg({**ZAMBA2, "layers": [1, 2]}, n_layers=3, remat=True)
    lm, toks = CausalLM(cfg), _tokens(2, 8)
    params = _perturbed(lm, toks)
    seg, pos = jnp.repeat(jnp.arange(2), 4)[None].repeat(2, 0), jnp.tile(jnp.arange(4), 2)[None].repeat(2, 0)
    packed, _ = lm.apply(params, toks, pos, segment_ids=seg)
    alone, _ = lm.apply(params, toks[:, 4:], pos[:, 4:])  # the second document by itself
    np.testing.assert_allclose(np.asarray(packed[:, 4:]), np.asarray(alone), atol=1e-5, rtol=1e-5)
    grads = jax.grad(lambda p: lm.apply(p, toks)[0].sum())(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["params"]["shared"]["block_0"]["use_0"]["q_adapter"]["up"]["kernel"]).sum()) > 0


def test_mamba2_dt_floor_clamps_every_path():
    """Zamba2's dt clamp (``mixers.mamba2.dt_floor``): the chunked path, the decode step and the reference agree."""
    cfg = _cfg(mixers={"mamba2": {**BASE["mixers"]["mamba2"], "dt_floor": 0.3}})
    mixer = build_mixer(cfg, "mamba2")
    x, pos = jax.random.normal(jax.random.key(2), (2, 9, 16)), jnp.broadcast_to(jnp.arange(9), (2, 9))
    params = mixer.init(jax.random.key(0), x, pos)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(4), a.shape), params)
    y_ref, _ = mixer.reference(params, x, pos)
    y, _ = mixer.apply(params, x, pos)
    cache, steps = mixer.init_cache(2, 9), []
    for i in range(9):
        out, cache = mixer.apply(params, x[:, i : i + 1], pos[:, i : i + 1], cache)
        steps.append(out)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(y_ref), atol=1e-5, rtol=1e-5)
    unclamped = mixer.clone(dt_floor=0.0).apply(params, x, pos)[0]
    assert float(jnp.abs(unclamped - y).max()) > 1e-3  # the clamp is active at 0.3


def test_lora_and_quantization_reach_the_shared_projections():
    cfg = _variant("zamba2")
    paths = linear_paths(cfg)
    assert ("shared", "block_0", "attention", "qkv") in paths and ("shared", "block_1", "use_1", "proj") in paths
    chosen = target_paths(cfg, LoraSpec(rank=2, targets=r"shared/block_\d+/attention/qkv$"))
    assert chosen == ["shared/block_0/attention/qkv", "shared/block_1/attention/qkv"]


@pytest.mark.parametrize(
    "shared, model, key",
    [
        ({"layers": [1, 9]}, {}, "model.shared_block.layers"),
        ({"layers": [3, 1]}, {}, "model.shared_block.layers"),
        ({"n_blocks": 3, "layers": [1, 2]}, {}, "n_blocks"),
        ({}, {"scan_layers": True}, "model.scan_layers"),
        ({}, {"cache_quant": "int8"}, "model.cache_quant"),
        ({"add_to": "stream"}, {}, "model.shared_block.add_to"),
        ({"mlp": "relu3"}, {}, "model.shared_block.mlp"),
        ({"attn_adapter_rank": -1}, {}, "model.shared_block.attn_adapter_rank"),
        ({"concat_embed": False}, {"n_heads": 3, "head_dim": 8}, "model.shared_block.head_dim"),
        ({"n_blocks": -1}, {}, "model.shared_block.n_blocks"),
    ],
)
def test_misuse_names_the_field(shared, model, key):
    with pytest.raises(ConfigError, match=key):
        _cfg({**ZAMBA2, **shared}, **model)
