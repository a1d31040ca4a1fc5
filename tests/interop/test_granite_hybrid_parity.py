"""Granite 4.0-H (Mamba-2 + attention, mixture-of-experts + shared MLP, muP-style multipliers) both directions
against transformers' own model.

Tiny random models (no download): 4 experts top-2 with a shared expert on every layer, GQA, RoPE, embedding /
attention / residual / logit multipliers far from 1, attention biases; and the dense variant (no experts: the
shared MLP alone) without position embeddings (``nope``), tied. Needs the ``interop`` extra.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, infer_family  # noqa: E402
from tests.interop.parity import assert_round_trip  # noqa: E402

MAMBA = {"mamba_n_heads": 4, "mamba_d_state": 8, "mamba_expand": 2, "mamba_chunk_size": 8, "mamba_n_groups": 2}
CASES = {
    "granite_moe_rope": {
        "hidden_size": 32,
        "intermediate_size": 16,
        "shared_intermediate_size": 24,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "layer_types": ["mamba", "attention", "mamba"],
        "position_embedding_type": "rope",
        "embedding_multiplier": 3.0,
        "attention_multiplier": 0.3,
        "residual_multiplier": 0.5,
        "logits_scaling": 2.5,
        "attention_bias": True,
        **MAMBA,
    },
    "granite_dense_nope_tied": {
        "hidden_size": 24,
        "shared_intermediate_size": 40,
        "num_local_experts": 0,
        "num_hidden_layers": 3,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
        "layer_types": ["attention", "mamba", "attention"],
        "residual_multiplier": 0.7,
        "tie_word_embeddings": True,
        **MAMBA,
        "mamba_n_heads": 6,
        "mamba_n_groups": 1,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "GraniteMoeHybridConfig", CASES[case], tmp_path)


def test_export_refuses_what_granite_cannot_express():
    model = {"layer_pattern": ["mamba2", "attention"], "n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": 50}
    moe = {"n_experts": 4, "top_k": 2, "normalize_top_k": True, "d_shared": 64}
    cfg = config_from_dict({"model": {**model, "moe": moe}})
    assert infer_family(cfg.model) == "granitemoehybrid"
    with pytest.raises(ConfigError, match="moe.period"):
        export_hf(config_from_dict({"model": {**model, "moe": {**moe, "period": 2}}}), {}, "granitemoehybrid")
    with pytest.raises(ConfigError, match="moe.normalize_top_k"):
        export_hf(
            config_from_dict({"model": {**model, "moe": {**moe, "normalize_top_k": False}}}), {}, "granitemoehybrid"
        )
    half_rope = {**model, "rotary_fraction": 0.5}  # Bamba's
    with pytest.raises(ConfigError, match="moe.n_experts"):  # a family without experts refuses them by name
        export_hf(config_from_dict({"model": {**half_rope, "moe": moe}}), {}, "bamba")
    with pytest.raises(ConfigError, match="residual_scale"):
        export_hf(config_from_dict({"model": {**half_rope, "residual_scale": 0.5}}), {}, "bamba")
