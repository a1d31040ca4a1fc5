"""ModernBERT masked-LM models (ModernBertForMaskedLM; Warner et al. 2024, arXiv:2412.13663) <-> a pre-norm encoder.

ModernBERT is LayerNorm(word) -> per layer x + attn(LN(x)) (layer 0 without that LN), x + GeGLU(LN(x))
-> final LN -> the head dense -> GELU -> LN -> tied decoder + bias. LayerNorms have no bias unless
``norm_bias``. Global attention on ``full_attention`` layers (every ``global_attn_every_n_layers``-th,
from layer 0), a symmetric window on ``sliding_attention`` layers: token i sees j when
|i - j| <= local_attention // 2, our ``window = local_attention // 2 + 1`` (|i - j| < window). RoPE
bases differ: the global layers use ``model.rope_theta``, the local ones
``model.mixers.local_attention.rope_theta``. Ours: ``norm: layer``, ``embed_norm``,
``first_mixer_norm: false``, ``mlp: geglu_erf`` (``hidden_activation: gelu`` is the exact GELU),
``mlm_head_transform`` (bias = ``classifier_bias``), ``head_bias`` (= ``decoder_bias``), ``causal: false``.
The vocabulary maps as for BERT (families/bert.py): our vocab_size = HF's, our extra mask-id row is
imported as zeros and dropped on export.

Tensor names (torch [out, in] weights; ours [in, out]); L = ``model.layers.i.``:
  model.embeddings.tok_embeddings.weight      -> embed/embedding (+ a zero row V)
  model.embeddings.norm                       -> embed_norm
  L attn_norm (absent on layer 0)             -> layers_i/mixer_norm
  L attn.Wqkv [3 d, d] (q, k, v blocks)       -> layers_i/mixer/qkv (the same column order)
  L attn.Wo                                   -> layers_i/mixer/o
  L mlp_norm                                  -> layers_i/mlp_norm
  L mlp.Wi [2 f, d] (input, gate)             -> layers_i/mlp/gate_up (HF's activated "input" half is our gate)
  L mlp.Wo                                    -> layers_i/mlp/down
  model.final_norm                            -> final_norm
  head.dense, head.norm                       -> mlm_transform, mlm_transform_norm
  decoder.bias, decoder.weight (untied only)  -> head_bias, head/kernel
"""

from __future__ import annotations

import numpy as np

from slm_jax.errors import CheckpointError
from slm_jax.interop.hf_config import (
    HFConfig,
    compress_pattern,
    require_block_options,
    require_exportable,
    unsupported,
)
from slm_jax.interop.hf_weights import Tensors, f32, linear_in, linear_out

ARCHITECTURE = "ModernBertForMaskedLM"
_MLP = {"gelu": "geglu_erf", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu", "silu": "swiglu"}
_TYPES = {"full_attention": "attention", "sliding_attention": "local_attention"}
_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}  # transformers' defaults
# Read and left alone: they change speed, training or other heads, never the masked-LM logits.
_INERT = (
    "initializer_cutoff_factor",
    "embedding_dropout",
    "mlp_dropout",
    "classifier_dropout",
    "classifier_pooling",  # sequence classification only
    "cls_token_id",
    "deterministic_flash_attn",
    "reference_compile",  # torch.compile switch of older files
    "repad_logits_with_grad",  # older unpadding implementation detail
    "sparse_prediction",  # drops unlabelled positions only when labels are passed
    "sparse_pred_ignore_index",
)


# --------------------------------------------------------------------------- import


