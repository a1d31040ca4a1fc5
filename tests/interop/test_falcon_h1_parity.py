"""Falcon-H1 (attention and Mamba-2 side by side in every layer, muP multipliers) both directions against
transformers' own model, through our ``attention+mamba2`` parallel layers.

Tiny random models (no download): GQA with attention biases, every multiplier far from 1 (folded into the weights
on import, written as 1 on export), untied; and a tied model with a head width that is not hidden / heads, one
key/value head and one (B, C) group. Unsupported Falcon-H1 options are refused naming the field. Needs the
``interop`` extra.
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
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "FalconH1Config", CASES[case], tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("mamba_rms_norm", False),
        ("mamba_norm_before_gate", True),
        ("mamba_d_ssm", 48),
        ("projectors_bias", True),
        ("mamba_proj_bias", True),
        ("time_step_limit", (0.0, 1.0)),
        ("lm_head_multiplier", 0.0),
    ],
)
def test_import_refuses_unsupported_options_by_name(field, value, tmp_path):
    kwargs = {**CASES["falcon_h1_gqa_multipliers"], field: value}
    if field == "mamba_d_ssm":
        kwargs["mamba_n_heads"] = 3  # 48 / 3 = 16 per head
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
