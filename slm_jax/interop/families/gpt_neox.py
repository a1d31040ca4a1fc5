"""GPT-NeoX (``GPTNeoXForCausalLM``: GPT-NeoX-20B, Pythia; Black et al. 2022, arXiv:2204.06745) <-> ``transformer``.

The block is x + attn(ln1(x)) + mlp(ln2(x)) with ``use_parallel_residual`` (our ``parallel_residual``),
else the usual sequential pre-norm block; LayerNorms with biases (``norm: layer``, ``norm_bias``),
partial rotary (``rotary_pct``, default 0.25 -> ``rotary_fraction``), a non-gated exact-GELU MLP with
biases (``mlp: gelu``, ``mlp_bias``), one ``attention_bias`` flag for the fused q/k/v and the output
projection, multi-head attention only, and an untied head by default.

Tensor names (torch [out, in] weights; ours are [in, out]):
  gpt_neox.embed_in.weight [v, d]                        -> embed/embedding
  gpt_neox.layers.i.input_layernorm.{weight,bias}        -> layers_i/mixer_norm/{scale,bias}
  gpt_neox.layers.i.attention.query_key_value [3d, d]    -> layers_i/mixer/qkv: rows per head (q_j, k_j, v_j)
      there, (all q, all k, all v) here: reshape [h, 3, e] <-> [3, h, e]
  gpt_neox.layers.i.attention.dense                      -> layers_i/mixer/o
  gpt_neox.layers.i.post_attention_layernorm             -> layers_i/mlp_norm
  gpt_neox.layers.i.mlp.dense_h_to_4h, dense_4h_to_h     -> layers_i/mlp/up, mlp/down
  gpt_neox.final_layer_norm                              -> final_norm
  embed_out.weight (lm_head.weight in transformers 5)    -> head/kernel
Older checkpoints also store ``attention.bias`` / ``masked_bias`` (causal masks) and
``rotary_emb.inv_freq``: buffers, recomputed, never read.
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.hf_config import (
    HFConfig,
    read_rope,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
    write_rope,
)
from slm_jax.interop.hf_weights import Tensors, f32, head_from_hf, linear_in, linear_out

ARCHITECTURE = "GPTNeoXForCausalLM"
_HEAD = "embed_out.weight"  # the hub's name; transformers 5 renames it to lm_head.weight on load


# --------------------------------------------------------------------------- import


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a GPT-NeoX ``config.json``."""
    d, h = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    if d % h:
        raise unsupported(c, "hidden_size", d, f"it must be divisible by num_attention_heads ({h})")
    for key in ("rope_theta", "partial_rotary_factor"):  # transformers' GPT-NeoX never reads them at the top level
        if c.has(key):
            raise unsupported(
                c, key, c.raw[key], "transformers' GPT-NeoX ignores it there; give it in rope_parameters instead"
            )
    rope = read_rope(
        c, default_fraction=float(c.get("rotary_pct", 0.25)), default_theta=float(c.get("rotary_emb_base", 10000.0))
    )
    if rope["rope_scaling"]["kind"] != "none":
        raise unsupported(
            c, "rope_parameters.rope_type", rope["rope_scaling"]["kind"], "GPT-NeoX is converted with default RoPE"
        )
    c.expect("hidden_act", ("gelu",), "gelu", "slm_jax implements GPT-NeoX's MLP with exact GELU only")
    c.ignore("classifier_dropout")  # the sequence-classification head only
    bias = bool(c.get("attention_bias", True))
    return {
        "preset": "transformer",
        "layer_pattern": ["attention"],
        "n_layers": int(c.get("num_hidden_layers")),
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": h,
        "head_dim": d // h,
        "vocab_size": int(c.get("vocab_size")),
        "d_ff": int(c.get("intermediate_size")),
        "mlp": "gelu",
        "mlp_bias": True,
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "norm": "layer",
        "norm_bias": True,
        "norm_eps": float(c.get("layer_norm_eps", 1e-5)),
        "parallel_residual": bool(c.get("use_parallel_residual", True)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        **rope,
    }


def _heads_to_blocks(a: np.ndarray, h: int) -> np.ndarray:
    """Fused q/k/v rows ordered [h, (q, k, v), e] (GPT-NeoX) -> [(q, k, v), h, e] (ours); any trailing axes."""
    return np.ascontiguousarray(a.reshape(h, 3, -1, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape))


def _blocks_to_heads(a: np.ndarray, h: int) -> np.ndarray:
    """Inverse of ``_heads_to_blocks``."""
    return np.ascontiguousarray(a.reshape(3, h, -1, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape))


def _norm(t: Tensors, name: str, d: int) -> dict:
    return {"scale": t.take(name + ".weight", (d,)), "bias": t.take(name + ".bias", (d,))}


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a GPT-NeoX checkpoint."""
    del raw
    d, h, f, v = m.d_model, m.n_heads, m.ff_width, m.vocab_size
    p: dict = {"embed": {"embedding": t.take("gpt_neox.embed_in.weight", (v, d))}}
    for i in range(m.n_layers):
        pre = f"gpt_neox.layers.{i}."
        t.skip(pre + "attention.bias")  # an old causal-mask buffer
        qkv = _heads_to_blocks(t.take(pre + "attention.query_key_value.weight", (3 * d, d)), h)
        attn: dict = {
            "qkv": {"kernel": linear_in(qkv)},
            "o": {"kernel": linear_in(t.take(pre + "attention.dense.weight", (d, d)))},
        }
        if m.qkv_bias:
            attn["qkv"]["bias"] = _heads_to_blocks(t.take(pre + "attention.query_key_value.bias", (3 * d,)), h)
        if m.attn_out_bias:
            attn["o"]["bias"] = t.take(pre + "attention.dense.bias", (d,))
        mlp = {
            "up": {
                "kernel": linear_in(t.take(pre + "mlp.dense_h_to_4h.weight", (f, d))),
                "bias": t.take(pre + "mlp.dense_h_to_4h.bias", (f,)),
            },
            "down": {
                "kernel": linear_in(t.take(pre + "mlp.dense_4h_to_h.weight", (d, f))),
                "bias": t.take(pre + "mlp.dense_4h_to_h.bias", (d,)),
            },
        }
        p[f"layers_{i}"] = {
            "mixer_norm": _norm(t, pre + "input_layernorm", d),
            "mixer": attn,
            "mlp_norm": _norm(t, pre + "post_attention_layernorm", d),
            "mlp": mlp,
        }
    p["final_norm"] = _norm(t, "gpt_neox.final_layer_norm", d)
    head = _HEAD if t.has(_HEAD) else "lm_head.weight"
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"], head))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that GPT-NeoX cannot express."""
    del family
    other = "export it as another family (--family) or retrain without it"
    free = {"mlp_bias": None, "qkv_bias": None, "attn_out_bias": None, "rotary_fraction": None}
    require_decoder(m, ARCHITECTURE, {"attention"}, norm="layer", mlp="gelu", **free)
    require_exportable(m.kv_heads == m.n_heads, "n_kv_heads", m.n_kv_heads, ARCHITECTURE, "it has no GQA; " + other)
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, ARCHITECTURE, other)
    require_block_options(m, ARCHITECTURE, parallel_residual=None)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt_neox",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "hidden_act": "gelu",
        "layer_norm_eps": m.norm_eps,
        "use_parallel_residual": m.parallel_residual,
        "attention_bias": bool(m.qkv_bias or m.attn_out_bias),
        "tie_word_embeddings": m.tie_embeddings,
        # GPT-NeoX's own default is 0.25, so the factor is always written
        "rope_parameters": {**write_rope(m), "partial_rotary_factor": m.rotary_fraction},
        "dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``; biases we lack are written as exact zeros."""
    del family
    p, d, h = params["params"], m.d_model, m.n_heads
    bias = lambda module, n: f32(module.get("bias", np.zeros(n)))
    out = {"gpt_neox.embed_in.weight": f32(p["embed"]["embedding"])}
    norms = {"final_layer_norm": p["final_norm"]}
    for i in range(m.n_layers):
        layer, pre = p[f"layers_{i}"], f"gpt_neox.layers.{i}."
        attn, mlp = layer["mixer"], layer["mlp"]
        out[pre + "attention.query_key_value.weight"] = _blocks_to_heads(linear_out(attn["qkv"]["kernel"]), h)
        out[pre + "attention.dense.weight"] = linear_out(attn["o"]["kernel"])
        if m.qkv_bias or m.attn_out_bias:
            out[pre + "attention.query_key_value.bias"] = _blocks_to_heads(bias(attn["qkv"], 3 * d), h)
            out[pre + "attention.dense.bias"] = bias(attn["o"], d)
        out[pre + "mlp.dense_h_to_4h.weight"] = linear_out(mlp["up"]["kernel"])
        out[pre + "mlp.dense_h_to_4h.bias"] = bias(mlp["up"], m.ff_width)
        out[pre + "mlp.dense_4h_to_h.weight"] = linear_out(mlp["down"]["kernel"])
        out[pre + "mlp.dense_4h_to_h.bias"] = bias(mlp["down"], d)
        norms[f"layers.{i}.input_layernorm"] = layer["mixer_norm"]
        norms[f"layers.{i}.post_attention_layernorm"] = layer["mlp_norm"]
    for name, norm in norms.items():
        out[f"gpt_neox.{name}.weight"] = f32(norm["scale"])
        out[f"gpt_neox.{name}.bias"] = bias(norm, d)
    if not m.tie_embeddings:
        out[_HEAD] = linear_out(p["head"]["kernel"])
    return out
