"""Falcon-H1 (``FalconH1ForCausalLM``, TII 2025, arXiv:2507.22448) <-> our ``attention+mamba2`` parallel layers
(mixers/parallel.py) with a SwiGLU MLP in every block.

Each layer is x + ssm_out mamba(ssm_in u) + attn_out attention(attn_in u) with u = input_layernorm(x), then
x + mlp(pre_ff_layernorm(x)); the attention is Llama's (GQA, RoPE, ``head_dim``) with keys times
``key_multiplier``, the Mamba-2 mixer Bamba's with its in-projection's output groups [z, x, B, C, dt] times
``ssm_multipliers`` and the gated norm optional. The muP multipliers that scale a linear map's input or output are
folded into its weights on import (exact: RoPE, the conv and the split act on the projections linearly) and
written as 1.0 on export; ``embedding_multiplier`` is our ``embed_scale``, ``lm_head_multiplier`` 1 / our
``logit_divisor``.

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.embed_tokens.weight                        -> embed/embedding
  model.layers.i.input_layernorm, pre_ff_layernorm -> layers_i/mixer_norm, mlp_norm
  model.layers.i.mamba.*                           -> layers_i/mixer/mamba2/* (mamba.py's Mamba-2 mapping)
                                                      in_proj x ssm_in_multiplier x ssm_multipliers per group,
                                                      out_proj x ssm_out_multiplier
  model.layers.i.self_attn.{q,k,v}_proj, o_proj    -> layers_i/mixer/attention/qkv (x attention_in_multiplier;
                                                      k also x key_multiplier), o (x attention_out_multiplier)
  model.layers.i.feed_forward.{gate,up}_proj       -> layers_i/mlp/gate_up (gate x mlp_multipliers[0]);
  model.layers.i.feed_forward.down_proj            -> layers_i/mlp/down (x mlp_multipliers[1])
  model.final_layernorm, lm_head.weight            -> final_norm, head/kernel
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.families.bamba import attention_from_hf, attention_to_hf, mamba2_from_fields, mamba2_to_fields
from slm_jax.interop.families.mamba import mamba2_from_hf, mamba2_to_hf, require_mamba2_options
from slm_jax.interop.hf_config import (
    EXPORT_TAIL,
    HFConfig,
    read_mlp_activation,
    read_rope,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
    write_rope,
)
from slm_jax.interop.hf_weights import Tensors, ends_to_hf, f32, gated_mlp_from_hf, gated_mlp_to_hf, head_from_hf
from slm_jax.mixers.mamba2 import GATE_NORMS

ARCHITECTURE = "FalconH1ForCausalLM"
LAYER = "attention+mamba2"

# The multipliers folded into weights on import (transformers' defaults; None lists mean all ones).
_SCALARS = ("key_multiplier", "attention_in_multiplier", "attention_out_multiplier")
_SCALARS += ("ssm_in_multiplier", "ssm_out_multiplier")
_LISTS = {"mlp_multipliers": 2, "ssm_multipliers": 5}  # [gate, down]; [z, x, B, C, dt]


def _multipliers(get) -> dict:
    """The folded multipliers from a config's ``get(key, default)``: scalars as floats, lists as float lists."""
    out = {k: float(get(k, 1.0)) for k in _SCALARS}
    out.update({k: [float(v) for v in get(k, None) or [1.0] * n] for k, n in _LISTS.items()})
    return out


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Falcon-H1 ``config.json``."""
    n_layers, d = int(c.get("num_hidden_layers", 32)), int(c.get("hidden_size", 4096))
    h = int(c.get("num_attention_heads", 32))
    c.ignore("attention_dropout", "num_logits_to_keep")  # training / generation only
    c.ignore("time_step_min", "time_step_max", "time_step_floor")  # dt_bias init only
    c.ignore("mamba_use_mlp", "mlp_expansion_factor")  # in released config.json files; transformers never reads them
    mult = _multipliers(c.get)  # folded into the weights by params_from_hf
    for key, n in _LISTS.items():
        if len(mult[key]) != n:
            raise unsupported(c, key, mult[key], f"it needs {n} values")
    rope = read_rope(c)
    if rope["rotary_fraction"] != 1.0:
        raise unsupported(c, "partial_rotary_factor", rope["rotary_fraction"], "Falcon-H1 rotates whole heads")
    c.expect("mlp_bias", (False,), False, "Falcon-H1's MLP has no biases")
    c.expect("projectors_bias", (False,), False, "a bias on the Mamba-2 out_proj is not implemented")
    width = c.get("mamba_d_ssm", 1024)  # None: mamba_expand * hidden_size
    # mamba_rms_norm false: y * silu(z), no norm; true: a gated RMSNorm, normed before or after the gate
    before = bool(c.get("mamba_norm_before_gate", True))
    gate_norm = ("before_gate" if before else "after_gate") if c.get("mamba_rms_norm", False) else "none"
    bias, head = bool(c.get("attention_bias", False)), float(c.get("lm_head_multiplier", 1.0))
    if head <= 0:
        raise unsupported(c, "lm_head_multiplier", head, "it becomes logit_divisor = 1 / it, which must be positive")
    return {
        "preset": "transformer",
        "layer_pattern": [LAYER],
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "head_dim": int(c.get("head_dim", d // h)),
        "vocab_size": int(c.get("vocab_size", 128000)),
        "d_ff": int(c.get("intermediate_size", 14336)),
        "mlp": read_mlp_activation(c, "hidden_act", "silu"),
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "embed_scale": float(c.get("embedding_multiplier", 1.0)),
        "logit_divisor": 1.0 / head,
        "norm_eps": float(c.get("rms_norm_eps", 1e-5)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "mixers": {"mamba2": {**mamba2_from_fields(c, d, int(width or 0)), "gate_norm": gate_norm}},
        **rope,
    }


def _in_proj_scale(m, mult: dict) -> np.ndarray:
    """ssm_in_multiplier x the ``ssm_multipliers`` of each output group [z (w), x (w), B (kn), C (kn), dt (h)]."""
    mc = m.mixers.mamba2
    w = mc.d_inner or mc.expand * m.d_model
    sizes = (w, w, mc.n_groups * mc.d_state, mc.n_groups * mc.d_state, w // mc.head_dim)
    return mult["ssm_in_multiplier"] * np.repeat(np.asarray(mult["ssm_multipliers"], np.float32), sizes)


def _qkv_scale(m, q: float, k: float) -> np.ndarray:
    """``q`` for the query and value columns of our fused qkv, ``k`` for the key columns."""
    e = m.attn_head_dim
    return np.repeat(np.float32([q, k, q]), [m.n_heads * e, m.kv_heads * e, m.kv_heads * e])


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Falcon-H1 checkpoint; ``raw``: config.json."""
    conv_bias, mult = bool(raw.get("mamba_conv_bias", True)), _multipliers(raw.get)
    d, f, v = m.d_model, m.ff_width, m.vocab_size
    a, key = mult["attention_in_multiplier"], mult["key_multiplier"]
    in_scale, qkv_scale, qkv_bias_scale = _in_proj_scale(m, mult), _qkv_scale(m, a, a * key), _qkv_scale(m, 1, key)
    gate_scale = np.repeat(np.float32([mult["mlp_multipliers"][0], 1.0]), [f, f])  # gate columns first
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i in range(m.n_layers):
        pre = f"model.layers.{i}."
        ssm, attn = mamba2_from_hf(t, m, pre + "mamba.", conv_bias), attention_from_hf(t, m, pre + "self_attn.")
        ssm["in_proj"]["kernel"] = ssm["in_proj"]["kernel"] * in_scale
        ssm["out_proj"]["kernel"] = ssm["out_proj"]["kernel"] * mult["ssm_out_multiplier"]
        attn["qkv"]["kernel"] = attn["qkv"]["kernel"] * qkv_scale
        if m.qkv_bias:  # the input multiplier scales x, not the bias; the key multiplier scales both
            attn["qkv"]["bias"] = attn["qkv"]["bias"] * qkv_bias_scale
        attn["o"] = {k: w * mult["attention_out_multiplier"] for k, w in attn["o"].items()}
        mlp = gated_mlp_from_hf(t, pre + "feed_forward.", d, f)
        mlp["gate_up"]["kernel"] = mlp["gate_up"]["kernel"] * gate_scale
        mlp["down"]["kernel"] = mlp["down"]["kernel"] * mult["mlp_multipliers"][1]
        p[f"layers_{i}"] = {
            "mixer_norm": {"scale": t.take(pre + "input_layernorm.weight", (d,))},
            "mixer": {"attention": attn, "mamba2": ssm},
            "mlp_norm": {"scale": t.take(pre + "pre_ff_layernorm.weight", (d,))},
            "mlp": mlp,
        }
    p["final_norm"] = {"scale": t.take("model.final_layernorm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that Falcon-H1 cannot express."""
    del family
    free = {"qkv_bias": None, "attn_out_bias": None, "embed_scale": None}
    require_decoder(m, ARCHITECTURE, {LAYER}, any_head_dim=True, **free)
    require_exportable(
        m.qkv_bias == m.attn_out_bias, "attn_out_bias", m.attn_out_bias, ARCHITECTURE, "one flag sets both biases"
    )
    require_block_options(m, ARCHITECTURE, logit_divisor=None)
    require_mamba2_options(m, ARCHITECTURE, GATE_NORMS, any_width=True)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``); multipliers 1 but two."""
    del family
    mamba = mamba2_to_fields(m)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "falcon_h1",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.attn_head_dim,
        "hidden_act": "silu",
        "attention_bias": m.qkv_bias,
        "mlp_bias": False,
        "projectors_bias": False,
        **mamba,
        "mamba_d_ssm": mamba["mamba_n_heads"] * mamba["mamba_d_head"],
        "mamba_rms_norm": m.mixers.mamba2.gate_norm != "none",
        "mamba_norm_before_gate": m.mixers.mamba2.gate_norm != "after_gate",
        "embedding_multiplier": m.embed_scale,
        "lm_head_multiplier": 1.0 / m.logit_divisor,
        **{k: 1.0 for k in _SCALARS},
        **{k: [1.0] * n for k, n in _LISTS.items()},
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_parameters": write_rope(m),
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params`` (the multipliers stay folded in)."""
    del family
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i in range(m.n_layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        out.update(mamba2_to_hf(layer["mixer"]["mamba2"], pre + "mamba."))
        out.update(attention_to_hf(layer["mixer"]["attention"], m, pre + "self_attn."))
        out.update(gated_mlp_to_hf(layer["mlp"], pre + "feed_forward."))
        out[pre + "input_layernorm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "pre_ff_layernorm.weight"] = f32(layer["mlp_norm"]["scale"])
    return out