def _rope_thetas(c: HFConfig) -> dict[str, float]:
    """RoPE base per layer type from ``rope_parameters`` (nested per type) or older ``*_rope_theta`` fields."""
    thetas = dict(_THETA)
    thetas["full_attention"] = float(c.get("global_rope_theta", thetas["full_attention"]))
    thetas["sliding_attention"] = float(c.get("local_rope_theta", thetas["sliding_attention"]))
    if c.get("rope_scaling", None):
        raise unsupported(c, "rope_scaling", c.raw["rope_scaling"], "RoPE scaling is not implemented for ModernBERT")
    for kind, params in (c.get("rope_parameters", None) or {}).items():
        params = dict(params or {})
        if kind not in thetas:
            raise unsupported(c, "rope_parameters", kind, "layer types are full_attention and sliding_attention")
        if params.pop("rope_type", "default") != "default":
            raise unsupported(c, f"rope_parameters.{kind}.rope_type", c.raw["rope_parameters"][kind], "only default")
        thetas[kind] = float(params.pop("rope_theta", thetas[kind]))
        if params:
            name = sorted(params)[0]
            raise unsupported(c, f"rope_parameters.{kind}.{name}", params[name], "not used by default RoPE")
    return thetas


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a ModernBERT ``config.json``."""
    d, h = int(c.get("hidden_size", 768)), int(c.get("num_attention_heads", 12))
    n_layers = int(c.get("num_hidden_layers", 22))
    every = int(c.get("global_attn_every_n_layers", 3))
    types = c.get("layer_types", None) or [
        "sliding_attention" if i % every else "full_attention" for i in range(n_layers)
    ]
    if len(types) != n_layers or any(t not in _TYPES for t in types):
        raise unsupported(c, "layer_types", types, f"need {n_layers} entries of full_attention / sliding_attention")
    act = c.expect("hidden_activation", tuple(_MLP), "gelu", "implemented: gelu (exact), gelu_pytorch_tanh, silu")
    c.expect("classifier_activation", ("gelu",), "gelu", "the masked-LM head transform uses the exact GELU")
    bias = bool(c.get("attention_bias", False))
    norm_bias = bool(c.get("norm_bias", False))
    thetas = _rope_thetas(c)
    c.ignore(*_INERT)
    return {
        "preset": "modernbert_like",
        "layer_pattern": compress_pattern([_TYPES[t] for t in types]),
        "causal": False,
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "vocab_size": int(c.get("vocab_size", 50368)),
        "d_ff": int(c.get("intermediate_size", 1152)),
        "mlp": _MLP[act],
        "mlp_bias": bool(c.get("mlp_bias", False)),
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "norm": "layer",
        "norm_bias": norm_bias,
        "norm_eps": float(c.get("norm_eps", 1e-5)),
        "embed_norm": True,
        "first_mixer_norm": False,
        "rope_theta": thetas["full_attention"],
        "mixers": {
            "local_attention": {
                "window": int(c.get("local_attention", 128)) // 2 + 1,
                "rope_theta": thetas["sliding_attention"],
            }
        },
        "mlm_head_transform": True,
        "mlm_head_transform_bias": bool(c.get("classifier_bias", False)),
        "head_bias": bool(c.get("decoder_bias", True)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", True)),
    }


def _norm(t: Tensors, name: str, d: int, bias: bool) -> dict:
    out = {"scale": t.take(name + ".weight", (d,))}
    if bias:
        out["bias"] = t.take(name + ".bias", (d,))
    return out


def _dense(t: Tensors, name: str, d_in: int, d_out: int, bias: bool) -> dict:
    out = {"kernel": linear_in(t.take(name + ".weight", (d_out, d_in)))}
    if bias:
        out["bias"] = t.take(name + ".bias", (d_out,))
    return out


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from the tensors; ``raw``: config.json."""
    d, f, v, nb = m.d_model, m.ff_width, m.vocab_size, m.norm_bias
    words = t.take("model.embeddings.tok_embeddings.weight", (v, d))
    p: dict = {
        "embed": {"embedding": np.concatenate([words, np.zeros((1, d), np.float32)])},  # row v: our mask id
        "embed_norm": _norm(t, "model.embeddings.norm", d, nb),
    }
    for i in range(m.n_layers):
        pre = f"model.layers.{i}."
        layer = {
            "mixer": {
                "qkv": _dense(t, pre + "attn.Wqkv", d, 3 * d, m.qkv_bias),
                "o": _dense(t, pre + "attn.Wo", d, d, m.attn_out_bias),
            },
            "mlp_norm": _norm(t, pre + "mlp_norm", d, nb),
            "mlp": {
                "gate_up": _dense(t, pre + "mlp.Wi", d, 2 * f, m.mlp_bias),
                "down": _dense(t, pre + "mlp.Wo", f, d, m.mlp_bias),
            },
        }
        if i > 0:
            layer["mixer_norm"] = _norm(t, pre + "attn_norm", d, nb)
        p[f"layers_{i}"] = layer
    p["final_norm"] = _norm(t, "model.final_norm", d, nb)
    p["mlm_transform"] = _dense(t, "head.dense", d, d, m.mlm_head_transform_bias)
    p["mlm_transform_norm"] = _norm(t, "head.norm", d, nb)
    if m.head_bias:
        p["head_bias"] = t.take("decoder.bias", (v,))
    if not m.tie_embeddings:
        p["head"] = {"kernel": linear_in(t.take("decoder.weight", (v, d)))}
    elif t.has("decoder.weight") and not np.array_equal(t.take("decoder.weight", (v, d)), words):
        raise CheckpointError(
            f"{t.where} has tie_word_embeddings true but a decoder.weight unlike the embedding table; "
            "set it to false in config.json."
        )
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that ModernBERT cannot express."""
    require_block_options(m, ARCHITECTURE)
    fix = "start from an imported ModernBERT run or export as another family"
    require_exportable(
        set(m.layers) <= {"attention", "local_attention"}, "layer_pattern", list(m.pattern), ARCHITECTURE, fix
    )
    require_exportable(
        m.mixers.attention.window == 0, "mixers.attention.window", m.mixers.attention.window, ARCHITECTURE, fix
    )
    local = m.mixers.local_attention.window
    require_exportable(
        "local_attention" not in m.layers or local >= 2,
        "mixers.local_attention.window",
        local,
        ARCHITECTURE,
        "ModernBERT's smallest window sees one neighbour on each side (window 2)",
    )
    require_exportable(
        m.mlp in _MLP.values(), "mlp", m.mlp, ARCHITECTURE, "ModernBERT's MLP is gated: geglu_erf, geglu or swiglu"
    )
    require_exportable(m.qkv_bias == m.attn_out_bias, "qkv_bias", m.qkv_bias, ARCHITECTURE, "one attention_bias")
    fixed = {
        "causal": False,
        "n_kv_heads": m.n_heads if m.n_kv_heads else 0,
        "head_dim": m.d_model // m.n_heads if m.head_dim else 0,
        "qk_norm": False,
        "norm": "layer",
        "norm_position": "pre",
        "embed_norm": True,
        "first_mixer_norm": False,
        "position": "rope",
        "rotary_fraction": 1.0,
        "mlm_head_transform": True,
        "embed_scale": 1.0,
        "logit_softcap": 0.0,
    }
    for key, value in fixed.items():
        require_exportable(getattr(m, key) == value, key, getattr(m, key), ARCHITECTURE, f"it must be {value!r}; {fix}")
    require_exportable(
        m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, ARCHITECTURE, "no RoPE scaling there"
    )


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    local = m.mixers.local_attention
    kinds = {"attention": "full_attention", "local_attention": "sliding_attention"}
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "modernbert",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.ff_width,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "hidden_activation": {v: k for k, v in reversed(_MLP.items())}[m.mlp],
        "classifier_activation": "gelu",
        "norm_eps": m.norm_eps,
        "norm_bias": m.norm_bias,
        "attention_bias": m.qkv_bias,
        "mlp_bias": m.mlp_bias,
        "classifier_bias": m.mlm_head_transform_bias,
        "decoder_bias": m.head_bias,
        "tie_word_embeddings": m.tie_embeddings,
        "layer_types": [kinds[name] for name in m.layers],
        "local_attention": 2 * (local.window - 1),
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": m.rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local.rope_theta or m.rope_theta},
        },
        "dtype": "float32",
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "cls_token_id": None,
        "sep_token_id": None,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params`` (``{"params": ...}``)."""
    p = params["params"]

    def put(name: str, leaf: dict) -> dict:
        if "kernel" in leaf:
            out = {name + ".weight": linear_out(leaf["kernel"])}
        else:
            out = {name + ".weight": f32(leaf["scale"])}
        if "bias" in leaf:
            out[name + ".bias"] = f32(leaf["bias"])
        return out

    out = {
        "model.embeddings.tok_embeddings.weight": f32(p["embed"]["embedding"])[: m.vocab_size],  # drop our mask row
        **put("model.embeddings.norm", p["embed_norm"]),
        **put("model.final_norm", p["final_norm"]),
        **put("head.dense", p["mlm_transform"]),
        **put("head.norm", p["mlm_transform_norm"]),
    }
    for i in range(m.n_layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}."
        out.update(put(pre + "attn.Wqkv", layer["mixer"]["qkv"]))
        out.update(put(pre + "attn.Wo", layer["mixer"]["o"]))
        out.update(put(pre + "mlp_norm", layer["mlp_norm"]))
        out.update(put(pre + "mlp.Wi", layer["mlp"]["gate_up"]))
        out.update(put(pre + "mlp.Wo", layer["mlp"]["down"]))
        if i > 0:
            out.update(put(pre + "attn_norm", layer["mixer_norm"]))
    if m.head_bias:
        out["decoder.bias"] = f32(p["head_bias"])
    if not m.tie_embeddings:
        out["decoder.weight"] = linear_out(p["head"]["kernel"])
    return out
