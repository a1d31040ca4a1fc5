"""Falcon-H1 (attention and Mamba-2 side by side in every layer, muP multipliers) both directions against
transformers' own model, through our ``attention+mamba2`` parallel layers.

Tiny random models (no download): GQA with attention biases, every multiplier far from 1 (folded into the weights
on import, written as 1 on export), untied; and a tied model with a head width that is not hidden / heads, one
key/value head and one (B, C) group; the released checkpoints' Mamba-2 (transformers' defaults: no gated norm,
y * silu(z), and an inner width ``mamba_d_ssm`` of its own) and the norm-before-gate placement. Unsupported
Falcon-H1 options are refused naming the field. Needs the ``interop`` extra.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, from_hf, infer_family  # noqa: E402
from tests.interop.parity import assert_round_trip, hf_model  # noqa: E402

MAMBA = {
    "mamba_n_heads": 4,
    "mamba_d_state": 8,
    "mamba_expand": 2,
    "mamba_d_ssm": None,
    "mamba_chunk_size": 8,
    "mamba_n_groups": 2,
    "mamba_rms_norm": True,
    "mamba_norm_before_gate": False,
}
MULTIPLIERS = {
    "embedding_multiplier": 2.0,
    "lm_head_multiplier": 0.7,
    "key_multiplier": 1.3,
    "attention_in_multiplier": 0.8,
    "attention_out_multiplier": 1.5,
    "ssm_in_multiplier": 0.6,
    "ssm_out_multiplier": 1.2,
    "ssm_multipliers": [0.5, 1.5, 0.8, 1.3, 0.9],
    "mlp_multipliers": [1.4, 0.6],
}
CASES = {
    "falcon_h1_gqa_multipliers": {
        "hidden_size": 32,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "attention_bias": True,
        **MAMBA,
        **MULTIPLIERS,
    },
    "falcon_h1_tied_head_dim": {
        "hidden_size": 24,
        "intermediate_size": 40,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 8,  # 4 x 8 != 24: transformers reads the field (Falcon-H1 checkpoints set it)
        "tie_word_embeddings": True,
        **MAMBA,
        "mamba_n_heads": 6,
        "mamba_n_groups": 1,
    },
    "falcon_h1_released_mamba": {  # mamba_rms_norm false and mamba_d_ssm != mamba_expand * hidden_size
        "hidden_size": 32,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **MAMBA,
        "mamba_d_ssm": 48,  # 4 heads of 12, 2 groups
        "mamba_rms_norm": False,
        **MULTIPLIERS,
    },
    "falcon_h1_norm_before_gate": {
        "hidden_size": 32,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **MAMBA,
        "mamba_norm_before_gate": True,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "FalconH1Config", CASES[case], tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("projectors_bias", True),
        ("mamba_proj_bias", True),
        ("time_step_limit", (0.0, 1.0)),
        ("lm_head_multiplier", 0.0),
    ],
)
def test_import_refuses_unsupported_options_by_name(field, value, tmp_path):
    kwargs = {**CASES["falcon_h1_gqa_multipliers"], field: value}
    hf_model("FalconH1Config", kwargs).save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=field):
        from_hf(tmp_path / "hf", tmp_path / "run")


def test_export_refuses_what_falcon_h1_cannot_express():
    model = {"layer_pattern": ["attention+mamba2"], "n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": 50}
    assert infer_family(config_from_dict({"model": model}).model) == "falcon_h1"
    with pytest.raises(ConfigError, match="layer_pattern"):
        export_hf(config_from_dict({"model": {**model, "layer_pattern": ["attention+mamba2", "mamba2"]}}), {})
    with pytest.raises(ConfigError, match="residual_scale"):
        export_hf(config_from_dict({"model": {**model, "residual_scale": 0.5}}), {}, "falcon_h1")
    with pytest.raises(ConfigError, match="attn_out_bias"):
        export_hf(config_from_dict({"model": {**model, "qkv_bias": True}}), {}, "falcon_h1")
    hybrid = {**model, "layer_pattern": ["mamba2", "attention"], "rotary_fraction": 0.5}  # Bamba's layout
    for option, value in (("gate_norm", "none"), ("gate_norm", "before_gate"), ("d_inner", 96)):
        cfg = config_from_dict({"model": {**hybrid, "mixers": {"mamba2": {option: value, "head_dim": 16}}}})
        with pytest.raises(ConfigError, match=f"mixers.mamba2.{option}"):  # Bamba's Mamba-2 has neither
            export_hf(cfg, {}, "bamba")
