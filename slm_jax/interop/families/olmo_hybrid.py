"""OLMo hybrid (``OlmoHybridForCausalLM``, Ai2 2025) <-> our ``gated_deltanet`` + ``attention`` layers.

Gated DeltaNet layers (``layer_types`` "linear_attention") are pre-norm, x + op(input_layernorm(x)) then
x + mlp(post_attention_layernorm(x)). Attention layers ("full_attention") use OLMo 2's reordered norms (OLMo Team
2025, arXiv:2501.00656): no input norms, x + post_attention_layernorm(attn(x)) then
x + post_feedforward_layernorm(mlp(x)) (our ``reordered_norms: [attention]``), with RMSNorms over all heads' queries
and keys at once (``qk_norm_all_heads``) and RoPE, or no position encoding when ``rope_parameters`` has no
``rope_theta`` (the released checkpoints). The Gated DeltaNet has separate q/k/v projections feeding one
depthwise convolution without bias (concatenated into our ``in_proj_qkv``; one conv over the concatenation is
the same conv), a gate ``g_proj`` (our ``in_proj_z``), beta = 2 sigmoid(b) when ``linear_allow_neg_eigval``
(our ``neg_eigval``), and a gated output RMSNorm with eps 1e-5 (fla's default, fixed in transformers).

Names on disk are OLMo-core's, which transformers renames on load and back on save: ``attention_layer_norm`` is
its ``input_layernorm``, ``feedforward_layer_norm`` its ``post_attention_layernorm`` (in both layer kinds), and the
convolution is stored as ``q_conv1d`` / ``k_conv1d`` / ``v_conv1d``, concatenated on load (we read whatever
split is stored and write the q, k, v widths).

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.layers.i.linear_attn.{q,k,v}_proj [., d]             -> layers_i/mixer/in_proj_qkv (rows q, k, v)
  model.layers.i.linear_attn.g_proj, b_proj, a_proj, o_proj  -> layers_i/mixer/in_proj_z, in_proj_b, in_proj_a, out_proj
  model.layers.i.linear_attn.{q,k,v}_conv1d [., 1, K] (concatenated) -> layers_i/mixer/conv1d
  model.layers.i.linear_attn.A_log, dt_bias, o_norm          -> layers_i/mixer/A_log, dt_bias, o_norm
  model.layers.i.self_attn.{q,k,v,o}_proj, q_norm [h e], k_norm [k e] -> layers_i/mixer/qkv, o, q_norm, k_norm
  model.layers.i.mlp.{gate,up,down}_proj                     -> layers_i/mlp/gate_up (gate first), down
  linear layers: attention_layer_norm, feedforward_layer_norm -> layers_i/mixer_norm, mlp_norm
  attention layers: feedforward_layer_norm, post_feedforward_layernorm -> layers_i/mixer_post_norm, mlp_post_norm
  model.embed_tokens, model.norm, lm_head                    -> embed, final_norm, head
"""

from __future__ import annotations

import numpy as np

from slm_jax.errors import CheckpointError
from slm_jax.interop.families.bamba import attention_from_hf, attention_to_hf
from slm_jax.interop.families.qwen3_next import deltanet_sizes
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
    gated_mlp_from_hf,
    gated_mlp_to_hf,
    head_from_hf,
    linear_in,
    linear_out,
)

