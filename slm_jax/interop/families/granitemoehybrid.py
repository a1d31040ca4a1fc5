"""Granite 4.0-H (``GraniteMoeHybridForCausalLM``, IBM 2025) <-> our ``mamba2`` + ``attention`` layers with a
mixture-of-experts MLP and a shared expert in every block.

Each layer is x + r op(input_layernorm(x)), then x + r (moe(u) + shared_mlp(u)) with u = post_attention_layernorm(x)
and r = ``residual_multiplier`` (our ``residual_scale``); op is a Mamba-2 mixer (``layer_types`` "mamba", saved
as "linear_attention"; Bamba's tensors, mamba.py maps them) or attention (scores times ``attention_multiplier``:
our ``attn_scale``; RoPE or none, by ``position_embedding_type``). Embeddings are multiplied by
``embedding_multiplier`` (``embed_scale``), logits divided by ``logits_scaling`` (``logit_divisor``). The router
picks ``num_experts_per_tok`` of ``num_local_experts`` by their logits and weighs them by a softmax over the chosen
logits (our softmax routing with ``normalize_top_k``: the same weights); with 0 experts the block's MLP is the
shared one alone (our dense ``mlp`` of width ``shared_intermediate_size``).

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.layers.i.block_sparse_moe.router.layer [E, d]          -> layers_i/moe/router/kernel [d, E]
  model.layers.i.block_sparse_moe.input_linear [E, 2f, d]      -> layers_i/moe/gate_up/kernel [E, d, 2f] (gate first)
  model.layers.i.block_sparse_moe.output_linear [E, d, f]      -> layers_i/moe/down/kernel [E, f, d]
  model.layers.i.shared_mlp.{input,output}_linear              -> layers_i/moe/shared/{gate_up,down} (or mlp/...)
  model.layers.i.input_layernorm, post_attention_layernorm     -> layers_i/mixer_norm, mlp_norm
  model.layers.i.mamba.*, self_attn.*                          -> layers_i/mixer/* (as Bamba)
  model.embed_tokens, model.norm, lm_head                      -> embed, final_norm, head
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.families.bamba import attention_from_hf, attention_to_hf, mamba2_from_fields, mamba2_to_fields
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
from slm_jax.interop.hf_weights import Tensors, ends_to_hf, f32, head_from_hf, linear_in, linear_out

ARCHITECTURE = "GraniteMoeHybridForCausalLM"
_LAYER_TYPES = {
    "mamba": "mamba2",
    "linear_attention": "mamba2",
    "attention": "attention",
    "full_attention": "attention",
}


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Granite 4.0-H ``config.json``."""
    n_layers, d = int(c.get("num_hidden_layers", 32)), int(c.get("hidden_size", 4096))
    h = int(c.get("num_attention_heads", 32))
    if d % h:
        raise unsupported(c, "hidden_size", d, f"it must be divisible by num_attention_heads ({h})")
    types = c.get("layer_types", None) or ["mamba"] * n_layers
    if len(types) != n_layers or any(t not in _LAYER_TYPES for t in types):
        raise unsupported(c, "layer_types", types, f"it needs {n_layers} entries, each mamba or attention")
    c.ignore("attention_dropout", "output_router_logits", "num_logits_to_keep")  # training / generation only
    position = c.expect("position_embedding_type", (None, "nope", "rope"), None)
    rope = read_rope(c)
    if rope["rope_scaling"]["kind"] != "none":
        raise unsupported(c, "rope_parameters.rope_type", rope["rope_scaling"]["kind"], "default RoPE only")
    bias = bool(c.get("attention_bias", False))
    experts, shared = int(c.get("num_local_experts", 8)), int(c.get("shared_intermediate_size", 1024))
    m = {
        "preset": "transformer",
        "layer_pattern": compress_pattern([_LAYER_TYPES[t] for t in types]),
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "head_dim": d // h,
        "vocab_size": int(c.get("vocab_size", 32000)),
        "d_ff": shared,
        "mlp": read_mlp_activation(c, "hidden_act", "silu"),
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "position": "rope" if position == "rope" else "none",
        "embed_scale": float(c.get("embedding_multiplier", 1.0)),
        "attn_scale": float(c.get("attention_multiplier", 1.0)),
        "residual_scale": float(c.get("residual_multiplier", 1.0)),
        "logit_divisor": float(c.get("logits_scaling", 1.0)),
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "mixers": {"mamba2": mamba2_from_fields(c, d)},
        **rope,
    }
    top_k, coef = int(c.get("num_experts_per_tok", 2)), float(c.get("router_aux_loss_coef", 0.001))
    if experts:
        m["moe"] = {
            "n_experts": experts,
            "top_k": top_k,
            "normalize_top_k": True,
            "d_expert": int(c.get("intermediate_size", 11008)),
            "d_shared": shared,
            "aux_loss_weight": coef,
        }
    else:
        c.ignore("intermediate_size")  # the experts' width, and there are none
    return m


