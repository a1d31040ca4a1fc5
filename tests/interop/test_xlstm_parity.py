"""xLSTM (NX-AI xLSTM-7B layout: mLSTM blocks with a SwiGLU FFN, logit soft cap) both directions against
transformers' own model.

Tiny random models (no download): separate and fused weights (``weight_mode``), chunk sizes that make
transformers run its chunkwise kernel plus its recurrent remainder (chunk 8 and 5 over 24 tokens and an
8-token prompt) or its recurrent kernel alone (chunk 64), query/key and value widths of different factors,
FFN widths from the projection factor and rounding, soft caps away from their defaults, and
``tie_word_embeddings`` (inert there). Every input-gate bias is raised by 10 so that the input gates are
strong and the stabiliser m switches between its two branches. Needs the ``interop`` extra.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from slm_jax.interop.convert import export_hf, import_hf, infer_family  # noqa: E402
from slm_jax.interop.safetensors_io import read_checkpoint, write_checkpoint  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402
from tests.interop import parity  # noqa: E402

CASES = {
    # h = 4: key width 16, value width 32; FFN 128 * 1.5 = 192; chunkwise over 24 = 3 x 8 tokens
    "xlstm_single_chunked": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_heads": 4,
        "chunk_size": 8,
        "ffn_proj_factor": 1.5,
        "ffn_round_up_to_multiple_of": 16,
    },
    # "tied" (inert), recurrent kernel only (chunk 64 > 24), default FFN rounding (2.667 * 64 -> 192), caps 5 and 10
    "xlstm_tied_recurrent": {
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_heads": 2,
        "qk_dim_factor": 1.0,
        "tie_word_embeddings": True,
        "gate_soft_cap": 5.0,
        "output_logit_soft_cap": 10.0,
    },
    # value width 2 x d (e = 128 per head), chunk 5: 20 tokens chunkwise + 4 recurrent; FFN 64 * 1.3 -> 96
    "xlstm_wide_values_odd_chunk": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_heads": 1,
        "qk_dim_factor": 1.0,
        "v_dim_factor": 2.0,
        "chunk_size": 5,
        "ffn_proj_factor": 1.3,
        "ffn_round_up_to_multiple_of": 32,
        "eps": 1e-4,
        "norm_eps": 1e-5,
    },
}


@pytest.fixture(autouse=True)
def strong_input_gates(monkeypatch):
    """transformers initialises input-gate biases at -10 (weak gates): raise them so the mLSTM state moves."""
    make = parity.hf_model

    def hf_model(cls_name, kwargs, causal_lm="AutoModelForCausalLM"):
        model = make(cls_name, kwargs, causal_lm)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("igate_preact.bias"):
                    p.add_(10.0)
        return model

    monkeypatch.setattr(parity, "hf_model", hf_model)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_parity(case, tmp_path):
    parity.assert_round_trip(case, "xLSTMConfig", CASES[case], tmp_path)


FUSED = {  # weight_mode "fused" tensor -> the single-mode tensors of its rows, in order (modeling_xlstm.py)
    "mlstm_layer.qkv_opreact.weight": tuple(f"mlstm_layer.{n}.weight" for n in ("q", "k", "v", "ogate_preact")),
    "mlstm_layer.ifgate_preact.weight": ("mlstm_layer.igate_preact.weight", "mlstm_layer.fgate_preact.weight"),
    "mlstm_layer.ifgate_preact.bias": ("mlstm_layer.igate_preact.bias", "mlstm_layer.fgate_preact.bias"),
    "ffn.proj_up_gate_z.weight": ("ffn.proj_up_gate.weight", "ffn.proj_up.weight"),
}


def test_fused_weights_import(tmp_path):
    """weight_mode "fused" (xLSTM-7B's files): transformers cannot build such a model (its init fails on the
    fused gate bias), so the single-weight model's tensors are fused here and must give its logits."""
    model = parity.hf_model("xLSTMConfig", CASES["xlstm_single_chunked"])
    model.save_pretrained(tmp_path / "single")
    tensors = read_checkpoint(tmp_path / "single")
    for i in range(model.config.num_hidden_layers):
        pre = f"backbone.blocks.{i}."
        for fused, parts in FUSED.items():
            tensors[pre + fused] = np.concatenate([tensors.pop(pre + part) for part in parts])
    (tmp_path / "fused").mkdir()
    write_checkpoint(tmp_path / "fused", tensors)
    config = json.loads((tmp_path / "single" / "config.json").read_text())
    (tmp_path / "fused" / "config.json").write_text(json.dumps({**config, "weight_mode": "fused"}))
    cfg, params = import_hf(tmp_path / "fused")
    tokens = np.random.RandomState(0).randint(0, parity.VOCAB, (2, parity.SEQ))
    ours = np.asarray(CausalLM(cfg.model).apply(params, tokens)[0])
    diff = float(np.abs(ours - parity.hf_logits(model, tokens)).max())
    print(f"\nxlstm_fused_import: max |logit diff| HF -> ours {diff:.2e}")
    assert diff <= parity.TOL