ARCHITECTURE = "OlmoHybridForCausalLM"
_LAYER_TYPES = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
_GATED_NORM_EPS = 1e-5  # transformers fixes the gated output norm's eps (fla's FusedRMSNormGated default)
_OTHER = "export it as another family (--family) or retrain without it"
# Initialisation ranges of A_log and dt_bias: they do not change a trained model's outputs.
_INIT_ONLY = ("linear_a_log_min", "linear_a_log_max", "linear_dt_min", "linear_dt_max", "linear_dt_init_floor")


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for an OLMo hybrid ``config.json``."""
    n_layers, d = int(c.get("num_hidden_layers")), int(c.get("hidden_size"))
    h = int(c.get("num_attention_heads"))
    if d % h:
        raise unsupported(c, "hidden_size", d, f"it must be divisible by num_attention_heads ({h})")
    types = c.get("layer_types", None)
    if not types or len(types) != n_layers or any(t not in _LAYER_TYPES for t in types):
        raise unsupported(c, "layer_types", types, f"it needs {n_layers} entries, linear_attention or full_attention")
    c.ignore(*_INIT_ONLY)
    c.expect("hidden_act", ("silu",), "silu", "OLMo hybrid's MLP is SwiGLU")
    params = c.get("rope_parameters", None)
    nope = not params or params.get("rope_theta") is None  # transformers then skips RoPE
    rope = {} if nope else read_rope(c)
    if rope and rope["rope_scaling"]["kind"] != "none":
        raise unsupported(c, "rope_parameters.rope_type", rope["rope_scaling"]["kind"], "default RoPE only")
    bias = bool(c.get("attention_bias", False))
    k_heads = int(c.get("linear_num_key_heads", None) or h)
    k_dim = int(c.get("linear_key_head_dim", None) or int(0.75 * d / k_heads))
    return {
        "preset": "transformer",
        "layer_pattern": compress_pattern([_LAYER_TYPES[t] for t in types]),
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "vocab_size": int(c.get("vocab_size")),
        "d_ff": int(c.get("intermediate_size")),
        "mlp": "swiglu",
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "qk_norm": True,
        "qk_norm_all_heads": True,
        "reordered_norms": ["attention"],
        "position": "none" if nope else "rope",
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "mixers": {
            "gated_deltanet": {
                "n_heads": k_heads,
                "n_v_heads": int(c.get("linear_num_value_heads", None) or h),
                "head_dim": k_dim,
                "v_head_dim": int(c.get("linear_value_head_dim", None) or 2 * k_dim),
                "conv_width": int(c.get("linear_conv_kernel_dim", 4)),
                "conv_bias": False,
                "neg_eigval": bool(c.get("linear_allow_neg_eigval", True)),
                "norm_eps": _GATED_NORM_EPS,
            }
        },
        **rope,
    }


def _deltanet_from_hf(t: Tensors, m, a: str) -> dict:
    nk, nv, n, e = deltanet_sizes(m)
    d, kw, vw, width = m.d_model, nk * n, nv * e, m.mixers.gated_deltanet.conv_width
    rows = [
        t.take(a + "q_proj.weight", (kw, d)),
        t.take(a + "k_proj.weight", (kw, d)),
        t.take(a + "v_proj.weight", (vw, d)),
    ]
    return {
        "in_proj_qkv": {"kernel": linear_in(np.concatenate(rows))},
        "in_proj_z": {"kernel": linear_in(t.take(a + "g_proj.weight", (vw, d)))},
        "in_proj_b": {"kernel": linear_in(t.take(a + "b_proj.weight", (nv, d)))},
        "in_proj_a": {"kernel": linear_in(t.take(a + "a_proj.weight", (nv, d)))},
        "conv1d": {"kernel": conv_in(_stored_conv(t, a, 2 * kw + vw, width))},
        "A_log": t.take(a + "A_log", (nv,)),
        "dt_bias": t.take(a + "dt_bias", (nv,)),
        "o_norm": {"scale": t.take(a + "o_norm.weight", (e,))},
        "out_proj": {"kernel": linear_in(t.take(a + "o_proj.weight", (d, vw)))},
    }


def _stored_conv(t: Tensors, a: str, channels: int, width: int) -> np.ndarray:
    """The [C, 1, K] convolution from its stored q / k / v parts (transformers saves them split evenly)."""
    parts = [t.take(f"{a}{n}_conv1d.weight") for n in "qkv"]
    conv = np.concatenate(parts)
    if conv.shape != (channels, 1, width):
        raise CheckpointError(
            f"{t.where}: {a}q/k/v_conv1d hold {conv.shape} together but config.json implies {(channels, 1, width)}; "
            "the checkpoint and config do not match."
        )
    return conv


def _deltanet_to_hf(mixer: dict, m, a: str) -> dict[str, np.ndarray]:
    nk, _, n, _ = deltanet_sizes(m)
    kw = nk * n
    q, k, v = np.split(linear_out(mixer["in_proj_qkv"]["kernel"]), [kw, 2 * kw])
    q_conv, k_conv, v_conv = np.split(conv_out(mixer["conv1d"]["kernel"]), [kw, 2 * kw])
    return {
        a + "q_proj.weight": q,
        a + "k_proj.weight": k,
        a + "v_proj.weight": v,
        a + "g_proj.weight": linear_out(mixer["in_proj_z"]["kernel"]),
        a + "b_proj.weight": linear_out(mixer["in_proj_b"]["kernel"]),
        a + "a_proj.weight": linear_out(mixer["in_proj_a"]["kernel"]),
        a + "q_conv1d.weight": q_conv,
        a + "k_conv1d.weight": k_conv,
        a + "v_conv1d.weight": v_conv,
        a + "A_log": f32(mixer["A_log"]),
        a + "dt_bias": f32(mixer["dt_bias"]),
        a + "o_norm.weight": f32(mixer["o_norm"]["scale"]),
        a + "o_proj.weight": linear_out(mixer["out_proj"]["kernel"]),
    }


def _norm_names(name: str) -> dict[str, str]:
    """Our norm -> HF norm of a layer with mixer ``name``."""
    if name == "attention":
        return {"mixer_post_norm": "feedforward_layer_norm", "mlp_post_norm": "post_feedforward_layernorm"}
    return {"mixer_norm": "attention_layer_norm", "mlp_norm": "feedforward_layer_norm"}


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from an OLMo hybrid checkpoint; ``raw``: config.json."""
    del raw
    d, v, h, k, e = m.d_model, m.vocab_size, m.n_heads, m.kv_heads, m.attn_head_dim
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre = f"model.layers.{i}."
        if name == "gated_deltanet":
            mixer = _deltanet_from_hf(t, m, pre + "linear_attn.")
        else:
            mixer = attention_from_hf(t, m, pre + "self_attn.")
            mixer["q_norm"] = {"scale": t.take(pre + "self_attn.q_norm.weight", (h * e,))}
            mixer["k_norm"] = {"scale": t.take(pre + "self_attn.k_norm.weight", (k * e,))}
        norms = {ours: {"scale": t.take(f"{pre}{hf}.weight", (d,))} for ours, hf in _norm_names(name).items()}
        p[f"layers_{i}"] = {"mixer": mixer, "mlp": gated_mlp_from_hf(t, pre + "mlp.", d, m.ff_width), **norms}
    p["final_norm"] = {"scale": t.take("model.norm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that OLMo hybrid cannot express."""
    del family
    wanted = {"qk_norm": True, "position": None, "qkv_bias": None, "attn_out_bias": None}
    require_decoder(m, ARCHITECTURE, {"gated_deltanet", "attention"}, **wanted)
    require_exportable(m.position in ("rope", "none"), "position", m.position, ARCHITECTURE, _OTHER)
    require_exportable(
        m.qkv_bias == m.attn_out_bias, "attn_out_bias", m.attn_out_bias, ARCHITECTURE, "one flag sets both"
    )
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, ARCHITECTURE, _OTHER)
    reordered = set(m.reordered_norms) & set(m.layers)
    require_exportable(
        reordered == {"attention"} & set(m.layers),
        "reordered_norms",
        list(m.reordered_norms),
        ARCHITECTURE,
        "its attention layers, and only those, norm each branch's output (reordered_norms: [attention])",
    )
    g = m.mixers.gated_deltanet
    require_exportable(
        not g.conv_bias, "mixers.gated_deltanet.conv_bias", g.conv_bias, ARCHITECTURE, "its conv has no bias"
    )
    require_exportable(
        g.norm_eps == _GATED_NORM_EPS, "mixers.gated_deltanet.norm_eps", g.norm_eps, ARCHITECTURE, "it is fixed at 1e-5"
    )
    require_block_options(m, ARCHITECTURE, qk_norm_all_heads=True, reordered_norms=None)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    g = m.mixers.gated_deltanet
    nk, nv, n, e = deltanet_sizes(m)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "olmo_hybrid",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "layer_types": ["linear_attention" if name == "gated_deltanet" else "full_attention" for name in m.layers],
        "linear_num_key_heads": nk,
        "linear_num_value_heads": nv,
        "linear_key_head_dim": n,
        "linear_value_head_dim": e,
        "linear_conv_kernel_dim": g.conv_width,
        "linear_allow_neg_eigval": g.neg_eigval,
        "hidden_act": "silu",
        "attention_bias": m.qkv_bias,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_parameters": write_rope(m) if m.position == "rope" else {"rope_type": "default", "rope_theta": None},
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``."""
    del family
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.norm.weight")
    for i, name in enumerate(m.layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        if name == "gated_deltanet":
            out.update(_deltanet_to_hf(layer["mixer"], m, pre + "linear_attn."))
        else:
            out.update(attention_to_hf(layer["mixer"], m, pre + "self_attn."))
            out[pre + "self_attn.q_norm.weight"] = f32(layer["mixer"]["q_norm"]["scale"])
            out[pre + "self_attn.k_norm.weight"] = f32(layer["mixer"]["k_norm"]["scale"])
        out.update(gated_mlp_to_hf(layer["mlp"], pre + "mlp."))
        for ours, hf in _norm_names(name).items():
            out[f"{pre}{hf}.weight"] = f32(layer[ours]["scale"])
    return out
