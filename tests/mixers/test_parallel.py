"""Parallel layers (``attention+mamba2``, mixers/parallel.py) in whole models.

The mixer contract (reference == parallel == prefill == decode, gradients, declarations, packed rows) runs on
``attention+mamba2`` in test_contract.py; here: a model of parallel and plain layers decodes to its full-sequence
logits unrolled and under ``scan_layers`` (stacked caches of composite dicts) and with an int8 KV cache, the
parameter count formula is exact, LoRA finds the parts' projections, an encoder sums its parts, and bad names fail
at config load with the fix.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict, replace
from slm_jax.errors import ConfigError
from slm_jax.finetune.lora import LoraSpec, target_paths
from slm_jax.mixers.registry import build_mixer
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, stack_layers
from slm_jax.quant.params import linear_paths, quantize_params
from tests.models.test_lm import decode_logits, tokens

MODEL = {
    "vocab_size": 37,
    "d_model": 48,
    "n_heads": 4,
    "n_kv_heads": 2,
    "n_layers": 4,
    "layer_pattern": ["attention+mamba2", "mamba2"],
    "mixers": {"mamba2": {"d_state": 8, "head_dim": 16, "chunk_size": 8}},
}


def model_cfg(**fields):
    return config_from_dict({"model": {**MODEL, **fields}})


def test_decode_equals_full_sequence_unrolled_and_scanned():
    cfg = model_cfg()
    toks = tokens()
    params = CausalLM(cfg.model).init(jax.random.key(0), toks)
    assert accounting.param_count(cfg.model) == sum(p.size for p in jax.tree.leaves(params))
    assert set(params["params"]["layers_0"]["mixer"]) == {"attention", "mamba2"}
    ref, _ = CausalLM(cfg.model).apply(params, toks)
    stepped, cache = decode_logits(CausalLM(cfg.model), params, toks, split=5)
    np.testing.assert_allclose(stepped, ref, rtol=1e-5, atol=1e-5)
    assert {"attention/k", "attention/v", "mamba2/h", "mamba2/conv"} <= set(cache["layers"][0])
    scan_cfg = replace(cfg, **{"model.scan_layers": True}).model
    stacked = stack_layers(params, scan_cfg)
    np.testing.assert_allclose(CausalLM(scan_cfg).apply(stacked, toks)[0], ref, rtol=1e-5, atol=1e-5)
    stepped, _ = decode_logits(CausalLM(scan_cfg), stacked, toks, split=1)
    np.testing.assert_allclose(stepped, ref, rtol=1e-5, atol=1e-5)


def test_int8_kv_cache_quantizes_the_attention_part_only():
    cfg = model_cfg(cache_quant="int8_kv").model
    cache = CausalLM(cfg).init_cache(2, 21)
    leaf = cache["layers"][0]
    assert leaf["attention/k"].q.dtype == jnp.int8 and leaf["mamba2/h"].dtype == jnp.float32
    toks = tokens()
    params = CausalLM(cfg).init(jax.random.key(1), toks)
    ref, _ = CausalLM(cfg).apply(params, toks)
    stepped, _ = decode_logits(CausalLM(cfg), params, toks, split=3)
    np.testing.assert_allclose(stepped, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_lora_and_int8_weights_find_every_parts_projections():
    cfg = model_cfg().model
    found = set(target_paths(cfg, LoraSpec()))
    for target in ("attention/qkv", "attention/o", "mamba2/in_proj", "mamba2/out_proj"):
        assert f"layers_0/mixer/{target}" in found
    assert "layers_1/mixer/in_proj" in found
    toks = tokens()
    params = CausalLM(cfg).init(jax.random.key(5), toks)
    paths = linear_paths(cfg)
    assert ("layers_0", "mixer", "mamba2", "in_proj") in paths
    quantized = quantize_params(params, paths, 8)
    q_cfg = replace(config_from_dict({"model": MODEL}), **{"model.quant.bits": 8}).model
    ref, _ = CausalLM(cfg).apply(params, toks)
    out, _ = CausalLM(q_cfg).apply(quantized, toks)
    np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_encoder_layer_is_the_sum_of_its_parts():
    cfg = model_cfg(causal=False, layer_pattern=["attention+mamba2"]).model
    both, attn, ssm = (build_mixer(cfg, n) for n in ("attention+mamba2", "attention", "mamba2"))
    x = jax.random.normal(jax.random.key(2), (2, 9, 48))
    pos, lengths = jnp.broadcast_to(jnp.arange(9), (2, 9)), jnp.array([9, 6])
    params = both.init(jax.random.key(3), x, pos, None, lengths)["params"]
    y, _ = both.apply({"params": params}, x, pos, None, lengths)
    parts = attn.apply({"params": params["attention"]}, x, pos, None, lengths)[0]
    parts = parts + ssm.apply({"params": params["mamba2"]}, x, pos, None, lengths)[0]
    np.testing.assert_allclose(y, parts, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "pattern,message",
    [
        (["attention+mamba3"], "Unknown mixer 'mamba3' in the parallel layer 'attention\\+mamba3'"),
        (["mamba2+mamba2"], "names a mixer twice"),
    ],
)
def test_bad_parallel_names_fail_at_config_load(pattern, message):
    with pytest.raises(ConfigError, match=message):
        model_cfg(layer_pattern=pattern)
