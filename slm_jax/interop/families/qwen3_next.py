"""Qwen3-Next (``Qwen3NextForCausalLM``, Qwen Team 2025) and Qwen3.5's text model (``Qwen3_5ForCausalLM``) <->
our ``gated_deltanet`` + ``attention`` layers. A multimodal Qwen3.5 checkpoint (model_type ``qwen3_5``,
``Qwen3_5ForConditionalGeneration``) imports as its text model: ``text_config``, the ``model.language_model.*``
tensors and ``lm_head``, with the vision tower (``vision_config``, ``model.visual.*``) left out; family
``qwen3_5`` exports that text model (model_type ``qwen3_5_text``), which ``AutoModelForCausalLM`` loads.

Each layer is x + op(input_layernorm(x)), then x + ffn(post_attention_layernorm(x)); every norm is a (1 + w) RMSNorm
(our ``norm_offset`` 1), the gated output norm inside Gated DeltaNet excepted (plain w). op is Gated DeltaNet
(``layer_types`` "linear_attention"; mixers/gated_deltanet.py documents its tensors, with ``conv_bias`` false) or
gated attention ("full_attention"): q_proj gives each head [query (e) | gate (e)] and the output is
o_proj(attn * sigmoid(gate)) (our ``attn_output_gate``), with (1 + w) RMSNorms on queries and keys (``qk_norm``)
and RoPE on the first ``partial_rotary_factor`` of each head (0.25 by default). Qwen3.5's text-only positions make
its multimodal RoPE sections all read the same position, which is plain RoPE. ffn is a SwiGLU MLP, or, in
Qwen3-Next on layers where ``(i + 1) % decoder_sparse_step == 0`` and i is not in ``mlp_only_layers``, a
mixture of experts: softmax over ``num_experts`` router logits, the top ``num_experts_per_tok`` (renormalised
when ``norm_topk_prob``), plus a shared expert scaled by sigmoid(shared_expert_gate(x)) (our ``moe.shared_gate``).
Qwen3-Next also fuses the Gated DeltaNet input projections per key head (in_proj_qkvz, in_proj_ba): they are
regrouped into ours on import and back on export. Multi-token-prediction weights (``mtp.*``), which
transformers does not load either, are skipped.

Tensor names (torch [out, in] weights; ours are [in, out]):
  model.layers.i.linear_attn.*                                -> layers_i/mixer/* (gated_deltanet.py's table)
  model.layers.i.self_attn.q_proj [h 2e, d] (per head q, gate) -> layers_i/mixer/qkv columns [q | k | v | gate]
  model.layers.i.self_attn.{k,v}_proj, o_proj, q_norm, k_norm  -> layers_i/mixer/qkv, o, q_norm, k_norm
  model.layers.i.mlp.{gate,up,down}_proj                      -> layers_i/mlp/gate_up (gate first), down
  model.layers.i.mlp.gate.weight [E, d]                       -> layers_i/moe/router/kernel [d, E]
  model.layers.i.mlp.experts.j.{gate,up}_proj [f, d]          -> layers_i/moe/gate_up/kernel[j] [d, 2f]
  model.layers.i.mlp.experts.j.down_proj [d, f]               -> layers_i/moe/down/kernel[j] [f, d]
  model.layers.i.mlp.shared_expert.*, shared_expert_gate      -> layers_i/moe/shared/*, shared_gate
  model.layers.i.input_layernorm, post_attention_layernorm    -> layers_i/mixer_norm, mlp_norm
  model.embed_tokens, model.norm, lm_head                     -> embed, final_norm, head
"""

from __future__ import annotations

