"""Jamba (``JambaForCausalLM``, Lieber et al. 2024, arXiv:2403.19887) <-> our ``mamba`` + ``attention`` layers with
mixture-of-experts MLPs on every other layer.

Each layer is x + op(input_layernorm(x)), then x + ffn(pre_ff_layernorm(x)). op is attention (no position
encoding: our ``position: none``) where ``i % attn_layer_period == attn_layer_offset``, else a Mamba-1 mixer with
RMSNorms on dt, B and C (our ``mixers.mamba.dt_bc_norms``); ffn is an MoE where
``i % expert_layer_period == expert_layer_offset`` (``model.moe`` period / offset), else a SwiGLU MLP. The router
takes the top ``num_experts_per_tok`` of a softmax over all ``num_experts`` and leaves them unnormalised (our
softmax routing without ``normalize_top_k``); there is no shared expert.

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.layers.i.mamba.* (+ dt_layernorm, b_layernorm, c_layernorm) -> layers_i/mixer/* (mamba.py's mapping)
  model.layers.i.self_attn.{q,k,v,o}_proj                          -> layers_i/mixer/qkv, o (as Bamba)
  model.layers.i.feed_forward.{gate,up,down}_proj                  -> layers_i/mlp/gate_up (gate first), down
  model.layers.i.feed_forward.router.weight [E, d]                 -> layers_i/moe/router/kernel [d, E]
  model.layers.i.feed_forward.experts.j.{gate,up}_proj [f, d]      -> layers_i/moe/gate_up/kernel[j] [d, 2f]
  model.layers.i.feed_forward.experts.j.down_proj [d, f]           -> layers_i/moe/down/kernel[j] [f, d]
  model.layers.i.input_layernorm, pre_ff_layernorm                 -> layers_i/mixer_norm, mlp_norm
  model.embed_tokens, model.final_layernorm, lm_head               -> embed, final_norm, head
"""

from __future__ import annotations

import math

import numpy as np

from slm_jax.interop.families.bamba import attention_from_hf, attention_to_hf
from slm_jax.interop.families.mamba import mamba_from_hf, mamba_to_hf
from slm_jax.interop.hf_config import (
    EXPORT_TAIL,
    HFConfig,
    compress_pattern,
    read_mlp_activation,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
)
from slm_jax.interop.hf_weights import (
    Tensors,
    ends_to_hf,
    experts_from_hf,
    experts_to_hf,
    f32,
    gated_mlp_from_hf,
    gated_mlp_to_hf,
    head_from_hf,
    linear_in,
    linear_out,
)

ARCHITECTURE = "JambaForCausalLM"


