"""OLMo hybrid (Gated DeltaNet with negative eigenvalues + attention with OLMo 2's reordered norms and qk norms over
all heads) both directions against transformers' own model.

Tiny random models (no download): no position encoding (the released checkpoints) and RoPE, GQA, attention
biases, key/value head counts and widths of their own in the Gated DeltaNet, tied and untied. Needs the
``interop`` extra.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, infer_family  # noqa: E402
from slm_jax.interop.families import olmo_hybrid  # noqa: E402
from tests.interop.parity import assert_round_trip  # noqa: E402

COMMON = {
    "hidden_size": 32,
    "intermediate_size": 40,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 6,
    "linear_conv_kernel_dim": 3,
}
CASES = {
    "olmo_hybrid_nope": {
        **COMMON,
        "num_hidden_layers": 4,
        "layer_types": ["linear_attention"] * 3 + ["full_attention"],
        "rope_parameters": {"rope_type": "default", "rope_theta": None},  # as released: no RoPE
    },
    "olmo_hybrid_rope_tied_bias": {
        **COMMON,
        "num_hidden_layers": 3,
        "layer_types": ["full_attention", "linear_attention", "full_attention"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
        "tie_word_embeddings": True,
        "attention_bias": True,
        "linear_allow_neg_eigval": False,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "OlmoHybridConfig", CASES[case], tmp_path)


def test_export_refuses_what_olmo_hybrid_cannot_express():
    model = {
        "layer_pattern": ["gated_deltanet", "attention"],
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 4,
        "vocab_size": 50,
        "qk_norm": True,
        "qk_norm_all_heads": True,
        "reordered_norms": ["attention"],
        "mixers": {"gated_deltanet": {"conv_bias": False, "norm_eps": 1e-5}},
    }
    cfg = lambda **kw: config_from_dict({"model": {**model, **kw}})
    assert infer_family(cfg().model) == "olmo_hybrid"
    olmo_hybrid.check_exportable(cfg().model, "olmo_hybrid")  # the layout itself passes
    with pytest.raises(ConfigError, match="model.reordered_norms"):
        export_hf(cfg(reordered_norms=[]), {}, "olmo_hybrid")
    with pytest.raises(ConfigError, match="model.qk_norm_all_heads"):
        export_hf(cfg(qk_norm_all_heads=False), {}, "olmo_hybrid")
    with pytest.raises(ConfigError, match="mixers.gated_deltanet.norm_eps"):
        export_hf(cfg(mixers={"gated_deltanet": {"conv_bias": False}}), {}, "olmo_hybrid")
    with pytest.raises(ConfigError, match="model.reordered_norms"):  # other families refuse the block by name
        export_hf(cfg(layer_pattern=["attention"], qk_norm_all_heads=False), {}, "llama")
