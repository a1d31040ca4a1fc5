"""Conversion without torch: safetensors I/O, exact export -> import round trips, tokenizers, errors, CLI."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.config import config_from_dict
from slm_jax.data.tokenizers import ByteTokenizer, CharTokenizer
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.interop.convert import export_hf, import_hf
from slm_jax.interop.hf_tokenizer import HFTokenizer, hf_tokenizer_json
from slm_jax.interop.safetensors_io import read_checkpoint, read_safetensors, write_checkpoint, write_safetensors
from slm_jax.models.lm import CausalLM

MODELS = {  # our configs, one per export family
    "llama": {
        "preset": "transformer",
        "d_model": 48,
        "n_heads": 3,
        "n_kv_heads": 1,
        "qkv_bias": True,
        "tie_embeddings": False,
    },
    "qwen2": {
        "preset": "transformer",
        "layer_pattern": ["attention", "local_attention"],
        "mixers": {"local_attention": {"window": 8}},
        "n_kv_heads": 2,
    },
    "qwen3": {
        "preset": "transformer",
        "qk_norm": True,
        "head_dim": 16,
        "rope_scaling": {"kind": "linear", "factor": 2.0},
    },
    "phi3": {"preset": "transformer", "rotary_fraction": 0.5, "tie_embeddings": False},
    "gemma": {"preset": "transformer", "mlp": "geglu", "norm_offset": 1.0, "embed_scale": float(np.float32(64**0.5))},
    "mamba": {"preset": "mamba", "tie_embeddings": False},
    "mamba2": {"preset": "mamba2", "mixers": {"mamba2": {"d_state": 8, "head_dim": 16, "n_groups": 2}}},
    "recurrent_gemma": {
        "preset": "griffin",
        "mlp": "geglu",
        "norm_offset": 1.0,
        "embed_scale": 8.0,
        "logit_softcap": 30.0,
        "rotary_fraction": 0.5,
        "n_kv_heads": 1,
        "mixers": {"rglru": {"bias": True, "reset_at_zero": True}},
        "mlp_bias": True,
        "attn_out_bias": True,
    },
}


def test_family_inference():
    from slm_jax.interop.convert import infer_family

    expected = {"llama": "qwen2"}  # q/k/v biases without an output bias: Qwen2's layout
    for family in MODELS:
        assert infer_family(_cfg(family).model) == expected.get(family, family)


def _cfg(family):
    return config_from_dict({"model": {"n_layers": 3, "d_model": 64, "vocab_size": 50, **MODELS[family]}})


def _random_params(cfg):
    params = CausalLM(cfg.model).init(jax.random.key(0), np.zeros((1, 4), np.int32))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _write_hf(directory, hf_config, tensors, **kw):
    write_checkpoint(directory, tensors, **kw)
    (directory / "config.json").write_text(json.dumps(hf_config))


@pytest.mark.parametrize("family", list(MODELS))
def test_export_import_is_exact(family, tmp_path):
    cfg = _cfg(family)
    params = _random_params(cfg)
    hf_config, tensors = export_hf(cfg, params, family)
    _write_hf(tmp_path, hf_config, tensors)
    cfg2, params2 = import_hf(tmp_path)
    ours = lambda c, p: np.asarray(CausalLM(c.model).apply(p, np.arange(12).reshape(2, 6) % 50)[0])
    np.testing.assert_array_equal(ours(cfg, params), ours(cfg2, params2))


def test_safetensors_bf16_and_shards(tmp_path):
    tensors = {f"w{i}": np.arange(6 * (i + 1), dtype=np.float32).reshape(-1, 2) for i in range(5)}
    tensors["bf"] = np.linspace(-1, 1, 8).astype(ml_dtypes.bfloat16)
    files = write_checkpoint(tmp_path, tensors, max_shard_bytes=64)
    assert "model.safetensors.index.json" in files and len(files) > 2
    back = read_checkpoint(tmp_path)
    assert set(back) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(np.asarray(back[k], np.float32), np.asarray(tensors[k], np.float32))
        assert back[k].dtype == tensors[k].dtype
    write_safetensors(tmp_path / "one.safetensors", {"x": np.ones((2, 3), np.float16)}, {"format": "pt"})
    assert read_safetensors(tmp_path / "one.safetensors")["x"].dtype == np.float16


@pytest.mark.parametrize("tok", [CharTokenizer.from_text("\n !,.?abcdeéz"), ByteTokenizer()], ids=["char", "byte"])
def test_tokenizer_export_matches(tok):
    hf = HFTokenizer(hf_tokenizer_json(tok))
    text = "a b, c.\nzé?" if tok.name == "char" else "héllo, wörld\n\t✓"
    np.testing.assert_array_equal(hf.encode(text), tok.encode(text))
    assert hf.decode(tok.encode(text)) == text


def test_unsupported_fields_are_named(tmp_path):
    cfg = _cfg("llama")
    hf_config, tensors = export_hf(cfg, _random_params(cfg), "llama")
    cases = [
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters.rope_type"),
        ({"some_new_option": 3}, "some_new_option"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"auto_map": {"AutoModel": "x.Y"}}, "auto_map"),
        ({"model_type": "gpt2"}, "gpt2"),
    ]
    for patch, needle in cases:
        d = tmp_path / needle.replace(".", "_")
        _write_hf(d, {**hf_config, **patch}, tensors)
        with pytest.raises(CheckpointError, match=needle):
            import_hf(d)
    _write_hf(
        tmp_path / "extra", hf_config, {**tensors, "model.layers.0.self_attn.extra.weight": np.zeros(2, np.float32)}
    )
    with pytest.raises(CheckpointError, match="extra.weight"):
        import_hf(tmp_path / "extra")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(hf_config))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickle"):
        import_hf(pickled)


def test_export_refuses_inexpressible_configs():
    cfg = _cfg("qwen3")
    with pytest.raises(ConfigError, match="model.qk_norm"):
        export_hf(cfg, _random_params(cfg), family="llama")
    cfg = _cfg("qwen2")
    with pytest.raises(ConfigError, match="model.mixers.local_attention.window"):
        export_hf(cfg, _random_params(cfg), family="llama")


def test_cli_import_then_generate_and_export(tmp_path, capsys):
    cfg = _cfg("llama")
    hf_config, tensors = export_hf(cfg, _random_params(cfg), "llama")
    hf_dir = tmp_path / "hf"
    _write_hf(hf_dir, hf_config, tensors)
    (hf_dir / "tokenizer.json").write_text(hf_tokenizer_json(CharTokenizer("".join(chr(97 + i) for i in range(26)))))
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "run")]) == 0
    assert (
        main(["generate", str(tmp_path / "run"), "--prompt", "abc", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    )
    assert capsys.readouterr().out.splitlines()[-1].startswith("abc")
    assert main(["convert", "to-hf", str(tmp_path / "run"), str(tmp_path / "out"), "--max-shard-mb", "0.05"]) == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    exported = read_checkpoint(tmp_path / "out")
    assert set(exported) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(exported[k], tensors[k])
    assert main(["convert", "from-hf", str(tmp_path / "nowhere"), str(tmp_path / "run2")]) == 2
