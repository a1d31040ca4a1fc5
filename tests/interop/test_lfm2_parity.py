"""LFM2 (short gated convolutions + attention with qk norm) both directions against transformers' own model.

Tiny random models (no download): GQA, tied and untied heads, conv biases, an irregular layer pattern from
``layer_types`` and from the older ``full_attn_idxs``, and the MLP width adjustment
(``block_auto_adjust_ff_dim`` with a multiplier and rounding). Needs the ``interop`` extra; skipped without it.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, infer_family  # noqa: E402
from slm_jax.interop.families import lfm2  # noqa: E402
from slm_jax.interop.hf_config import HFConfig  # noqa: E402
from tests.interop.parity import assert_round_trip  # noqa: E402

BASE = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 72}
CASES = {
    # conv, conv, attention, conv, attention; tied; ff 72 -> int(2 * 72 / 3) = 48, rounded up to 16: 48
    "lfm2_tied_gqa": {
        **BASE,
        "num_hidden_layers": 5,
        "layer_types": ["conv", "conv", "full_attention", "conv", "full_attention"],
        "block_multiple_of": 16,
    },
    # attention first via full_attn_idxs; untied; conv biases; 4-tap conv; ff 72 -> 48 * 1.3 = 62 -> 64 (of 32)
    "lfm2_untied_bias": {
        **BASE,
        "num_key_value_heads": 1,
        "num_hidden_layers": 4,
        "full_attn_idxs": [0, 3],
        "tie_word_embeddings": False,
        "conv_bias": True,
        "conv_L_cache": 4,
        "block_ffn_dim_multiplier": 1.3,
        "block_multiple_of": 32,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "Lfm2Config", CASES[case], tmp_path)


def test_mlp_width_follows_transformers():
    for kwargs in CASES.values():
        hf = transformers.Lfm2Config(vocab_size=11, **kwargs)
        ours = lfm2.config_from_hf(HFConfig({**hf.to_dict(), "model_type": "lfm2"}, "config.json"))
        assert ours["d_ff"] == transformers.Lfm2ForCausalLM(hf).model.layers[0].feed_forward.w1.out_features


def test_export_refuses_what_lfm2_cannot_express():
    model = {"preset": "lfm2_like", "n_layers": 3, "d_model": 32, "n_heads": 4, "vocab_size": 50}
    cfg = config_from_dict({"model": model})
    assert infer_family(cfg.model) == "lfm2"
    bad = config_from_dict({"model": {**model, "mixers": {"attention": {"window": 4}}}})
    with pytest.raises(ConfigError, match="layer_pattern"):
        export_hf(bad, {}, "lfm2")
    with pytest.raises(ConfigError, match="qk_norm"):
        export_hf(config_from_dict({"model": {**model, "qk_norm": False}}), {}, "lfm2")
