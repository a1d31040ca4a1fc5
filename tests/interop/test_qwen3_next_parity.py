"""Qwen3-Next and Qwen3.5's text model (Gated DeltaNet + gated attention, (1 + w) norms, partial RoPE; Qwen3-Next's
fused projections and experts with a gated shared expert) both directions against transformers' own models.

Tiny random models (no download): GQA attention with a head width other than d_model / n_heads, Gated DeltaNet
with two key heads feeding four value heads of another width, odd layer patterns, tied and untied embeddings,
experts on some layers only (``mlp_only_layers``). Needs the ``interop`` extra.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, infer_family  # noqa: E402
from tests.interop.parity import assert_round_trip  # noqa: E402

COMMON = {
    "hidden_size": 32,
    "intermediate_size": 24,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 6,
    "linear_conv_kernel_dim": 3,
}
CASES = {
    "qwen3_5_text_untied": (
        "Qwen3_5TextConfig",
        {**COMMON, "num_hidden_layers": 3, "layer_types": ["linear_attention", "full_attention", "linear_attention"]},
    ),
    "qwen3_5_text_tied_mha": (
        "Qwen3_5TextConfig",
        {
            **COMMON,
            "num_key_value_heads": 4,
            "num_hidden_layers": 4,
            "tie_word_embeddings": True,
            "rope_parameters": {  # as Qwen3.5 checkpoints write it, multimodal sections included
                "rope_type": "default",
                "rope_theta": 500.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
        },
    ),
    "qwen3_next_moe": (
        "Qwen3NextConfig",
        {
            **COMMON,
            "num_hidden_layers": 3,
            "layer_types": ["full_attention", "linear_attention", "linear_attention"],
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 12,
            "shared_expert_intermediate_size": 20,
            "mlp_only_layers": [1],
        },
    ),
    "qwen3_next_unnormalised_step2": (
        "Qwen3NextConfig",
        {
            **COMMON,
            "num_hidden_layers": 4,
            "layer_types": ["linear_attention", "linear_attention", "full_attention", "linear_attention"],
            "num_experts": 3,
            "num_experts_per_tok": 2,
            "norm_topk_prob": False,
            "decoder_sparse_step": 2,
            "moe_intermediate_size": 8,
            "shared_expert_intermediate_size": 16,
        },
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    cls_name, kwargs = CASES[case]
    assert_round_trip(case, cls_name, kwargs, tmp_path)


def test_multimodal_qwen3_5_imports_its_text_model(tmp_path):
    """A Qwen3_5ForConditionalGeneration checkpoint (text_config + a vision tower): our import equals its
    text-only logits and greedy tokens; the export is the text model, loaded by AutoModelForCausalLM."""
    text = {**COMMON, "num_hidden_layers": 4}
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 32}
    kwargs = {"text_config": text, "vision_config": vision}
    case = "qwen3_5_multimodal"
    assert_round_trip(
        case, "Qwen3_5Config", kwargs, tmp_path, causal_lm="Qwen3_5ForConditionalGeneration", exported_as="qwen3_5_text"
    )


def test_export_refuses_what_qwen3_next_cannot_express():
    model = {
        "layer_pattern": ["gated_deltanet", "attention"],
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 4,
        "vocab_size": 50,
        "qk_norm": True,
        "attn_output_gate": True,
        "norm_offset": 1.0,
        "rotary_fraction": 0.25,
        "norm_eps": 1e-6,
        "mixers": {"gated_deltanet": {"conv_bias": False}},
    }
    cfg = lambda **kw: config_from_dict({"model": {**model, **kw}})
    assert infer_family(cfg().model) == "qwen3_5_text"
    moe = {"n_experts": 4, "top_k": 2, "d_shared": 16, "shared_gate": True}
    assert infer_family(cfg(moe=moe).model) == "qwen3_next"
    with pytest.raises(ConfigError, match="mixers.gated_deltanet.conv_bias"):
        export_hf(cfg(mixers={"gated_deltanet": {"conv_bias": True}}), {}, "qwen3_5_text")
    with pytest.raises(ConfigError, match="attn_output_gate"):
        export_hf(cfg(attn_output_gate=False), {}, "qwen3_5_text")
    with pytest.raises(ConfigError, match="moe.n_experts"):  # Qwen3.5's dense text model has no experts
        export_hf(cfg(moe=moe), {}, "qwen3_5_text")
    with pytest.raises(ConfigError, match="moe.shared_gate"):
        export_hf(cfg(moe={**moe, "shared_gate": False}), {}, "qwen3_next")
    with pytest.raises(ConfigError, match="attn_output_gate"):  # the other families refuse the gate by name
        export_hf(cfg(layer_pattern=["attention"]), {}, "qwen3")