def _period(c: HFConfig, period_key: str, offset_key: str, default: tuple[int, int]) -> tuple[int, int]:
    period, offset = int(c.get(period_key, default[0])), int(c.get(offset_key, default[1]))
    if period < 1 or not 0 <= offset < period:
        raise unsupported(c, offset_key, offset, f"it must lie in [0, {period_key} = {period})")
    return period, offset


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Jamba ``config.json``."""
    n_layers, d = int(c.get("num_hidden_layers", 32)), int(c.get("hidden_size", 4096))
    h = int(c.get("num_attention_heads", 32))
    if d % h:
        raise unsupported(c, "hidden_size", d, f"it must be divisible by num_attention_heads ({h})")
    attn_period, attn_offset = _period(c, "attn_layer_period", "attn_layer_offset", (8, 4))
    layers = ["attention" if i % attn_period == attn_offset else "mamba" for i in range(n_layers)]
    c.expect("mamba_proj_bias", (False,), False, "in_proj/out_proj biases of the Mamba mixer are not implemented")
    c.get("mamba_conv_bias", True)  # False: imported as a zero conv bias (exact)
    rank = c.get("mamba_dt_rank", "auto")
    c.ignore("use_mamba_kernels", "use_mambapy", "use_associative_scan")  # kernel choices: the same numbers
    c.ignore("attention_dropout", "output_router_logits", "num_logits_to_keep")  # training / generation only
    experts = int(c.get("num_experts", 16))
    m = {
        "preset": "jamba_like",
        "layer_pattern": compress_pattern(layers),
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "head_dim": d // h,
        "vocab_size": int(c.get("vocab_size", 65536)),
        "d_ff": int(c.get("intermediate_size", 14336)),
        "mlp": read_mlp_activation(c, "hidden_act", "silu"),
        "position": "none",
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "mixers": {
            "mamba": {
                "d_state": int(c.get("mamba_d_state", 16)),
                "expand": int(c.get("mamba_expand", 2)),
                "conv_width": int(c.get("mamba_d_conv", 4)),
                "dt_rank": math.ceil(d / 16) if rank == "auto" else int(rank),
                "dt_bc_norms": True,
            }
        },
    }
    expert_period, expert_offset = _period(c, "expert_layer_period", "expert_layer_offset", (2, 1))
    top_k, coef = int(c.get("num_experts_per_tok", 2)), float(c.get("router_aux_loss_coef", 0.001))
    if experts > 1:  # transformers' Jamba builds a plain MLP wherever a layer would have one expert
        m["moe"] = {
            "n_experts": experts,
            "top_k": top_k,
            "period": expert_period,
            "offset": expert_offset,
            "aux_loss_weight": coef,
        }
    return m


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Jamba checkpoint; ``raw``: config.json."""
    conv_bias = bool(raw.get("mamba_conv_bias", True))
    d, f, v, e = m.d_model, m.ff_width, m.vocab_size, m.moe
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre = f"model.layers.{i}."
        if name == "mamba":
            mixer = mamba_from_hf(t, m, pre + "mamba.", conv_bias)
        else:
            mixer = attention_from_hf(t, m, pre + "self_attn.")
        layer = {
            "mixer_norm": {"scale": t.take(pre + "input_layernorm.weight", (d,))},
            "mixer": mixer,
            "mlp_norm": {"scale": t.take(pre + "pre_ff_layernorm.weight", (d,))},
        }
        ff = pre + "feed_forward."
        if e.at(i):
            router = {"kernel": linear_in(t.take(ff + "router.weight", (e.n_experts, d)))}
            layer["moe"] = {"router": router, **experts_from_hf(t, ff + "experts.", e.n_experts, d, e.d_expert or f)}
        else:
            layer["mlp"] = gated_mlp_from_hf(t, ff, d, f)
        p[f"layers_{i}"] = layer
    p["final_norm"] = {"scale": t.take("model.final_layernorm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def _every(layers: list[str], name: str) -> tuple[int, int] | None:
    """(period, offset) with layers[i] == name exactly when i % period == offset, or None."""
    for period in range(1, len(layers) + 1):
        for offset in range(period):
            if all((layer == name) == (i % period == offset) for i, layer in enumerate(layers)):
                return period, offset
    return None


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that Jamba cannot express."""
    del family
    require_decoder(m, ARCHITECTURE, {"mamba", "attention"}, position="none")
    periodic = _every(list(m.layers), "attention") is not None
    why = "attention comes every attn_layer_period layers there"
    require_exportable(periodic, "layer_pattern", list(m.pattern), ARCHITECTURE, why)
    mc, e = m.mixers.mamba, m.moe
    require_exportable(mc.dt_bc_norms, "mixers.mamba.dt_bc_norms", mc.dt_bc_norms, ARCHITECTURE, "Jamba has them")
    require_exportable(mc.selective, "mixers.mamba.selective", mc.selective, ARCHITECTURE, "Jamba's Mamba is selective")
    if e.n_experts:
        other = "export it as another family (--family) or retrain without it"
        periodic = not e.layers and e.n_experts > 1
        require_exportable(periodic, "moe.layers", list(e.layers), ARCHITECTURE, "experts come every period layers")
        wanted = {"routing": ("softmax",), "normalize_top_k": (False,), "d_shared": (0,), "d_expert": (0, m.ff_width)}
        for key, values in wanted.items():
            require_exportable(getattr(e, key) in values, f"moe.{key}", getattr(e, key), ARCHITECTURE, other)
    require_block_options(m, ARCHITECTURE, moe=True)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    mc, e = m.mixers.mamba, m.moe
    attn_period, attn_offset = _every(list(m.layers), "attention")
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "jamba",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "attn_layer_period": attn_period,
        "attn_layer_offset": attn_offset,
        "num_experts": e.n_experts or 1,
        "num_experts_per_tok": e.top_k if e.n_experts else 1,
        "expert_layer_period": e.period,
        "expert_layer_offset": e.offset,
        "router_aux_loss_coef": e.aux_loss_weight,
        "hidden_act": "silu",
        "mamba_d_state": mc.d_state,
        "mamba_d_conv": mc.conv_width,
        "mamba_expand": mc.expand,
        "mamba_dt_rank": mc.dt_rank or math.ceil(m.d_model / 16),
        "mamba_conv_bias": True,
        "mamba_proj_bias": False,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``."""
    del family
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i, name in enumerate(m.layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        if name == "mamba":
            out.update(mamba_to_hf(layer["mixer"], pre + "mamba."))
        else:
            out.update(attention_to_hf(layer["mixer"], m, pre + "self_attn."))
        ff = pre + "feed_forward."
        if "moe" in layer:
            out[ff + "router.weight"] = linear_out(layer["moe"]["router"]["kernel"])
            out.update(experts_to_hf(layer["moe"], ff + "experts."))
        else:
            out.update(gated_mlp_to_hf(layer["mlp"], ff))
        out[pre + "input_layernorm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "pre_ff_layernorm.weight"] = f32(layer["mlp_norm"]["scale"])
    return out
