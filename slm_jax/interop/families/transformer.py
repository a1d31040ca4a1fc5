"""Decoder-only attention families: Llama, Qwen2, Qwen3, Phi-3, Gemma and Gemma 2 <-> our ``transformer`` preset.

All six are x + attn(norm(x)), x + mlp(norm(x)) with RoPE and a gated MLP; they differ in:

  family   q/k/v bias      o bias          qk norm  fused projections       extras
  llama    attention_bias  attention_bias  -        -                       mlp_bias, rope scaling
  qwen2    always          never           -        -                       sliding layers (layer_types)
  qwen3    attention_bias  attention_bias  yes      -                       sliding layers (layer_types)
  phi3     -               -               -        qkv_proj, gate_up_proj  partial rotary, sliding_window
  gemma    attention_bias  attention_bias  -        -                       sqrt(d) embedding scale, (1 + w) norms,
                                                                            GeGLU
  gemma2   attention_bias  attention_bias  -        -                       as gemma, plus post_norms (the sandwich),
                                                                            attn_scale, attn_softcap, logit_softcap,
                                                                            alternating sliding layers (layer_types)

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.embed_tokens.weight [v, d]              -> embed/embedding
  model.layers.i.input_layernorm.weight [d]     -> layers_i/mixer_norm/scale
  model.layers.i.self_attn.{q,k,v}_proj         -> layers_i/mixer/qkv (concatenated on the output axis)
  model.layers.i.self_attn.o_proj               -> layers_i/mixer/o
  model.layers.i.self_attn.{q,k}_norm [e]       -> layers_i/mixer/{q,k}_norm/scale
  model.layers.i.post_attention_layernorm       -> layers_i/mlp_norm/scale (Gemma 2: mixer_post_norm/scale)
  model.layers.i.pre_feedforward_layernorm      -> layers_i/mlp_norm/scale (Gemma 2 only)
  model.layers.i.post_feedforward_layernorm     -> layers_i/mlp_post_norm/scale (Gemma 2 only)
  model.layers.i.mlp.{gate,up}_proj             -> layers_i/mlp/gate_up (gate first)
  model.layers.i.mlp.down_proj                  -> layers_i/mlp/down
  model.norm.weight, lm_head.weight             -> final_norm/scale, head/kernel
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.hf_config import (
    HFConfig,
    attention_layers,
    compress_pattern,
    float32_round,
    layer_windows,
    read_mlp_activation,
    read_rope,
    require_block_options,
    require_exportable,
    sliding_layers,
    unsupported,
    write_rope,
)
from slm_jax.interop.hf_weights import Tensors, f32, head_from_hf, linear_in, linear_out

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
# transformers' class defaults for fields a config.json may omit.
_EPS = {"llama": 1e-6, "qwen2": 1e-6, "qwen3": 1e-6, "phi3": 1e-5, "gemma": 1e-6, "gemma2": 1e-6}
_TIE = {"llama": False, "qwen2": False, "qwen3": False, "phi3": False, "gemma": True, "gemma2": True}
_KV = {"qwen2": 32, "qwen3": 32, "gemma": 16, "gemma2": 4}  # llama, phi3: None -> n_heads
_HEAD_DIM = {"qwen3": 128, "gemma": 256, "gemma2": 256}  # others: d_model / n_heads
_BIASED = ("llama", "qwen3", "gemma", "gemma2")  # one attention_bias flag for q, k, v and o
_GEMMA2_WINDOW = 4096  # transformers' default sliding_window; it needs one even when every layer is global


def _norm_names(post_norms: bool) -> dict[str, str]:
    """Our block norms -> the HF layer's norm names; Gemma 2's sandwich renames the pre-MLP norm."""
    if post_norms:
        return {
            "mixer_norm": "input_layernorm",
            "mixer_post_norm": "post_attention_layernorm",
            "mlp_norm": "pre_feedforward_layernorm",
            "mlp_post_norm": "post_feedforward_layernorm",
        }
    return {"mixer_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def _query_pre_attn_scalar(m) -> float | None:
    """Gemma 2's query_pre_attn_scalar s (scores times s ** -0.5) for our attn_scale; None when no integer fits."""
    if not m.attn_scale:
        return m.attn_head_dim
    s = round(m.attn_scale**-2)
    return s if s > 0 and s**-0.5 == m.attn_scale else None


