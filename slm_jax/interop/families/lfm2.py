"""LFM2 (``Lfm2ForCausalLM``, Liquid AI 2025, arXiv:2511.23404) <-> our ``short_conv`` + ``attention`` layers.

Each layer is x + op(operator_norm(x)), then x + mlp(ffn_norm(x)), where op is LFM2's double-gated short
convolution (``layer_types[i] == "conv"``: mixers/short_conv.py, whose docstring maps its tensors) or
grouped-query attention with RMSNorm on each head's queries and keys (our ``qk_norm``); the final norm is named
``embedding_norm`` although it follows the last layer. The SwiGLU MLP's width is ``intermediate_size`` after
``block_auto_adjust_ff_dim``: 2/3 of it, times ``block_ffn_dim_multiplier``, rounded up to
``block_multiple_of``; export writes the width itself with the adjustment off.

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.embed_tokens.weight [v, d]                 -> embed/embedding
  model.layers.i.operator_norm, ffn_norm           -> layers_i/mixer_norm, mlp_norm
  model.layers.i.conv.{in_proj, out_proj}          -> layers_i/mixer/{in_proj, out_proj}
  model.layers.i.conv.conv.weight [d, 1, L]        -> layers_i/mixer/conv_kernel [L, d]
  model.layers.i.self_attn.{q,k,v}_proj            -> layers_i/mixer/qkv (concatenated on the output axis)
  model.layers.i.self_attn.out_proj                -> layers_i/mixer/o
  model.layers.i.self_attn.{q,k}_layernorm [e]     -> layers_i/mixer/{q,k}_norm
  model.layers.i.feed_forward.{w1, w3}, w2         -> layers_i/mlp/gate_up (w1 = gate first), mlp/down
  model.embedding_norm, lm_head.weight             -> final_norm, head/kernel
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.hf_config import (
    EXPORT_TAIL,
    HFConfig,
    compress_pattern,
    read_rope,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
    write_rope,
)
from slm_jax.interop.hf_weights import (
    Tensors,
    conv_in,
    conv_out,
    ends_to_hf,
    f32,
    head_from_hf,
    linear_from_hf,
    linear_in,
    linear_out,
)

ARCHITECTURE = "Lfm2ForCausalLM"
_LAYER_TYPES = {"conv": "short_conv", "full_attention": "attention"}


def _ff_width(c: HFConfig) -> int:
    """The MLP width transformers' Lfm2MLP builds from ``intermediate_size`` (module docstring)."""
    f = int(c.get("intermediate_size", 12288))
    if not c.get("block_auto_adjust_ff_dim", True):
        c.ignore("block_ffn_dim_multiplier", "block_multiple_of")
        return f
    f = int(2 * f / 3)
    multiplier, multiple = c.get("block_ffn_dim_multiplier", 1.0), int(c.get("block_multiple_of", 256))
    if multiplier is not None:
        f = int(multiplier * f)
        f = multiple * ((f + multiple - 1) // multiple)
    return f


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for an LFM2 ``config.json``."""
    n_layers, d = int(c.get("num_hidden_layers", 32)), int(c.get("hidden_size", 2560))
    h = int(c.get("num_attention_heads", 32))
    if d % h:
        raise unsupported(c, "hidden_size", d, f"it must be divisible by num_attention_heads ({h})")
    types = c.get("layer_types", None)
    if types is None:  # the older field: attention at these indices, conv elsewhere
        full = c.get("full_attn_idxs", None)
        full = range(n_layers) if full is None else full
        types = ["full_attention" if i in full else "conv" for i in range(n_layers)]
    else:
        c.ignore("full_attn_idxs")
    if len(types) != n_layers or any(t not in _LAYER_TYPES for t in types):
        raise unsupported(c, "layer_types", types, f"it needs {n_layers} entries, each conv or full_attention")
    rope = read_rope(c, default_theta=1_000_000.0)
    if rope["rope_scaling"]["kind"] != "none" or rope["rotary_fraction"] != 1.0:
        raise unsupported(c, "rope_parameters", c.raw.get("rope_parameters"), "LFM2 is converted with full RoPE")
    bias = bool(c.get("conv_bias", False))
    return {
        "preset": "lfm2_like",
        "layer_pattern": compress_pattern([_LAYER_TYPES[t] for t in types]),
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", 8)),
        "head_dim": d // h,
        "vocab_size": int(c.get("vocab_size", 65536)),
        "d_ff": _ff_width(c),
        "mlp": "swiglu",
        "qk_norm": True,
        "norm_eps": float(c.get("norm_eps", 1e-5)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", True)),
        "mixers": {"short_conv": {"conv_width": int(c.get("conv_L_cache", 3)), "bias": bias}},
        **rope,
    }


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from an LFM2 checkpoint."""
    del raw
    d, h, k, e, f, v = m.d_model, m.n_heads, m.kv_heads, m.attn_head_dim, m.ff_width, m.vocab_size
    bias, width = m.mixers.short_conv.bias, m.mixers.short_conv.conv_width
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre = f"model.layers.{i}."
        if name == "short_conv":
            c = pre + "conv."
            mixer = {
                "in_proj": linear_from_hf(t, c + "in_proj", (3 * d, d), bias),
                "conv_kernel": conv_in(t.take(c + "conv.weight", (d, 1, width))),
                "out_proj": linear_from_hf(t, c + "out_proj", (d, d), bias),
            }
            if bias:
                mixer["conv_bias"] = t.take(c + "conv.bias", (d,))
        else:
            a = pre + "self_attn."
            shapes = {"q": (h * e, d), "k": (k * e, d), "v": (k * e, d)}
            qkv = np.concatenate([t.take(f"{a}{n}_proj.weight", s) for n, s in shapes.items()], axis=0)
            mixer = {
                "qkv": {"kernel": linear_in(qkv)},
                "o": {"kernel": linear_in(t.take(a + "out_proj.weight", (d, h * e)))},
                "q_norm": {"scale": t.take(a + "q_layernorm.weight", (e,))},
                "k_norm": {"scale": t.take(a + "k_layernorm.weight", (e,))},
            }
        ff = pre + "feed_forward."
        gate_up = np.concatenate([t.take(ff + "w1.weight", (f, d)), t.take(ff + "w3.weight", (f, d))], axis=0)
        p[f"layers_{i}"] = {
            "mixer_norm": {"scale": t.take(pre + "operator_norm.weight", (d,))},
            "mixer": mixer,
            "mlp_norm": {"scale": t.take(pre + "ffn_norm.weight", (d,))},
            "mlp": {
                "gate_up": {"kernel": linear_in(gate_up)},
                "down": {"kernel": linear_in(t.take(ff + "w2.weight", (d, f)))},
            },
        }
    p["final_norm"] = {"scale": t.take("model.embedding_norm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that LFM2 cannot express."""
    del family
    require_decoder(m, ARCHITECTURE, {"short_conv", "attention"}, qk_norm=True)
    other = "export it as another family (--family) or retrain without it"
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, ARCHITECTURE, other)
    require_block_options(m, ARCHITECTURE)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "lfm2",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "block_auto_adjust_ff_dim": False,  # the width above is the MLP's own
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "layer_types": ["conv" if name == "short_conv" else "full_attention" for name in m.layers],
        "conv_L_cache": m.mixers.short_conv.conv_width,
        "conv_bias": m.mixers.short_conv.bias,
        "norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_parameters": write_rope(m),
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``."""
    del family
    p, h, k, e = params["params"], m.n_heads, m.kv_heads, m.attn_head_dim
    bias = m.mixers.short_conv.bias
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.embedding_norm.weight")
    for i, name in enumerate(m.layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        mixer = layer["mixer"]
        if name == "short_conv":
            for proj in ("in_proj", "out_proj"):
                out[f"{pre}conv.{proj}.weight"] = linear_out(mixer[proj]["kernel"])
                if bias:
                    out[f"{pre}conv.{proj}.bias"] = f32(mixer[proj]["bias"])
            out[pre + "conv.conv.weight"] = conv_out(mixer["conv_kernel"])
            if bias:
                out[pre + "conv.conv.bias"] = f32(mixer["conv_bias"])
        else:
            qkv = linear_out(mixer["qkv"]["kernel"])
            for n, w in zip("qkv", np.split(qkv, np.cumsum([h * e, k * e]))):
                out[f"{pre}self_attn.{n}_proj.weight"] = w
            out[pre + "self_attn.out_proj.weight"] = linear_out(mixer["o"]["kernel"])
            out[pre + "self_attn.q_layernorm.weight"] = f32(mixer["q_norm"]["scale"])
            out[pre + "self_attn.k_layernorm.weight"] = f32(mixer["k_norm"]["scale"])
        gate, up = np.split(linear_out(layer["mlp"]["gate_up"]["kernel"]), 2)
        out[pre + "feed_forward.w1.weight"], out[pre + "feed_forward.w3.weight"] = gate, up
        out[pre + "feed_forward.w2.weight"] = linear_out(layer["mlp"]["down"]["kernel"])
        out[pre + "operator_norm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "ffn_norm.weight"] = f32(layer["mlp_norm"]["scale"])
    return out
