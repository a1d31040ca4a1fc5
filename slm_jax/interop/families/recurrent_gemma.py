"""RecurrentGemma (``RecurrentGemmaForCausalLM``, Griffin: De et al. 2024) <-> our ``griffin`` layout.

Blocks cycle ``block_types`` (recurrent -> ``rglru``, attention -> ``local_attention`` with
``attention_window_size``). Differences from our defaults, all config options here: biases on
the recurrent block's and the MLP's projections and on the attention output, partial rotary
(half of each head), (1 + w) RMSNorms, input embeddings times sqrt(d) rounded to bfloat16 (a
bfloat16 buffer in transformers), final-logit soft-capping, and the RG-LRU's reset at
position 0. The MLP hidden width is ``intermediate_size // 2``.

  model.layers.i.temporal_pre_norm / channel_pre_norm  -> layers_i/mixer_norm / mlp_norm
  temporal_block.linear_y, linear_x [w, d] (+bias)     -> mixer/in_proj [d, 2w] (y first: the GeLU branch)
  temporal_block.conv_1d [w, 1, k], bias               -> mixer/conv1d
  temporal_block.rg_lru.recurrent_param [w]            -> mixer/a_param = -recurrent_param
      (transformers: log a = -8 r softplus(p); ours: log a = -c r softplus(-Lambda))
  rg_lru.{input,recurrent}_gate_weight [h, w/h, w/h]   -> mixer/gate_x, gate_a kernel (same x @ W layout)
  rg_lru.{input,recurrent}_gate_bias [h, w/h]          -> mixer/gate_x, gate_a bias [w]
  temporal_block.linear_out (+bias)                    -> mixer/out_proj
  temporal_block.{q,k,v,o}_proj                        -> mixer/qkv, mixer/o (attention layers)
  mlp_block.{gate,up,down}_proj (+bias)                -> mlp/gate_up, mlp/down
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.hf_config import (
    HFConfig,
    bfloat16_round,
    compress_pattern,
    read_mlp_activation,
    read_rope,
    require_block_options,
    require_exportable,
    unsupported,
    write_rope,
)
from slm_jax.interop.hf_weights import Tensors, conv_in, conv_out, f32, head_from_hf, linear_in, linear_out

ARCHITECTURE = "RecurrentGemmaForCausalLM"
_BLOCKS = {"recurrent": "rglru", "attention": "local_attention"}


# --------------------------------------------------------------------------- import


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a RecurrentGemma ``config.json``."""
    d, h = int(c.get("hidden_size")), int(c.get("num_attention_heads"))
    n_layers = int(c.get("num_hidden_layers"))
    blocks = list(c.get("block_types", ["recurrent", "recurrent", "attention"]))
    if not blocks or any(b not in _BLOCKS for b in blocks):
        raise unsupported(c, "block_types", blocks, "use recurrent and attention blocks")
    if c.get("head_dim", d // h) != d // h:
        raise unsupported(
            c, "head_dim", c.raw["head_dim"], f"transformers fixes it to hidden_size / num_attention_heads = {d // h}"
        )
    c.ignore("w_init_variance_scale", "final_w_init_variance_scale")
    rope = read_rope(c, default_fraction=0.5)
    if rope["rope_scaling"]["kind"] != "none":
        raise unsupported(
            c, "rope_parameters.rope_type", rope["rope_scaling"]["kind"], "RecurrentGemma uses default RoPE"
        )
    layers = [_BLOCKS[blocks[i % len(blocks)]] for i in range(n_layers)]
    return {
        "preset": "griffin",
        "layer_pattern": compress_pattern(layers),
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "head_dim": d // h,
        "vocab_size": int(c.get("vocab_size")),
        "d_ff": int(c.get("intermediate_size")) // 2,
        "mlp": read_mlp_activation(c, "hidden_activation", "gelu_pytorch_tanh"),
        "mlp_bias": True,
        "qkv_bias": bool(c.get("attention_bias", False)),
        "attn_out_bias": True,
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "norm_offset": 1.0,
        "embed_scale": bfloat16_round(d**0.5),
        "logit_softcap": float(c.get("logits_soft_cap", 30.0)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", True)),
        **rope,
        "mixers": {
            "local_attention": {"window": int(c.get("attention_window_size", 2048))},
            "rglru": {
                "width": int(c.get("lru_width", None) or d),
                "n_heads": h,
                "conv_width": int(c.get("conv1d_width", 4)),
                "c": 8.0,
                "bias": True,
                "reset_at_zero": True,
            },
        },
    }


def _rows(t: Tensors, names: list[str], shape: tuple) -> np.ndarray:
    return np.concatenate([t.take(n, shape) for n in names], axis=0)


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a RecurrentGemma checkpoint."""
    del raw
    d, v, f = m.d_model, m.vocab_size, m.ff_width
    w, hr = m.mixers.rglru.width, m.mixers.rglru.n_heads or m.n_heads
    bw = w // hr
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre, tb = f"model.layers.{i}.", f"model.layers.{i}.temporal_block."
        if name == "rglru":
            lru = tb + "rg_lru."
            mixer = {
                "in_proj": {
                    "kernel": linear_in(_rows(t, [tb + "linear_y.weight", tb + "linear_x.weight"], (w, d))),
                    "bias": _rows(t, [tb + "linear_y.bias", tb + "linear_x.bias"], (w,)),
                },
                "conv1d": {
                    "kernel": conv_in(t.take(tb + "conv_1d.weight", (w, 1, m.mixers.rglru.conv_width))),
                    "bias": t.take(tb + "conv_1d.bias", (w,)),
                },
                "gate_x": {
                    "kernel": t.take(lru + "input_gate_weight", (hr, bw, bw)),
                    "bias": t.take(lru + "input_gate_bias", (hr, bw)).reshape(w),
                },
                "gate_a": {
                    "kernel": t.take(lru + "recurrent_gate_weight", (hr, bw, bw)),
                    "bias": t.take(lru + "recurrent_gate_bias", (hr, bw)).reshape(w),
                },
                "a_param": -t.take(lru + "recurrent_param", (w,)),
                "out_proj": {
                    "kernel": linear_in(t.take(tb + "linear_out.weight", (d, w))),
                    "bias": t.take(tb + "linear_out.bias", (d,)),
                },
            }
        else:
            h, k, e = m.n_heads, m.kv_heads, m.attn_head_dim
            qkv = np.concatenate(
                [
                    t.take(tb + "q_proj.weight", (h * e, d)),
                    t.take(tb + "k_proj.weight", (k * e, d)),
                    t.take(tb + "v_proj.weight", (k * e, d)),
                ]
            )
            mixer = {
                "qkv": {"kernel": linear_in(qkv)},
                "o": {
                    "kernel": linear_in(t.take(tb + "o_proj.weight", (d, h * e))),
                    "bias": t.take(tb + "o_proj.bias", (d,)),
                },
            }
            if m.qkv_bias:
                mixer["qkv"]["bias"] = np.concatenate(
                    [
                        t.take(tb + "q_proj.bias", (h * e,)),
                        t.take(tb + "k_proj.bias", (k * e,)),
                        t.take(tb + "v_proj.bias", (k * e,)),
                    ]
                )
        mlp = pre + "mlp_block."
        p[f"layers_{i}"] = {
            "mixer_norm": {"scale": t.take(pre + "temporal_pre_norm.weight", (d,))},
            "mixer": mixer,
            "mlp_norm": {"scale": t.take(pre + "channel_pre_norm.weight", (d,))},
            "mlp": {
                "gate_up": {
                    "kernel": linear_in(_rows(t, [mlp + "gate_proj.weight", mlp + "up_proj.weight"], (f, d))),
                    "bias": _rows(t, [mlp + "gate_proj.bias", mlp + "up_proj.bias"], (f,)),
                },
                "down": {
                    "kernel": linear_in(t.take(mlp + "down_proj.weight", (d, f))),
                    "bias": t.take(mlp + "down_proj.bias", (d,)),
                },
            },
        }
    p["final_norm"] = {"scale": t.take("model.final_norm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str = "recurrent_gemma") -> None:
    """Raise a ConfigError naming the first field of ``m`` that RecurrentGemma cannot express."""
    other = "export it as another family (--family) or retrain without it"
    name = ARCHITECTURE
    require_block_options(m, name)
    require_exportable(
        set(m.layers) <= {"rglru", "local_attention"},
        "layer_pattern",
        list(m.pattern),
        name,
        "use rglru and local_attention layers",
    )
    require_exportable(m.mlp == "geglu", "mlp", m.mlp, name, other)
    require_exportable(m.norm_offset == 1.0, "norm_offset", m.norm_offset, name, other)
    require_exportable(
        m.embed_scale == bfloat16_round(m.d_model**0.5),
        "embed_scale",
        m.embed_scale,
        name,
        "it is sqrt(d_model) rounded to bfloat16 there",
    )
    require_exportable(
        m.logit_softcap > 0, "logit_softcap", m.logit_softcap, name, "RecurrentGemma always soft-caps its logits"
    )
    require_exportable(
        m.attn_head_dim * m.n_heads == m.d_model, "head_dim", m.head_dim, name, "it is d_model / n_heads there"
    )
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, name, other)
    require_exportable(not m.qk_norm, "qk_norm", m.qk_norm, name, other)
    require_exportable(
        m.mixers.attention.window == 0,
        "mixers.attention.window",
        m.mixers.attention.window,
        name,
        "only local_attention layers have a window there",
    )
    r = m.mixers.rglru
    require_exportable(r.c == 8.0, "mixers.rglru.c", r.c, name, "it is fixed to 8 there")
    require_exportable(
        r.reset_at_zero, "mixers.rglru.reset_at_zero", r.reset_at_zero, name, "it always resets at position 0"
    )
    require_exportable(
        (r.n_heads or m.n_heads) == m.n_heads,
        "mixers.rglru.n_heads",
        r.n_heads,
        name,
        "the gate blocks follow num_attention_heads there",
    )


def config_to_hf(m, family: str = "recurrent_gemma") -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` as RecurrentGemma."""
    from slm_jax.mixers.registry import build_mixer

    width = build_mixer(m, "rglru").rnn_width
    names = {v: k for k, v in _BLOCKS.items()}
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "recurrent_gemma",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": 2 * m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "lru_width": width,
        "attention_window_size": m.mixers.local_attention.window,
        "conv1d_width": m.mixers.rglru.conv_width,
        "logits_soft_cap": m.logit_softcap,
        "rms_norm_eps": m.norm_eps,
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_parameters": {**write_rope(m), "partial_rotary_factor": m.rotary_fraction},
        "block_types": [names[x] for x in m.pattern],
        "attention_bias": m.qkv_bias,
        "tie_word_embeddings": m.tie_embeddings,
        "dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def params_to_hf(params: dict, m, family: str = "recurrent_gemma") -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array; biases our config leaves out are written as exact zeros."""
    from slm_jax.mixers.registry import build_mixer

    p = params["params"]
    d = m.d_model
    w = build_mixer(m, "rglru").rnn_width
    zeros = lambda n: np.zeros(n, np.float32)
    out = {
        "model.embed_tokens.weight": f32(p["embed"]["embedding"]),
        "model.final_norm.weight": f32(p["final_norm"]["scale"]),
    }
    for i, name in enumerate(m.layers):
        layer, pre, tb = p[f"layers_{i}"], f"model.layers.{i}.", f"model.layers.{i}.temporal_block."
        mix = layer["mixer"]
        if name == "rglru":
            y, x = np.split(linear_out(mix["in_proj"]["kernel"]), 2)
            yb, xb = np.split(f32(mix["in_proj"].get("bias", zeros(2 * w))), 2)
            out.update(
                {
                    tb + "linear_y.weight": y,
                    tb + "linear_x.weight": x,
                    tb + "linear_y.bias": yb,
                    tb + "linear_x.bias": xb,
                }
            )
            out[tb + "linear_out.weight"] = linear_out(mix["out_proj"]["kernel"])
            out[tb + "linear_out.bias"] = f32(mix["out_proj"].get("bias", zeros(d)))
            out[tb + "conv_1d.weight"] = conv_out(mix["conv1d"]["kernel"])
            out[tb + "conv_1d.bias"] = f32(mix["conv1d"]["bias"])
            lru = tb + "rg_lru."
            for ours, theirs in (("gate_x", "input_gate"), ("gate_a", "recurrent_gate")):
                kernel = f32(mix[ours]["kernel"])
                out[lru + theirs + "_weight"] = kernel
                out[lru + theirs + "_bias"] = f32(mix[ours]["bias"]).reshape(kernel.shape[0], kernel.shape[1])
            out[lru + "recurrent_param"] = -f32(mix["a_param"])
        else:
            h, k, e = m.n_heads, m.kv_heads, m.attn_head_dim
            qkv = linear_out(mix["qkv"]["kernel"])
            splits = np.cumsum([h * e, k * e])
            for n, wgt in zip("qkv", np.split(qkv, splits)):
                out[tb + f"{n}_proj.weight"] = wgt
            if m.qkv_bias:
                for n, b in zip("qkv", np.split(f32(mix["qkv"]["bias"]), splits)):
                    out[tb + f"{n}_proj.bias"] = b
            out[tb + "o_proj.weight"] = linear_out(mix["o"]["kernel"])
            out[tb + "o_proj.bias"] = f32(mix["o"].get("bias", zeros(d)))
        mlp, mp = layer["mlp"], pre + "mlp_block."
        gate, up = np.split(linear_out(mlp["gate_up"]["kernel"]), 2)
        gb, ub = np.split(f32(mlp["gate_up"].get("bias", zeros(2 * m.ff_width))), 2)
        out.update(
            {
                mp + "gate_proj.weight": gate,
                mp + "up_proj.weight": up,
                mp + "gate_proj.bias": gb,
                mp + "up_proj.bias": ub,
            }
        )
        out[mp + "down_proj.weight"] = linear_out(mlp["down"]["kernel"])
        out[mp + "down_proj.bias"] = f32(mlp["down"].get("bias", zeros(d)))
        out[pre + "temporal_pre_norm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "channel_pre_norm.weight"] = f32(layer["mlp_norm"]["scale"])
    if not m.tie_embeddings:
        out["lm_head.weight"] = linear_out(p["head"]["kernel"])
    return out