import numpy as np

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
from slm_jax.interop.hf_weights import (
    Tensors,
    conv_in,
    conv_out,
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

ARCHITECTURES = {
    "qwen3_next": "Qwen3NextForCausalLM",
    "qwen3_5_text": "Qwen3_5ForCausalLM",
    "qwen3_5": "Qwen3_5ForCausalLM",
}
_VISION_FIELDS = ("vision_config", "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_LAYER_TYPES = {"linear_attention": "gated_deltanet", "full_attention": "attention"}
_OTHER = "export it as another family (--family) or retrain without it"


def _moe_layers(c: HFConfig, n_layers: int) -> list[int]:
    """Qwen3-Next's expert layers: (i + 1) % decoder_sparse_step == 0 and i not in mlp_only_layers."""
    step, dense = int(c.get("decoder_sparse_step", 1)), set(c.get("mlp_only_layers", None) or ())
    return [i for i in range(n_layers) if (i + 1) % step == 0 and i not in dense]


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Qwen3-Next or Qwen3.5 (text or multimodal) ``config.json``."""
    if c.model_type != "qwen3_5":
        return _text_config_from_hf(c)
    c.ignore(*_VISION_FIELDS)  # the vision tower is not converted
    text = HFConfig(c.get("text_config"), f"{c.where} (text_config)")
    m = _text_config_from_hf(text)
    text.finish()
    m["tie_embeddings"] = bool(c.get("tie_word_embeddings", False))  # the multimodal model's own flag governs
    return m


def _text_config_from_hf(c: HFConfig) -> dict:
    n_layers, d = int(c.get("num_hidden_layers")), int(c.get("hidden_size"))
    h = int(c.get("num_attention_heads"))
    types = c.get("layer_types", None)
    if types is None:  # transformers derives them from full_attention_interval (default 4)
        every = int(c.get("full_attention_interval", 4))
        types = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n_layers)]
    if len(types) != n_layers or any(t not in _LAYER_TYPES for t in types):
        raise unsupported(c, "layer_types", types, f"it needs {n_layers} entries, linear_attention or full_attention")
    c.ignore("full_attention_interval", "output_router_logits", "mlp_only_layers", "decoder_sparse_step")
    # Qwen2's sliding-window switch, left in some Qwen3-Next config.json files: off, so its size is inert
    c.expect("use_sliding_window", (False,), False, "Qwen3-Next / Qwen3.5 attention is global")
    c.ignore("sliding_window", "max_window_layers")
    c.expect("hidden_act", ("silu",), "silu", "Qwen3-Next's MLPs and Gated DeltaNet use SiLU")
    # Qwen3.5's multimodal RoPE sections read one position for text, which is plain RoPE
    rope = read_rope(c, default_fraction=0.25, inert=("mrope_section", "mrope_interleaved"))
    if rope["rope_scaling"]["kind"] != "none":
        raise unsupported(c, "rope_parameters.rope_type", rope["rope_scaling"]["kind"], "default RoPE only")
    bias = bool(c.get("attention_bias", False))
    eps = float(c.get("rms_norm_eps", 1e-6))
    m = {
        "preset": "transformer",
        "layer_pattern": compress_pattern([_LAYER_TYPES[t] for t in types]),
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "head_dim": int(c.get("head_dim", None) or d // h),
        "vocab_size": int(c.get("vocab_size")),
        "d_ff": int(c.get("intermediate_size")),
        "mlp": read_mlp_activation(c, "hidden_act", "silu"),
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "qk_norm": True,
        "attn_output_gate": True,
        "norm_offset": 1.0,
        "norm_eps": eps,
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
        "mixers": {
            "gated_deltanet": {
                "n_heads": int(c.get("linear_num_key_heads")),
                "n_v_heads": int(c.get("linear_num_value_heads")),
                "head_dim": int(c.get("linear_key_head_dim")),
                "v_head_dim": int(c.get("linear_value_head_dim")),
                "conv_width": int(c.get("linear_conv_kernel_dim", 4)),
                "conv_bias": False,
                "norm_eps": eps,
            }
        },
        **rope,
    }
    if c.model_type == "qwen3_next" and int(c.get("num_experts", 512)):
        shared = int(c.get("shared_expert_intermediate_size", 512))
        if not shared:
            raise unsupported(c, "shared_expert_intermediate_size", shared, "Qwen3-Next's experts have a shared one")
        m["moe"] = {
            "n_experts": int(c.get("num_experts")),
            "top_k": int(c.get("num_experts_per_tok", 10)),
            "normalize_top_k": bool(c.get("norm_topk_prob", True)),
            "d_expert": int(c.get("moe_intermediate_size", 512)),
            "d_shared": shared,
            "shared_gate": True,
            "layers": _moe_layers(c, n_layers),
            "aux_loss_weight": float(c.get("router_aux_loss_coef", 0.001)),
        }
    else:
        c.ignore("num_experts", "num_experts_per_tok", "norm_topk_prob", "moe_intermediate_size")
        c.ignore("shared_expert_intermediate_size", "router_aux_loss_coef")
    return m


def _attention_from_hf(t: Tensors, m, a: str) -> dict:
    """Gated attention: q_proj rows per head [query | gate] -> our qkv columns [q | k | v | gate]."""
    d, h, k, e = m.d_model, m.n_heads, m.kv_heads, m.attn_head_dim
    names, shapes = ["q", "k", "v"], {"q": (2 * h * e, d), "k": (k * e, d), "v": (k * e, d)}
    weights = {n: t.take(f"{a}{n}_proj.weight", shapes[n]) for n in names}
    biases = {n: t.take(f"{a}{n}_proj.bias", shapes[n][:1]) for n in names} if m.qkv_bias else {}
    split_q = lambda w: [
        part.reshape((h * e,) + w.shape[1:]) for part in np.split(w.reshape((h, 2 * e) + w.shape[1:]), 2, axis=1)
    ]
    qkv = {}
    for key, parts in (("kernel", weights), ("bias", biases)):
        if parts:
            query, gate = split_q(parts["q"])
            rows = np.concatenate([query, parts["k"], parts["v"], gate])
            qkv[key] = linear_in(rows) if key == "kernel" else rows
    o = {"kernel": linear_in(t.take(a + "o_proj.weight", (d, h * e)))}
    if m.attn_out_bias:
        o["bias"] = t.take(a + "o_proj.bias", (d,))
    return {
        "qkv": qkv,
        "o": o,
        "q_norm": {"scale": t.take(a + "q_norm.weight", (e,))},
        "k_norm": {"scale": t.take(a + "k_norm.weight", (e,))},
    }


def _attention_to_hf(mixer: dict, m, a: str) -> dict[str, np.ndarray]:
    """Inverse of ``_attention_from_hf``."""
    h, k, e = m.n_heads, m.kv_heads, m.attn_head_dim
    out = {a + "o_proj.weight": linear_out(mixer["o"]["kernel"])}
    if m.attn_out_bias:
        out[a + "o_proj.bias"] = f32(mixer["o"]["bias"])
    stored = [("weight", linear_out(mixer["qkv"]["kernel"]))]
    if m.qkv_bias:
        stored.append(("bias", f32(mixer["qkv"]["bias"])))
    for key, rows in stored:
        query, key_rows, value, gate = np.split(rows, np.cumsum([h * e, k * e, k * e]))
        heads = lambda a_: a_.reshape((h, e) + a_.shape[1:])
        out[f"{a}q_proj.{key}"] = np.concatenate([heads(query), heads(gate)], axis=1).reshape(
            (2 * h * e,) + rows.shape[1:]
        )
        out[f"{a}k_proj.{key}"], out[f"{a}v_proj.{key}"] = key_rows, value
    out[a + "q_norm.weight"] = f32(mixer["q_norm"]["scale"])
    out[a + "k_norm.weight"] = f32(mixer["k_norm"]["scale"])
    return out


def deltanet_sizes(m) -> tuple[int, int, int, int]:
    """(key heads, value heads, key width, value width) of the ``gated_deltanet`` layers of ``m``."""
    g = m.mixers.gated_deltanet
    nk = g.n_heads or m.n_heads
    n = g.head_dim or m.d_model // nk
    return nk, g.n_v_heads or nk, n, g.v_head_dim or n


def _fused_groups(m) -> list[tuple[str, int]]:
    """Qwen3-Next's per-key-head groups: in_proj_qkvz rows [q | k | v | z], in_proj_ba rows [b | a]."""
    nk, nv, n, e = deltanet_sizes(m)
    r = nv // nk
    return [("q", n), ("k", n), ("v", r * e), ("z", r * e)], [("b", r), ("a", r)]


def _deltanet_from_hf(t: Tensors, m, a: str, fused: bool) -> dict:
    """Our ``gated_deltanet`` parameters from ``a`` = ``...linear_attn.``."""
    d = m.d_model
    nk, nv, n, e = deltanet_sizes(m)
    channels, width = 2 * nk * n + nv * e, m.mixers.gated_deltanet.conv_width
    if fused:
        parts = {}
        for name, groups in zip(("in_proj_qkvz", "in_proj_ba"), _fused_groups(m)):
            rows = sum(size for _, size in groups)
            w = t.take(f"{a}{name}.weight", (nk * rows, d)).reshape(nk, rows, d)
            for (part, _), block in zip(groups, np.split(w, np.cumsum([s for _, s in groups])[:-1], axis=1)):
                parts[part] = block.reshape(-1, d)  # key head after key head
        qkv, z, b, a_gate = np.concatenate([parts["q"], parts["k"], parts["v"]]), parts["z"], parts["b"], parts["a"]
    else:
        qkv = t.take(a + "in_proj_qkv.weight", (channels, d))
        z = t.take(a + "in_proj_z.weight", (nv * e, d))
        b, a_gate = t.take(a + "in_proj_b.weight", (nv, d)), t.take(a + "in_proj_a.weight", (nv, d))
    return {
        "in_proj_qkv": {"kernel": linear_in(qkv)},
        "in_proj_z": {"kernel": linear_in(z)},
        "in_proj_b": {"kernel": linear_in(b)},
        "in_proj_a": {"kernel": linear_in(a_gate)},
        "conv1d": {"kernel": conv_in(t.take(a + "conv1d.weight", (channels, 1, width)))},
        "A_log": t.take(a + "A_log", (nv,)),
        "dt_bias": t.take(a + "dt_bias", (nv,)),
        "o_norm": {"scale": t.take(a + "norm.weight", (e,))},
        "out_proj": {"kernel": linear_in(t.take(a + "out_proj.weight", (d, nv * e)))},
    }


def _deltanet_to_hf(mixer: dict, m, a: str, fused: bool) -> dict[str, np.ndarray]:
    """Inverse of ``_deltanet_from_hf``."""
    nk, nv, n, e = deltanet_sizes(m)
    rows = {name: linear_out(mixer[f"in_proj_{name}"]["kernel"]) for name in ("qkv", "z", "b", "a")}
    out = {
        a + "conv1d.weight": conv_out(mixer["conv1d"]["kernel"]),
        a + "A_log": f32(mixer["A_log"]),
        a + "dt_bias": f32(mixer["dt_bias"]),
        a + "norm.weight": f32(mixer["o_norm"]["scale"]),
        a + "out_proj.weight": linear_out(mixer["out_proj"]["kernel"]),
    }
    if not fused:
        out.update({f"{a}in_proj_{name}.weight": w for name, w in rows.items()})
        return out
    q, k, v = np.split(rows["qkv"], np.cumsum([nk * n, nk * n]))
    parts = {"q": q, "k": k, "v": v, "z": rows["z"], "b": rows["b"], "a": rows["a"]}
    for name, groups in zip(("in_proj_qkvz", "in_proj_ba"), _fused_groups(m)):
        per_head = [parts[part].reshape(nk, size, -1) for part, size in groups]
        out[f"{a}{name}.weight"] = np.concatenate(per_head, axis=1).reshape(-1, m.d_model)
    return out


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Qwen3-Next / Qwen3.5 text checkpoint; ``raw``: config.json."""
    fused = raw["model_type"] == "qwen3_next"
    d, v, e = m.d_model, m.vocab_size, m.moe
    stem = "model.language_model." if raw["model_type"] == "qwen3_5" else "model."
    for skipped in ("mtp.", "model.visual."):
        t.skip_prefix(skipped)
    p: dict = {"embed": {"embedding": t.take(stem + "embed_tokens.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre = f"{stem}layers.{i}."
        if name == "gated_deltanet":
            mixer = _deltanet_from_hf(t, m, pre + "linear_attn.", fused)
        else:
            mixer = _attention_from_hf(t, m, pre + "self_attn.")
        layer = {
            "mixer_norm": {"scale": t.take(pre + "input_layernorm.weight", (d,))},
            "mixer": mixer,
            "mlp_norm": {"scale": t.take(pre + "post_attention_layernorm.weight", (d,))},
        }
        ff = pre + "mlp."
        if e.at(i):
            layer["moe"] = {
                "router": {"kernel": linear_in(t.take(ff + "gate.weight", (e.n_experts, d)))},
                **experts_from_hf(t, ff + "experts.", e.n_experts, d, e.d_expert),
                "shared": gated_mlp_from_hf(t, ff + "shared_expert.", d, e.d_shared),
                "shared_gate": {"kernel": linear_in(t.take(ff + "shared_expert_gate.weight", (1, d)))},
            }
        else:
            layer["mlp"] = gated_mlp_from_hf(t, ff, d, m.ff_width)
        p[f"layers_{i}"] = layer
    p["final_norm"] = {"scale": t.take(stem + "norm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that ``family`` cannot express."""
    name = ARCHITECTURES[family]
    wanted = {"norm_offset": 1.0, "qk_norm": True, "rotary_fraction": None, "qkv_bias": None, "attn_out_bias": None}
    require_decoder(m, name, {"gated_deltanet", "attention"}, any_head_dim=True, **wanted)
    require_exportable(m.qkv_bias == m.attn_out_bias, "attn_out_bias", m.attn_out_bias, name, "one flag sets both")
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, name, _OTHER)
    g = m.mixers.gated_deltanet
    require_exportable(not g.conv_bias, "mixers.gated_deltanet.conv_bias", g.conv_bias, name, "its conv has no bias")
    require_exportable(
        g.norm_eps == m.norm_eps, "mixers.gated_deltanet.norm_eps", g.norm_eps, name, "rms_norm_eps sets both"
    )
    e = m.moe
    if e.n_experts:
        require_exportable(family == "qwen3_next", "moe.n_experts", e.n_experts, name, "use --family qwen3_next")
        wanted = {"routing": "softmax", "shared_gate": True}
        for key, value in wanted.items():
            require_exportable(getattr(e, key) == value, f"moe.{key}", getattr(e, key), name, _OTHER)
        require_exportable(e.d_shared > 0, "moe.d_shared", e.d_shared, name, "Qwen3-Next always has a shared expert")
    require_block_options(m, name, moe=True, attn_output_gate=True)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    nk, nv, n, e = deltanet_sizes(m)
    out = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": "qwen3_5_text" if family == "qwen3_5" else family,
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.attn_head_dim,
        "layer_types": ["linear_attention" if name == "gated_deltanet" else "full_attention" for name in m.layers],
        "linear_num_key_heads": nk,
        "linear_num_value_heads": nv,
        "linear_key_head_dim": n,
        "linear_value_head_dim": e,
        "linear_conv_kernel_dim": m.mixers.gated_deltanet.conv_width,
        "hidden_act": "silu",
        "attention_bias": m.qkv_bias,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_parameters": {**write_rope(m), "partial_rotary_factor": m.rotary_fraction},
        **EXPORT_TAIL,
    }
    if family == "qwen3_next":
        x = m.moe
        experts = [i for i in range(m.n_layers) if x.at(i)] if x.n_experts else []
        out.update(
            num_experts=x.n_experts,
            num_experts_per_tok=x.top_k if x.n_experts else 1,
            norm_topk_prob=x.normalize_top_k,
            moe_intermediate_size=(x.d_expert or m.ff_width) if x.n_experts else m.ff_width,
            shared_expert_intermediate_size=x.d_shared if x.n_experts else m.ff_width,
            decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(m.n_layers) if i not in experts],
            router_aux_loss_coef=x.aux_loss_weight,
        )
    return out


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``."""
    fused = family == "qwen3_next"
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.norm.weight")
    for i, name in enumerate(m.layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        if name == "gated_deltanet":
            out.update(_deltanet_to_hf(layer["mixer"], m, pre + "linear_attn.", fused))
        else:
            out.update(_attention_to_hf(layer["mixer"], m, pre + "self_attn."))
        ff = pre + "mlp."
        if "moe" in layer:
            moe = layer["moe"]
            out[ff + "gate.weight"] = linear_out(moe["router"]["kernel"])
            out.update(experts_to_hf(moe, ff + "experts."))
            out.update(gated_mlp_to_hf(moe["shared"], ff + "shared_expert."))
            out[ff + "shared_expert_gate.weight"] = linear_out(moe["shared_gate"]["kernel"])
        else:
            out.update(gated_mlp_to_hf(layer["mlp"], ff))
        out[pre + "input_layernorm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "post_attention_layernorm.weight"] = f32(layer["mlp_norm"]["scale"])
    return out