def _gated(t: Tensors, name: str, d: int, f: int) -> dict:
    """A shared_mlp's ``input_linear`` [2f, d] (gate rows first) and ``output_linear`` [d, f] as our gated MLP."""
    return {
        "gate_up": {"kernel": linear_in(t.take(name + ".input_linear.weight", (2 * f, d)))},
        "down": {"kernel": linear_in(t.take(name + ".output_linear.weight", (d, f)))},
    }


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Granite 4.0-H checkpoint; ``raw``: config.json."""
    conv_bias = bool(raw.get("mamba_conv_bias", True))
    d, v, e = m.d_model, m.vocab_size, m.moe
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre = f"model.layers.{i}."
        if name == "mamba2":
            mixer = mamba2_from_hf(t, m, pre + "mamba.", conv_bias)
        else:
            mixer = attention_from_hf(t, m, pre + "self_attn.")
        layer = {
            "mixer_norm": {"scale": t.take(pre + "input_layernorm.weight", (d,))},
            "mixer": mixer,
            "mlp_norm": {"scale": t.take(pre + "post_attention_layernorm.weight", (d,))},
        }
        shared = _gated(t, pre + "shared_mlp", d, m.ff_width)
        if e.at(i):
            moe, f = pre + "block_sparse_moe.", e.d_expert
            layer["moe"] = {
                "router": {"kernel": linear_in(t.take(moe + "router.layer.weight", (e.n_experts, d)))},
                "gate_up": {"kernel": np.swapaxes(t.take(moe + "input_linear.weight", (e.n_experts, 2 * f, d)), 1, 2)},
                "down": {"kernel": np.swapaxes(t.take(moe + "output_linear.weight", (e.n_experts, d, f)), 1, 2)},
                "shared": shared,
            }
        else:
            layer["mlp"] = shared
        p[f"layers_{i}"] = layer
    p["final_norm"] = {"scale": t.take("model.norm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that Granite 4.0-H cannot express."""
    del family
    other = "export it as another family (--family) or retrain without it"
    free = {"qkv_bias": None, "attn_out_bias": None, "embed_scale": None, "position": None}
    require_decoder(m, ARCHITECTURE, {"mamba2", "attention"}, **free)
    require_exportable(m.position in ("rope", "none"), "position", m.position, ARCHITECTURE, other)
    require_exportable(
        m.qkv_bias == m.attn_out_bias, "attn_out_bias", m.attn_out_bias, ARCHITECTURE, "one flag sets both biases"
    )
    e = m.moe
    if e.n_experts:
        every = all(e.at(i) for i in range(m.n_layers))
        require_exportable(every, "moe.period", e.period, ARCHITECTURE, "every layer has the experts there")
        wanted = {"routing": "softmax", "normalize_top_k": True, "d_shared": m.ff_width, "shared_gate": False}
        for key, value in wanted.items():
            require_exportable(getattr(e, key) == value, f"moe.{key}", getattr(e, key), ARCHITECTURE, other)
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, ARCHITECTURE, other)
    require_block_options(m, ARCHITECTURE, moe=True, attn_scale=None, residual_scale=None, logit_divisor=None)
    require_mamba2_options(m, ARCHITECTURE)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    e = m.moe
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "granitemoehybrid",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": (e.d_expert or m.ff_width) if e.n_experts else m.ff_width,
        "shared_intermediate_size": m.ff_width,
        "num_local_experts": e.n_experts,
        "num_experts_per_tok": e.top_k if e.n_experts else 1,
        "router_aux_loss_coef": e.aux_loss_weight,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "layer_types": ["mamba" if name == "mamba2" else "attention" for name in m.layers],
        "hidden_act": "silu",
        "attention_bias": m.qkv_bias,
        "position_embedding_type": "rope" if m.position == "rope" else "nope",
        "embedding_multiplier": m.embed_scale,
        "attention_multiplier": m.attn_scale or m.attn_head_dim**-0.5,
        "residual_multiplier": m.residual_scale,
        "logits_scaling": m.logit_divisor,
        **mamba2_to_fields(m),
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_parameters": write_rope(m),
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``."""
    del family
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.norm.weight")
    for i, name in enumerate(m.layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        if name == "mamba2":
            out.update(mamba2_to_hf(layer["mixer"], pre + "mamba."))
        else:
            out.update(attention_to_hf(layer["mixer"], m, pre + "self_attn."))
        shared = layer["moe"]["shared"] if "moe" in layer else layer["mlp"]
        out[pre + "shared_mlp.input_linear.weight"] = linear_out(shared["gate_up"]["kernel"])
        out[pre + "shared_mlp.output_linear.weight"] = linear_out(shared["down"]["kernel"])
        if "moe" in layer:
            moe = pre + "block_sparse_moe."
            out[moe + "router.layer.weight"] = linear_out(layer["moe"]["router"]["kernel"])
            out[moe + "input_linear.weight"] = f32(np.swapaxes(layer["moe"]["gate_up"]["kernel"], 1, 2))
            out[moe + "output_linear.weight"] = f32(np.swapaxes(layer["moe"]["down"]["kernel"], 1, 2))
        out[pre + "input_layernorm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "post_attention_layernorm.weight"] = f32(layer["mlp_norm"]["scale"])
    return out
