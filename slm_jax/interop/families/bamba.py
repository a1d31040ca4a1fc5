"""Bamba (``BambaForCausalLM``, IBM 2024) <-> our ``mamba2`` + ``attention`` layers with a SwiGLU MLP in every block.

Each layer is x + op(input_layernorm(x)), then x + mlp(pre_ff_layernorm(x)), where op is a Mamba-2 mixer
(the same tensors as ``Mamba2ForCausalLM``'s, under ``mamba.``; mamba.py maps them) or, at
``attn_layer_indices``, grouped-query attention with RoPE on half of each head (transformers hard-codes
``partial_rotary_factor`` 0.5). Mamba-2 options come from the ``mamba_*`` fields: ``mamba_n_heads`` heads of
``mamba_d_head`` ("auto": ``mamba_expand * hidden_size / mamba_n_heads``), ``mamba_n_groups`` groups of
``mamba_d_state``, ``mamba_d_conv`` taps, ``mamba_chunk_size``; the gated norm uses ``rms_norm_eps`` like every
other norm.

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.embed_tokens.weight                        -> embed/embedding
  model.layers.i.input_layernorm, pre_ff_layernorm -> layers_i/mixer_norm, mlp_norm
  model.layers.i.mamba.*                           -> layers_i/mixer/* (mamba.py's Mamba-2 mapping)
  model.layers.i.self_attn.{q,k,v}_proj, o_proj    -> layers_i/mixer/qkv (concatenated), o
  model.layers.i.feed_forward.{gate,up}_proj       -> layers_i/mlp/gate_up (gate first); down_proj -> mlp/down
  model.final_layernorm, lm_head.weight            -> final_norm, head/kernel
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.families.mamba import mamba2_from_hf, mamba2_to_hf, require_mamba2_options
from slm_jax.interop.hf_config import (
    EXPORT_TAIL,
    HFConfig,
    compress_pattern,
    read_mlp_activation,
    read_rope,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
    write_rope,
)
from slm_jax.interop.hf_weights import Tensors, ends_to_hf, f32, head_from_hf, linear_from_hf, linear_out

ARCHITECTURE = "BambaForCausalLM"


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Bamba ``config.json``."""
    n_layers, d = int(c.get("num_hidden_layers", 32)), int(c.get("hidden_size", 4096))
    h = int(c.get("num_attention_heads", 32))
    if d % h:
        raise unsupported(c, "hidden_size", d, f"it must be divisible by num_attention_heads ({h})")
    attn = set(c.get("attn_layer_indices", None) or ())
    layers = ["attention" if i in attn else "mamba2" for i in range(n_layers)]
    c.ignore("z_loss_coefficient", "attention_dropout", "num_logits_to_keep")  # training / generation only
    rope = read_rope(c, default_fraction=0.5)
    if rope["rope_scaling"]["kind"] != "none":
        raise unsupported(c, "rope_parameters.rope_type", rope["rope_scaling"]["kind"], "Bamba uses default RoPE")
    bias = bool(c.get("attention_bias", False))
    return {
        "preset": "transformer",
        "layer_pattern": compress_pattern(layers),
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "head_dim": d // h,
        "vocab_size": int(c.get("vocab_size", 128000)),
        "d_ff": int(c.get("intermediate_size", 14336)),
        "mlp": read_mlp_activation(c, "hidden_act", "silu"),
        "mlp_bias": bool(c.get("mlp_bias", False)),
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "norm_eps": float(c.get("rms_norm_eps", 1e-5)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "mixers": {"mamba2": mamba2_from_fields(c, d)},
        **rope,
    }


def mamba2_from_fields(c: HFConfig, d: int, width: int = 0) -> dict:
    """Our ``mixers.mamba2`` options from the ``mamba_*`` fields of a Bamba / Granite 4.0-H / Falcon-H1
    ``config.json`` (``d``: hidden_size; ``width``: an inner width of the family's own, else expand * d), refusing
    what the mixer cannot express."""
    expand = c.get("mamba_expand", 2)
    if int(expand) != expand:
        raise unsupported(c, "mamba_expand", expand, "slm_jax needs an integer expansion")
    heads, width = int(c.get("mamba_n_heads", 128)), width or int(expand) * d
    head_dim = c.get("mamba_d_head", "auto")
    head_dim = width // heads if head_dim == "auto" else int(head_dim)
    if heads * head_dim != width:
        why = f"mamba_n_heads * mamba_d_head must equal the Mamba-2 inner width {width}"
        raise unsupported(c, "mamba_n_heads", heads, why)
    c.expect("mamba_proj_bias", (False,), False, "in_proj/out_proj biases of the Mamba-2 mixer are not implemented")
    c.get("mamba_conv_bias", True)  # False: imported as a zero conv bias (exact)
    limit = c.get("time_step_limit", (0.0, float("inf")))
    if list(limit) != [0.0, float("inf")]:
        raise unsupported(c, "time_step_limit", list(limit), "clamping dt is not implemented; only (0, inf) is")
    return {
        **({"d_inner": width} if width != int(expand) * d else {}),
        "d_state": int(c.get("mamba_d_state", 256)),
        "expand": int(expand),
        "head_dim": head_dim,
        "n_groups": int(c.get("mamba_n_groups", 1)),
        "conv_width": int(c.get("mamba_d_conv", 4)),
        "chunk_size": int(c.get("mamba_chunk_size", 256)),
    }


def mamba2_to_fields(m) -> dict:
    """The ``mamba_*`` fields of a Bamba / Granite 4.0-H ``config.json`` for ModelConfig ``m``."""
    mc = m.mixers.mamba2
    return {
        "mamba_n_heads": (mc.d_inner or mc.expand * m.d_model) // mc.head_dim,
        "mamba_d_head": mc.head_dim,
        "mamba_n_groups": mc.n_groups,
        "mamba_d_state": mc.d_state,
        "mamba_d_conv": mc.conv_width,
        "mamba_expand": mc.expand,
        "mamba_chunk_size": mc.chunk_size,
        "mamba_conv_bias": True,
        "mamba_proj_bias": False,
    }


def attention_from_hf(t: Tensors, m, a: str, d_in: int = 0) -> dict:
    """Our ``attention`` mixer's parameters from ``a`` + ``{q,k,v,o}_proj`` (Llama's names; also Granite's);
    ``d_in``: the projections' input width when it is not d_model (Zamba2's shared block reads 2 d_model)."""
    d, h, k, e = m.d_model, m.n_heads, m.kv_heads, m.attn_head_dim
    d_in = d_in or d
    shapes = {"q": (h * e, d_in), "k": (k * e, d_in), "v": (k * e, d_in)}
    qkv = {n: linear_from_hf(t, f"{a}{n}_proj", s, m.qkv_bias) for n, s in shapes.items()}
    return {
        "qkv": {key: np.concatenate([qkv[n][key] for n in "qkv"], axis=-1) for key in qkv["q"]},
        "o": linear_from_hf(t, a + "o_proj", (d, h * e), m.attn_out_bias),
    }


def attention_to_hf(mixer: dict, m, a: str) -> dict[str, np.ndarray]:
    """Inverse of ``attention_from_hf``: tensors ``a`` + ``{q,k,v,o}_proj.{weight,bias}``."""
    h, k, e = m.n_heads, m.kv_heads, m.attn_head_dim
    splits = np.cumsum([h * e, k * e])
    out = {}
    for n, w in zip("qkv", np.split(linear_out(mixer["qkv"]["kernel"]), splits)):
        out[f"{a}{n}_proj.weight"] = w
    if m.qkv_bias:
        for n, b in zip("qkv", np.split(f32(mixer["qkv"]["bias"]), splits)):
            out[f"{a}{n}_proj.bias"] = b
    out[a + "o_proj.weight"] = linear_out(mixer["o"]["kernel"])
    if m.attn_out_bias:
        out[a + "o_proj.bias"] = f32(mixer["o"]["bias"])
    return out


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Bamba checkpoint; ``raw``: config.json."""
    conv_bias = bool(raw.get("mamba_conv_bias", True))
    d, f, v = m.d_model, m.ff_width, m.vocab_size
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre = f"model.layers.{i}."
        if name == "mamba2":
            mixer = mamba2_from_hf(t, m, pre + "mamba.", conv_bias)
        else:
            mixer = attention_from_hf(t, m, pre + "self_attn.")
        ff = pre + "feed_forward."
        gate, up = (
            linear_from_hf(t, ff + "gate_proj", (f, d), m.mlp_bias),
            linear_from_hf(t, ff + "up_proj", (f, d), m.mlp_bias),
        )
        gate_up = {"kernel": np.concatenate([gate["kernel"], up["kernel"]], axis=1)}
        if m.mlp_bias:
            gate_up["bias"] = np.concatenate([gate["bias"], up["bias"]])
        p[f"layers_{i}"] = {
            "mixer_norm": {"scale": t.take(pre + "input_layernorm.weight", (d,))},
            "mixer": mixer,
            "mlp_norm": {"scale": t.take(pre + "pre_ff_layernorm.weight", (d,))},
            "mlp": {"gate_up": gate_up, "down": linear_from_hf(t, ff + "down_proj", (d, f), m.mlp_bias)},
        }
    p["final_norm"] = {"scale": t.take("model.final_layernorm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that Bamba cannot express."""
    del family
    biases = {"qkv_bias": None, "attn_out_bias": None, "mlp_bias": None}
    require_decoder(m, ARCHITECTURE, {"mamba2", "attention"}, rotary_fraction=0.5, **biases)
    require_exportable(
        m.qkv_bias == m.attn_out_bias, "attn_out_bias", m.attn_out_bias, ARCHITECTURE, "one flag sets both biases"
    )
    other = "export it as another family (--family) or retrain without it"
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, ARCHITECTURE, other)
    require_block_options(m, ARCHITECTURE)
    require_mamba2_options(m, ARCHITECTURE)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    rope = {k: v for k, v in write_rope(m).items() if k != "partial_rotary_factor"}  # transformers fixes it at 0.5
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "bamba",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "attn_layer_indices": [i for i, name in enumerate(m.layers) if name == "attention"],
        "hidden_act": "silu",
        "attention_bias": m.qkv_bias,
        "mlp_bias": m.mlp_bias,
        **mamba2_to_fields(m),
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_parameters": rope,
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``; biases we lack are written as exact zeros."""
    del family
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i, name in enumerate(m.layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        mixer, mlp = layer["mixer"], layer["mlp"]
        if name == "mamba2":
            out.update(mamba2_to_hf(mixer, pre + "mamba."))
        else:
            out.update(attention_to_hf(mixer, m, pre + "self_attn."))
        ff = pre + "feed_forward."
        gate, up = np.split(linear_out(mlp["gate_up"]["kernel"]), 2)
        out[ff + "gate_proj.weight"], out[ff + "up_proj.weight"] = gate, up
        out[ff + "down_proj.weight"] = linear_out(mlp["down"]["kernel"])
        if m.mlp_bias:
            out[ff + "gate_proj.bias"], out[ff + "up_proj.bias"] = np.split(f32(mlp["gate_up"]["bias"]), 2)
            out[ff + "down_proj.bias"] = f32(mlp["down"]["bias"])
        out[pre + "input_layernorm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "pre_ff_layernorm.weight"] = f32(layer["mlp_norm"]["scale"])
    return out
