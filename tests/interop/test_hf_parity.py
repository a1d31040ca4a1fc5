"""Hugging Face parity: tiny random models built with ``transformers`` in the test (no download).

For every family: save with ``save_pretrained`` -> ``slm convert from-hf`` -> logits equal on a
fixed batch; -> ``slm convert to-hf`` -> ``from_pretrained`` loads every tensor and gives the
same logits; greedy generation of 32 tokens equals ``transformers``' ``generate``. The configs
exercise GQA/MQA, odd head counts, tied and untied embeddings, biases, partial rotary, RoPE
scaling, sliding windows shorter than the batch, attention and final soft-capping that bite,
Gemma 2's sandwich norms and GPT-NeoX's parallel and sequential residuals. A case's key is its
name; the family is the config's ``model_type``. Needs the ``interop`` extra (torch,
transformers); skipped without it.
"""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, from_hf  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402
from tests.interop.parity import assert_round_trip, hf_model  # noqa: E402

_ROPE_LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

CASES = {
    # odd head count (3), GQA 3:1, untied, llama3 RoPE scaling, attention and MLP biases; sharded save
    "llama": (
        "LlamaConfig",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_key_value_heads=1,
            rope_parameters=_ROPE_LLAMA3,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
        ),
    ),
    # GQA 4:2, tied, q/k/v biases, full + sliding layers (window 8)
    "qwen2": (
        "Qwen2Config",
        dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=1,
        ),
    ),
    # q/k norm, MQA with 3 heads, head_dim 16 != d / h, untied, linear RoPE scaling, all layers sliding
    "qwen3": (
        "Qwen3Config",
        dict(
            hidden_size=40,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=16,
            tie_word_embeddings=False,
            use_sliding_window=True,
            sliding_window=6,
            max_window_layers=0,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        ),
    ),
    # fused qkv and gate_up, partial rotary 0.5, sliding window 8, GQA 4:2, untied
    "phi3": (
        "Phi3Config",
        dict(
            hidden_size=64,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=8,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
    ),
    # sqrt(d) embedding scale, (1 + w) norms, GeGLU, head_dim 32 > d / h, MQA, tied
    "gemma": (
        "GemmaConfig",
        dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            tie_word_embeddings=True,
        ),
    ),
    # GQA 4:2, tied, 3 layers (sliding, full, sliding; window 6), scale 1/sqrt(24) != 1/sqrt(head_dim),
    # attention cap 1 and final cap 3 well inside the score and logit ranges, attention biases
    "gemma2": (
        "Gemma2Config",
        dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=1.0,
            final_logit_softcapping=3.0,
            sliding_window=6,
            attention_bias=True,
            tie_word_embeddings=True,
        ),
    ),
    # MQA, head_dim 32 > d / h, untied, no caps, 2 layers full then sliding (window 5)
    "gemma2_untied_uncapped": (
        "Gemma2Config",
        dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            query_pre_attn_scalar=32,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            layer_types=["full_attention", "sliding_attention"],
            sliding_window=5,
            tie_word_embeddings=False,
        ),
    ),
    # parallel residual, partial rotary 0.25 (the GPT-NeoX default), 3 layers, untied, biases
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4),
    ),
    # sequential residual, rotary 0.5, tied, no attention biases, odd head count
    "gpt_neox_sequential_tied": (
        "GPTNeoXConfig",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=3,
            use_parallel_residual=False,
            attention_bias=False,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
        ),
    ),
    "mamba": (
        "MambaConfig",
        dict(hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4, tie_word_embeddings=True),
    ),
    # two B/C groups, untied
    "mamba2": (
        "Mamba2Config",
        dict(
            hidden_size=32,
            state_size=8,
            num_hidden_layers=2,
            expand=2,
            num_heads=8,
            head_dim=8,
            n_groups=2,
            chunk_size=8,
            tie_word_embeddings=False,
        ),
    ),
    # recurrent, recurrent, local attention (window 8, MQA), lru width != d, tied, soft-capped
    "recurrent_gemma": (
        "RecurrentGemmaConfig",
        dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            lru_width=48,
            attention_window_size=8,
            logits_soft_cap=30.0,
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    cls_name, kwargs = CASES[case]
    assert_round_trip(case, cls_name, kwargs, tmp_path, shard=case == "llama")


@pytest.mark.parametrize(
    "case,patch,field",
    [
        ("gemma2", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ("gemma2", {"hidden_activation": "relu"}, "hidden_activation"),
        ("gemma2", {"sliding_window": None}, "sliding_window"),
        ("gemma2", {"layer_types": ["full_attention", "chunked_attention", "full_attention"]}, "layer_types"),
        ("gpt_neox", {"hidden_act": "gelu_new"}, "hidden_act"),
        ("gpt_neox", {"rope_theta": 500.0}, "rope_theta"),
        ("gpt_neox", {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_parameters.rope_type"),
    ],
)
def test_unsupported_option_is_named_and_nothing_written(case, patch, field, tmp_path):
    hf_dir, run_dir = tmp_path / "hf", tmp_path / "run"
    hf_model(*CASES[case]).save_pretrained(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **patch}))
    with pytest.raises(CheckpointError, match=field):
        from_hf(hf_dir, run_dir)
    assert list(tmp_path.iterdir()) == [hf_dir]  # no run directory, no temporary left behind


def test_stray_tensor_is_named(tmp_path):
    """A tensor the converter does not map (here a GPT-NeoX layer with an extra norm) stops the import."""
    hf_dir = tmp_path / "hf"
    hf_model(*CASES["gpt_neox"]).save_pretrained(hf_dir)
    tensors = load_file(hf_dir / "model.safetensors")
    tensors["gpt_neox.layers.0.extra_layernorm.weight"] = np.ones(64, np.float32)
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="extra_layernorm"):
        from_hf(hf_dir, tmp_path / "run")


@pytest.mark.parametrize(
    "model,family,field",
    [
        ({"post_norms": True, "norm_offset": 1.0, "mlp": "geglu", "embed_scale": 8.0}, "gemma", "model.post_norms"),
        ({"attn_softcap": 5.0}, "llama", "model.attn_softcap"),
        ({"attn_scale": 0.3}, "gemma2", "model.attn_scale"),  # 0.3 ** -2 is no integer query_pre_attn_scalar
        ({"parallel_residual": True}, "llama", "model.parallel_residual"),
        ({"norm": "layer", "mlp": "gelu", "n_kv_heads": 2}, "gpt_neox", "model.n_kv_heads"),
        ({"norm": "layer", "mlp": "gelu", "attn_softcap": 5.0}, "gpt_neox", "model.attn_softcap"),
        ({"mlp": "gelu"}, "gpt_neox", "model.norm"),
    ],
)
def test_export_names_what_the_family_cannot_express(model, family, field):
    base = {"d_model": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 50}
    if family == "gemma2":
        model = {**model, "post_norms": True, "norm_offset": 1.0, "mlp": "geglu", "embed_scale": 8.0}
    cfg = config_from_dict({"model": {**base, **model}})
    params = CausalLM(cfg.model).init(jax.random.key(0), np.zeros((1, 4), np.int32))
    with pytest.raises(ConfigError, match=field):
        export_hf(cfg, params, family)
