"""Bamba (Mamba-2 + attention, a SwiGLU MLP in every block) both directions against transformers' own model.

Tiny random models (no download): GQA, tied and untied heads, attention and MLP biases, two Mamba-2 groups,
attention at irregular layers, RoPE on half of each head (transformers fixes it). Needs the ``interop`` extra.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, infer_family  # noqa: E402
from tests.interop.parity import assert_round_trip  # noqa: E402

MAMBA = {"mamba_n_heads": 4, "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 8}
CASES = {
    # mamba2, attention, mamba2, mamba2; untied; 2 groups of (B, C); chunk 8 < the 24-token batch
    "bamba_untied_groups": {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "attn_layer_indices": [1],
        **MAMBA,
        "mamba_n_groups": 2,
    },
    # attention first and last; tied; MQA; attention and MLP biases; mamba_d_head given
    "bamba_tied_biases": {
        "hidden_size": 24,
        "intermediate_size": 40,
        "num_hidden_layers": 3,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "attn_layer_indices": [0, 2],
        "tie_word_embeddings": True,
        "attention_bias": True,
        "mlp_bias": True,
        **MAMBA,
        "mamba_n_heads": 6,
        "mamba_d_head": 8,
        "mamba_conv_bias": False,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "BambaConfig", CASES[case], tmp_path)


def test_export_refuses_what_bamba_cannot_express():
    model = {"layer_pattern": ["mamba2", "attention"], "n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": 50}
    cfg = config_from_dict({"model": {**model, "rotary_fraction": 0.5}})
    assert infer_family(cfg.model) == "bamba"
    with pytest.raises(ConfigError, match="rotary_fraction"):
        export_hf(config_from_dict({"model": model}), {}, "bamba")
    with pytest.raises(ConfigError, match="layer_pattern"):
        export_hf(config_from_dict({"model": {**model, "layer_pattern": ["mamba", "attention"]}}), {}, "bamba")