# --------------------------------------------------------------------------- import


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Llama/Qwen2/Qwen3/Phi-3/Gemma/Gemma 2 ``config.json``."""
    t = c.model_type
    d, h = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    n_layers = int(c.get("num_hidden_layers"))
    m = {
        "preset": "transformer",
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", _KV.get(t)) or h),
        "head_dim": int(c.get("head_dim", _HEAD_DIM.get(t)) or d // h),
        "vocab_size": int(c.get("vocab_size")),
        "d_ff": int(c.get("intermediate_size")),
        "norm_eps": float(c.get("rms_norm_eps", _EPS[t])),
        "tie_embeddings": bool(c.get("tie_word_embeddings", _TIE[t])),
        **read_rope(c),
    }
    bias = bool(c.get("attention_bias", False)) if t in _BIASED else False
    m["qkv_bias"], m["attn_out_bias"] = (True, False) if t == "qwen2" else (bias, bias)
    m["mlp_bias"] = bool(c.get("mlp_bias", False)) if t == "llama" else False
    m["qk_norm"] = t == "qwen3"
    if t == "gemma":
        # Older Gemma files name the activation hidden_activation; "gelu" there means the tanh form.
        key = "hidden_activation" if c.get("hidden_activation", None) else "hidden_act"
        c.ignore("hidden_act", "hidden_activation")
        m["mlp"] = read_mlp_activation(c, key, "gelu_pytorch_tanh", legacy_gelu_is_tanh=True)
    elif t == "gemma2":
        c.ignore("hidden_act", "cache_implementation")  # transformers' Gemma 2 reads neither
        m["mlp"] = read_mlp_activation(c, "hidden_activation", "gelu_pytorch_tanh")
        scalar = c.get("query_pre_attn_scalar", 256)
        m["attn_scale"] = 0.0 if scalar == m["head_dim"] else float(scalar) ** -0.5
        m["attn_softcap"] = float(c.get("attn_logit_softcapping", 50.0) or 0.0)
        m["logit_softcap"] = float(c.get("final_logit_softcapping", 30.0) or 0.0)
        m["post_norms"] = True
        if m["rotary_fraction"] != 1.0:
            raise unsupported(
                c, "partial_rotary_factor", m["rotary_fraction"], "transformers' Gemma 2 rotates whole heads"
            )
    else:
        m["mlp"] = read_mlp_activation(c, "hidden_act", "silu")
    if t in ("gemma", "gemma2"):
        m["embed_scale"] = float32_round(d**0.5)  # a float32 buffer in transformers
        m["norm_offset"] = 1.0
        c.expect("use_bidirectional_attention", (None, False), None, "Gemma is converted as a causal LM")
    if t == "llama":
        c.expect("pretraining_tp", (None, 1), 1, "sharded-matmul emulation is not implemented")
    layers, window = ["attention"] * n_layers, 0
    if t in ("qwen2", "qwen3"):
        layers, window = sliding_layers(c, n_layers)
    elif t == "phi3":
        window = int(c.get("sliding_window", None) or 0)
        layers = ["local_attention" if window else "attention"] * n_layers
        c.ignore("original_max_position_embeddings")  # only used by longrope, which read_rope refuses
    elif t == "gemma2":  # layer_types default: sliding, full, sliding, ...
        default = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        layers = attention_layers(c, c.get("layer_types", None) or default, n_layers)
        window = c.get("sliding_window", _GEMMA2_WINDOW)
        if not isinstance(window, int) or window <= 0:
            raise unsupported(c, "sliding_window", window, "transformers' Gemma 2 needs a positive window")
    m["layer_pattern"] = compress_pattern(layers)
    if window:
        m["mixers"] = {"local_attention": {"window": window}}
    return m


def _concat_rows(t: Tensors, names: list[str], shapes: list[tuple]) -> np.ndarray:
    return np.concatenate([t.take(n, s) for n, s in zip(names, shapes)], axis=0)


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` (per-layer layout) from the tensors; ``raw``: config.json."""
    model_type = raw["model_type"]
    d, h, k, e, f, v = m.d_model, m.n_heads, m.kv_heads, m.attn_head_dim, m.ff_width, m.vocab_size
    fused = model_type == "phi3"
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i in range(m.n_layers):
        a, mp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        if fused:
            qkv = t.take(a + "qkv_proj.weight", ((h + 2 * k) * e, d))
        else:
            qkv = _concat_rows(
                t, [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"], [(h * e, d), (k * e, d), (k * e, d)]
            )
        attn: dict = {
            "qkv": {"kernel": linear_in(qkv)},
            "o": {"kernel": linear_in(t.take(a + "o_proj.weight", (d, h * e)))},
        }
        if m.qkv_bias:
            attn["qkv"]["bias"] = _concat_rows(
                t, [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"], [(h * e,), (k * e,), (k * e,)]
            )
        if m.attn_out_bias:
            attn["o"]["bias"] = t.take(a + "o_proj.bias", (d,))
        if m.qk_norm:
            attn["q_norm"] = {"scale": t.take(a + "q_norm.weight", (e,))}
            attn["k_norm"] = {"scale": t.take(a + "k_norm.weight", (e,))}
        if fused:
            gate_up = t.take(mp + "gate_up_proj.weight", (2 * f, d))
        else:
            gate_up = _concat_rows(t, [mp + "gate_proj.weight", mp + "up_proj.weight"], [(f, d), (f, d)])
        mlp: dict = {
            "gate_up": {"kernel": linear_in(gate_up)},
            "down": {"kernel": linear_in(t.take(mp + "down_proj.weight", (d, f)))},
        }
        if m.mlp_bias:
            mlp["gate_up"]["bias"] = _concat_rows(t, [mp + "gate_proj.bias", mp + "up_proj.bias"], [(f,), (f,)])
            mlp["down"]["bias"] = t.take(mp + "down_proj.bias", (d,))
        norms = {
            ours: {"scale": t.take(f"model.layers.{i}.{hf}.weight", (d,))}
            for ours, hf in _norm_names(m.post_norms).items()
        }
        p[f"layers_{i}"] = {"mixer": attn, "mlp": mlp, **norms}
    p["final_norm"] = {"scale": t.take("model.norm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that ``family`` cannot express."""
    name = ARCHITECTURES[family]
    other = "export it as another family (--family) or retrain without it"
    require_exportable(
        set(m.layers) <= {"attention", "local_attention"},
        "layer_pattern",
        list(m.pattern),
        name,
        "only attention layers exist there",
    )
    gemma2 = family == "gemma2"
    require_exportable(m.logit_softcap == 0 or gemma2, "logit_softcap", m.logit_softcap, name, other)
    require_exportable(m.norm == "rms", "norm", m.norm, name, other)
    require_block_options(m, name, **({"attn_softcap": None, "attn_scale": None, "post_norms": True} if gemma2 else {}))
    require_exportable(
        not gemma2 or _query_pre_attn_scalar(m) is not None,
        "attn_scale",
        m.attn_scale,
        name,
        "Gemma 2 writes it as query_pre_attn_scalar ** -0.5 with an integer query_pre_attn_scalar",
    )
    windows = set(layer_windows(m))
    gemma = family in ("gemma", "gemma2")
    require_exportable(m.mlp == ("geglu" if gemma else "swiglu"), "mlp", m.mlp, name, other)
    require_exportable(m.norm_offset == (1.0 if gemma else 0.0), "norm_offset", m.norm_offset, name, other)
    scale = float32_round(m.d_model**0.5) if gemma else 1.0
    require_exportable(
        m.embed_scale == scale, "embed_scale", m.embed_scale, name, f"it is fixed to {scale} there; {other}"
    )
    require_exportable(m.qk_norm == (family == "qwen3"), "qk_norm", m.qk_norm, name, other)
    if family == "phi3":
        require_exportable(
            len(windows) == 1,
            "mixers.local_attention.window",
            m.mixers.local_attention.window,
            name,
            "Phi-3 has one sliding window for every layer",
        )
        for key in ("qkv_bias", "attn_out_bias"):
            require_exportable(not getattr(m, key), key, getattr(m, key), name, other)
    elif family in ("qwen2", "qwen3", "gemma2"):
        require_exportable(
            len(windows - {0}) <= 1,
            "mixers.local_attention.window",
            sorted(windows),
            name,
            "all sliding layers share one window there",
        )
    else:
        require_exportable(
            windows == {0},
            "mixers.local_attention.window",
            sorted(windows),
            name,
            "it has no sliding-window attention; use qwen2, qwen3, phi3 or gemma2",
        )
    if family == "qwen2":  # q/k/v always have biases (zeros are exact), o never has one
        require_exportable(not m.attn_out_bias, "attn_out_bias", m.attn_out_bias, name, other)
    require_exportable(not m.mlp_bias or family == "llama", "mlp_bias", m.mlp_bias, name, other)
    require_exportable(
        family in ("llama", "qwen2", "qwen3") or m.rope_scaling.kind == "none",
        "rope_scaling.kind",
        m.rope_scaling.kind,
        name,
        other,
    )
    require_exportable(
        family in ("phi3",) or m.rotary_fraction == 1.0, "rotary_fraction", m.rotary_fraction, name, "use --family phi3"
    )


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` as ``family`` (after ``check_exportable``)."""
    gemma = family in ("gemma", "gemma2")
    out = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.attn_head_dim,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_parameters": write_rope(m),
        ("hidden_activation" if family == "gemma2" else "hidden_act"): "gelu_pytorch_tanh" if gemma else "silu",
        "dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if family in _BIASED:
        out["attention_bias"] = bool(m.qkv_bias or m.attn_out_bias)
    if family == "llama":
        out["mlp_bias"] = m.mlp_bias
    windows = layer_windows(m)
    window = max(windows)
    if family in ("qwen2", "qwen3"):
        out.update(
            use_sliding_window=window > 0,
            sliding_window=window or None,
            max_window_layers=m.n_layers,
            layer_types=["sliding_attention" if w else "full_attention" for w in windows],
        )
    if family == "phi3":
        out["sliding_window"] = window or None
    if family == "gemma2":
        out.update(
            query_pre_attn_scalar=_query_pre_attn_scalar(m),
            attn_logit_softcapping=m.attn_softcap or None,
            final_logit_softcapping=m.logit_softcap or None,
            sliding_window=window or _GEMMA2_WINDOW,
            layer_types=["sliding_attention" if w else "full_attention" for w in windows],
        )
    return out


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params`` (``{"params": ...}``)."""
    p = params["params"]
    h, k, e, d = m.n_heads, m.kv_heads, m.attn_head_dim, m.d_model
    out = {
        "model.embed_tokens.weight": f32(p["embed"]["embedding"]),
        "model.norm.weight": f32(p["final_norm"]["scale"]),
    }
    has_attn_bias = family == "qwen2" or (family in _BIASED and (m.qkv_bias or m.attn_out_bias))
    for i in range(m.n_layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        attn, mlp = layer["mixer"], layer["mlp"]
        qkv = linear_out(attn["qkv"]["kernel"])  # [(h + 2k) e, d]
        qkv_b = f32(attn["qkv"].get("bias", np.zeros(qkv.shape[0])))
        o_b = f32(attn["o"].get("bias", np.zeros(d)))
        if family == "phi3":
            out[pre + "self_attn.qkv_proj.weight"] = qkv
        else:
            splits = np.cumsum([h * e, k * e])
            for name, w, b in zip("qkv", np.split(qkv, splits), np.split(qkv_b, splits)):
                out[pre + f"self_attn.{name}_proj.weight"] = w
                if has_attn_bias:
                    out[pre + f"self_attn.{name}_proj.bias"] = b
        out[pre + "self_attn.o_proj.weight"] = linear_out(attn["o"]["kernel"])
        if has_attn_bias and family != "qwen2":
            out[pre + "self_attn.o_proj.bias"] = o_b
        if m.qk_norm:
            out[pre + "self_attn.q_norm.weight"] = f32(attn["q_norm"]["scale"])
            out[pre + "self_attn.k_norm.weight"] = f32(attn["k_norm"]["scale"])
        gate_up = linear_out(mlp["gate_up"]["kernel"])  # [2f, d], gate first
        if family == "phi3":
            out[pre + "mlp.gate_up_proj.weight"] = gate_up
        else:
            gate, up = np.split(gate_up, 2)
            out[pre + "mlp.gate_proj.weight"], out[pre + "mlp.up_proj.weight"] = gate, up
            if m.mlp_bias:
                gb, ub = np.split(f32(mlp["gate_up"]["bias"]), 2)
                out[pre + "mlp.gate_proj.bias"], out[pre + "mlp.up_proj.bias"] = gb, ub
                out[pre + "mlp.down_proj.bias"] = f32(mlp["down"]["bias"])
        out[pre + "mlp.down_proj.weight"] = linear_out(mlp["down"]["kernel"])
        for ours, hf in _norm_names(m.post_norms).items():
            out[pre + hf + ".weight"] = f32(layer[ours]["scale"])
    if not m.tie_embeddings:
        out["lm_head.weight"] = linear_out(p["head"]["kernel"])
    return out
