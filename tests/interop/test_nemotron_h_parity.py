"""Nemotron-H (single-op layers: Mamba-2, attention without RoPE, squared-ReLU MLP) both directions against
transformers' own model.

Tiny random models (no download): the M-*- period with GQA, untied; mixture-of-experts layers with group-limited,
scaled, bias-steered routing, and unnormalised top-3 routing; an odd, non-repeating layer order with MQA,
its own attention head width, MLP biases and ``tie_word_embeddings`` (inert in transformers), written in the older
``hybrid_override_pattern`` form; and a case whose Mamba-2 width is not 2 x hidden_size. Needs the ``interop`` extra.
"""

import jax
import jax.numpy as jnp
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, from_hf, infer_family  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402
from tests.interop import parity  # noqa: E402
from tests.interop.parity import assert_round_trip, hf_model  # noqa: E402

MAMBA = {"mamba_num_heads": 4, "mamba_head_dim": 16, "ssm_state_size": 8, "n_groups": 2, "chunk_size": 8}
CASES = {
    "nemotron_h_gqa": {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "layers_block_type": ["linear_attention", "mlp", "full_attention", "mlp"] * 2,
        **MAMBA,
    },
    "nemotron_h_odd_order_mqa_tied_bias": {
        "hidden_size": 24,
        "intermediate_size": 40,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "head_dim": 12,  # not hidden_size / heads
        "hybrid_override_pattern": "M*--M-*M",
        "mlp_bias": True,
        "tie_word_embeddings": True,  # transformers' Nemotron-H keeps lm_head apart all the same
        **MAMBA,
        "mamba_num_heads": 6,
        "mamba_head_dim": 8,
        "n_groups": 1,
    },
    "nemotron_h_moe_grouped": {  # 8 experts in 4 groups, the best 2 groups, scaled weights; score bias perturbed
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "layers_block_type": ["linear_attention", "moe", "full_attention", "mlp", "moe"],
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "routed_scaling_factor": 2.5,
        "moe_intermediate_size": 16,
        "moe_shared_expert_intermediate_size": 24,
        **MAMBA,
    },
    "nemotron_h_moe_unnormalized": {
        "hidden_size": 24,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 12,
        "hybrid_override_pattern": "ME*E-",
        "n_routed_experts": 4,
        "num_experts_per_tok": 3,
        "norm_topk_prob": False,
        "moe_intermediate_size": 8,
        "moe_shared_expert_intermediate_size": 16,
        **MAMBA,
        "mamba_num_heads": 6,
        "mamba_head_dim": 8,
    },
    "nemotron_h_wide_mamba": {
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "layers_block_type": ["full_attention", "linear_attention", "mlp"],
        **MAMBA,  # 4 heads x 16 = 64 = 4 x hidden_size
    },
}


def _with_score_bias(cls_name, kwargs, causal_lm="AutoModelForCausalLM"):
    """``hf_model`` with the routers' ``e_score_correction_bias`` buffers perturbed too (they start at 0, which
    would leave the bias's part in the choice untested)."""
    model = hf_model(cls_name, kwargs, causal_lm)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.add_(0.3 * torch.randn_like(b))
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "hf_model", _with_score_bias)
    assert_round_trip(case, "NemotronHConfig", CASES[case], tmp_path)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"moe_latent_size": 8}, "moe_latent_size"),
        ({"mlp_bias": True}, "mlp_bias"),  # our experts have no biases
        ({"mlp_hidden_act": "silu"}, "mlp_hidden_act"),
        ({"time_step_limit": [0.0, 1.0]}, "time_step_limit"),
        ({"mamba_num_heads": 3}, "mamba_num_heads"),  # 3 x 16 is no multiple of hidden_size 32
    ],
)
def test_import_refuses_what_slm_jax_lacks_by_field(change, field, tmp_path):
    hf_model("NemotronHConfig", {**CASES["nemotron_h_moe_grouped"], **change}).save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=field):
        from_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_export_refuses_what_nemotron_h_cannot_express():
    model = {
        "layer_pattern": ["mamba2", "mlp", "attention", "mlp"],
        "n_layers": 4,
        "d_model": 32,
        "n_heads": 4,
        "vocab_size": 50,
        "mlp": "relu2",
        "mixer_mlp": False,
        "position": "none",
    }
    cfg = config_from_dict({"model": model})
    assert infer_family(cfg.model) == "nemotron_h"
    params = CausalLM(cfg.model).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    hf_config, tensors = export_hf(cfg, params, "nemotron_h")  # the baseline exports
    assert hf_config["layers_block_type"] == ["linear_attention", "mlp", "full_attention", "mlp"]
    assert "backbone.layers.1.mixer.up_proj.weight" in tensors
    for change, field in (
        ({"mixer_mlp": True}, "mixer_mlp"),
        ({"mlp": "swiglu"}, "mlp"),
        ({"position": "rope"}, "position"),
        ({"residual_scale": 0.5}, "residual_scale"),
        ({"layer_pattern": ["mamba2", "mlp", "gla", "mlp"]}, "layer_pattern"),
        ({"moe": {"n_experts": 4, "layers": [1], "d_shared": 8}}, "moe.routing"),  # softmax routing
        ({"moe": {"n_experts": 4, "layers": [1], "routing": "sigmoid"}}, "moe.d_shared"),  # no shared expert
    ):
        with pytest.raises(ConfigError, match=field):
            export_hf(config_from_dict({"model": {**model, **change}}), {}, "nemotron_h")