MODEL = {"preset": "mlstm", "n_layers": 2, "d_model": 64, "n_heads": 2, "vocab_size": 50, "logit_softcap": 30.0}
MLSTM = {"qk_dim_factor": 1.0, "v_dim_factor": 1.0}


def _cfg(**fields):
    model = {**MODEL, "mixers": {"mlstm": {**MLSTM, **fields.pop("mlstm", {})}}, **fields}
    return config_from_dict({"model": model})


def test_export_refuses_what_xlstm_cannot_express():
    assert infer_family(_cfg().model) == "xlstm"
    with pytest.raises(ConfigError, match="mixers.mlstm.qk_dim_factor"):  # 64 * 0.5 = 32: the HF cache rounds to 64
        export_hf(_cfg(mlstm={"qk_dim_factor": 0.5}), {}, "xlstm")
    with pytest.raises(ConfigError, match="mixers.mlstm.gate_soft_cap"):
        export_hf(_cfg(mlstm={"gate_soft_cap": 0.0}), {}, "xlstm")
    with pytest.raises(ConfigError, match="logit_softcap"):
        export_hf(_cfg(logit_softcap=0.0), {}, "xlstm")
    with pytest.raises(ConfigError, match="mlp_bias"):
        export_hf(_cfg(mlp_bias=True), {}, "xlstm")
    with pytest.raises(ConfigError, match="post_norms"):
        export_hf(_cfg(post_norms=True), {}, "xlstm")


def test_export_ffn_width_and_tied_head(tmp_path):
    """Odd and awkward MLP widths come back exactly; a tied model's embedding table becomes lm_head."""
    import jax

    for d_ff in (100, 97, 192):
        cfg = _cfg(d_ff=d_ff, tie_embeddings=True)
        params = CausalLM(cfg.model).init(jax.random.key(0), np.zeros((1, 4), np.int32))
        hf, tensors = export_hf(cfg, params, "xlstm")
        c = transformers.xLSTMConfig(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type")})
        assert transformers.xLSTMForCausalLM(c).backbone.blocks[0].ffn.proj_down.in_features == d_ff
        np.testing.assert_array_equal(tensors["lm_head.weight"], tensors["backbone.embeddings.weight"])


def test_import_refuses_unsupported_fields(tmp_path):
    """use_bias (biased RMSNorms and projections), contradicting alias fields, heads not dividing the width and a
    zero soft cap fail naming the field."""
    model = parity.hf_model("xLSTMConfig", {"hidden_size": 64, "num_hidden_layers": 1, "num_heads": 2})
    model.save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    original = json.loads(config.read_text())
    refused = {
        "use_bias": True,
        "embedding_dim": 32,
        "num_blocks": 3,
        "weight_mode": "x",
        "num_heads": 3,
        "output_logit_soft_cap": 0.0,
    }
    for field, value in refused.items():
        config.write_text(json.dumps({**original, field: value}))
        with pytest.raises(CheckpointError, match=field):
            import_hf(tmp_path)
