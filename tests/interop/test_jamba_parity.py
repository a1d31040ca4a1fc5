"""Jamba (Mamba with dt/B/C norms + attention without position encoding, mixture-of-experts every other layer)
both directions against transformers' own model.

Tiny random models (no download): attention and expert layers at different periods and offsets, 4 experts top-2
(unnormalised softmax weights), GQA, tied and untied heads, explicit and "auto" dt rank. Needs the ``interop``
extra.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, infer_family  # noqa: E402
from tests.interop.parity import assert_round_trip  # noqa: E402

MAMBA = {"mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2}
CASES = {
    # attention at 1 and 4, experts at 0, 2, 4; untied
    "jamba_moe_untied": {
        "hidden_size": 32,
        "intermediate_size": 24,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "attn_layer_period": 3,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 0,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
        **MAMBA,
    },
    # attention at 2; no experts (num_experts 1: dense MLPs); tied; dt rank given; no conv bias
    "jamba_dense_tied": {
        "hidden_size": 24,
        "intermediate_size": 40,
        "num_hidden_layers": 3,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "attn_layer_period": 4,
        "attn_layer_offset": 2,
        "num_experts": 1,
        "tie_word_embeddings": True,
        "mamba_dt_rank": 3,
        "mamba_conv_bias": False,
        **MAMBA,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "JambaConfig", CASES[case], tmp_path)


def test_export_refuses_what_jamba_cannot_express():
    model = {
        "layer_pattern": ["mamba", "attention"],
        "n_layers": 4,
        "d_model": 32,
        "n_heads": 4,
        "vocab_size": 50,
        "position": "none",
        "mixers": {"mamba": {"dt_bc_norms": True}},
    }
    cfg = config_from_dict({"model": model})
    assert infer_family(cfg.model) == "jamba"
    with pytest.raises(ConfigError, match="position"):
        export_hf(config_from_dict({"model": {**model, "position": "rope"}}), {}, "jamba")
    with pytest.raises(ConfigError, match="layer_pattern"):  # attention at 1 and 2 of 4: not periodic
        export_hf(
            config_from_dict({"model": {**model, "layer_pattern": ["mamba", "attention", "attention", "mamba"]}}),
            {},
            "jamba",
        )
    with pytest.raises(ConfigError, match="moe.normalize_top_k"):
        moe = {"n_experts": 4, "top_k": 2, "normalize_top_k": True}
        export_hf(config_from_dict({"model": {**model, "moe": moe}}), {}, "jamba")
    with pytest.raises(ConfigError, match="dt_bc_norms"):  # plain Mamba has no such norms
        export_hf(config_from_dict({"model": {**model, "layer_pattern": ["mamba"], "mlp": "none"}}), {}, "mamba")
