"""Zamba2 (Mamba-2 layers + weight-shared attention blocks with per-use adapters) both directions against
transformers' own model.

Tiny random models (no download): two shared blocks used in turn by three hybrid layers, with q/k/v and MLP
adapters and RoPE; one shared block used twice, GQA, no RoPE, SiLU MLP, untied head (transformers then stores
one copy of the block per use), attention adapters off. Options we do not implement are refused by field name,
on import and on export. Needs the ``interop`` extra.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, from_hf, infer_family  # noqa: E402
from tests.interop.parity import assert_round_trip, hf_model  # noqa: E402

MAMBA = {"mamba_d_state": 8, "n_mamba_heads": 4, "mamba_ngroups": 2, "chunk_size": 8}
CASES = {
    "zamba2_two_blocks_adapters_rope": {
        "hidden_size": 16,
        "num_hidden_layers": 5,
        "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid", "hybrid"],
        "num_attention_heads": 4,
        "num_mem_blocks": 2,
        "use_shared_attention_adapter": True,
        "adapter_rank": 3,
        "intermediate_size": 24,
        "use_mem_rope": True,
        **MAMBA,
    },
    "zamba2_one_block_gqa_nope_untied": {
        "hidden_size": 24,
        "num_hidden_layers": 4,
        "layers_block_type": ["hybrid", "mamba", "hybrid", "mamba"],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_mem_blocks": 1,
        "adapter_rank": 2,
        "intermediate_size": 20,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        **MAMBA,
        "mamba_ngroups": 1,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    assert_round_trip(case, "Zamba2Config", CASES[case], tmp_path)


@pytest.mark.parametrize("field, value", [("rms_norm_eps", 1e-6), ("add_bias_linear", True)])
def test_import_refuses_what_we_do_not_implement(field, value, tmp_path):
    hf_model("Zamba2Config", {**CASES["zamba2_one_block_gqa_nope_untied"], field: value}).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=field):
        from_hf(tmp_path, tmp_path / "run")


def test_export_refuses_what_zamba2_cannot_express():
    shared = {"n_blocks": 1, "layers": [1], "concat_embed": True, "mlp": "geglu_erf", "d_ff": 32, "out_proj": True}
    shared |= {"mlp_adapter_rank": 2, "add_to": "mixer_input"}
    model = {"layer_pattern": ["mamba2"], "n_layers": 2, "d_model": 16, "n_heads": 4, "head_dim": 8, "mlp": "none"}
    model |= {
        "vocab_size": 50,
        "attn_scale": 0.5,
        "position": "none",
        "mixers": {"mamba2": {"head_dim": 8, "dt_floor": 0.001}},
    }
    cfg = lambda **kw: config_from_dict({"model": {**model, "shared_block": {**shared, **kw}}})
    assert infer_family(cfg().model) == "zamba2"
    with pytest.raises(ConfigError, match="shared_block.add_to"):
        export_hf(cfg(add_to="residual"), {}, "zamba2")
    with pytest.raises(ConfigError, match="shared_block.concat_embed"):
        export_hf(cfg(concat_embed=False, head_dim=8), {}, "zamba2")
    with pytest.raises(ConfigError, match="shared_block.mlp_adapter_rank"):
        export_hf(cfg(mlp_adapter_rank=0), {}, "zamba2")
    with pytest.raises(ConfigError, match="shared_block.attn_adapter_rank"):
        export_hf(cfg(attn_adapter_rank=5), {}, "zamba2")
    mixers = {"mamba2": {"head_dim": 8, "dt_floor": 0.001, "gate_norm": "before_gate"}}
    with pytest.raises(ConfigError, match="mixers.mamba2.gate_norm"):
        export_hf(config_from_dict({"model": {**model, "mixers": mixers, "shared_block": shared}}), {}, "zamba2")
    with pytest.raises(ConfigError, match="mixers.mamba2.dt_floor"):
        plain = {**model, "mixers": {"mamba2": {"head_dim": 8}}, "shared_block": shared}
        export_hf(config_from_dict({"model": plain}), {}, "zamba2")
    with pytest.raises(ConfigError, match="attn_scale"):
        export_hf(config_from_dict({"model": {**model, "attn_scale": 0.3, "shared_block": shared}}), {}, "zamba2")
