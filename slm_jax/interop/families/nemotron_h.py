"""Nemotron-H (``NemotronHForCausalLM``, NVIDIA 2025, arXiv:2504.03624) <-> our single-op layers: ``mamba2`` and
``attention`` blocks without an MLP (``model.mixer_mlp`` false) and ``mlp`` blocks without a mixer.

Every layer is x + op(norm(x)) with one op, by ``layers_block_type`` (older files: the ``hybrid_override_pattern``
string): "linear_attention" / "M" a Mamba-2 mixer (heads of ``mamba_head_dim``, ``n_groups`` groups of
``ssm_state_size``; mamba.py maps the tensors), "full_attention" / "*" grouped-query attention without position
embeddings (our ``position: none``; no biases, ``head_dim`` its own field), "mlp" / "-" the plain squared-ReLU MLP
down(relu(up(x))^2) (our ``relu2``) and "moe" / "E" a mixture of such MLPs: an ``mlp`` layer that ``model.moe.layers``
selects. Its router is DeepSeek-V3's: sigmoid scores, a choice steered by ``e_score_correction_bias`` (our
``moe.score_bias``) among the ``topk_group`` best of ``n_group`` expert groups, weights normalised
(``norm_topk_prob``) and times ``routed_scaling_factor`` (``moe.scale``), plus a shared relu2 expert of width
``moe_shared_expert_intermediate_size``. The layer's one norm is our ``mixer_norm`` on a mixer block and ``mlp_norm``
on an MLP block.

Tensor names (torch [out, in] weights; ours are [in, out]; saved under ``backbone.``, loaded as ``model.``):
  backbone.embeddings.weight, norm_f.weight, lm_head.weight -> embed/embedding, final_norm/scale, head/kernel
  backbone.layers.i.norm.weight                 -> layers_i/mixer_norm/scale (mixer) or mlp_norm/scale (mlp)
  backbone.layers.i.mixer.* (Mamba-2)           -> layers_i/mixer/* (mamba.py's Mamba-2 mapping)
  backbone.layers.i.mixer.{q,k,v,o}_proj        -> layers_i/mixer/qkv (concatenated), o (bamba.py)
  backbone.layers.i.mixer.{up,down}_proj        -> layers_i/mlp/up, down
  backbone.layers.i.mixer.gate.weight [E, d], gate.e_score_correction_bias [E] -> layers_i/moe/router, score_bias
  backbone.layers.i.mixer.experts.j.{up,down}_proj -> layers_i/moe/{up,down}/kernel[j] (stacked [E, in, out])
  backbone.layers.i.mixer.shared_experts.{up,down}_proj -> layers_i/moe/shared/up, down
``tie_word_embeddings`` is inert (transformers' model keeps ``lm_head`` apart whatever it says), so an import is
untied and a tied model exports its embedding table as ``lm_head`` too. Multi-token-prediction heads (``mtp.*``,
``num_nextn_predict_layers``) are not part of the forward pass: skipped.
"""

from __future__ import annotations

import numpy as np

from slm_jax.config import MLP_LAYER
from slm_jax.interop.families.bamba import attention_from_hf, attention_to_hf
from slm_jax.interop.families.mamba import mamba2_from_hf, mamba2_to_hf, require_mamba2_options
from slm_jax.interop.hf_config import (
    EXPORT_TAIL,
    HFConfig,
    compress_pattern,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
)
from slm_jax.interop.hf_weights import Tensors, ends_to_hf, f32, head_from_hf, linear_from_hf, linear_in, linear_out

ARCHITECTURE = "NemotronHForCausalLM"
_OPS = {"linear_attention": "mamba2", "full_attention": "attention", "mlp": MLP_LAYER, "moe": MLP_LAYER}
_SYMBOLS = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
_MOE_FIELDS = (  # the experts' fields: inert without "moe" layers (transformers writes them anyway)
    "n_routed_experts",
    "moe_intermediate_size",
    "moe_shared_expert_intermediate_size",
    "moe_latent_size",
    "num_experts_per_tok",
    "routed_scaling_factor",
    "n_group",
    "topk_group",
    "norm_topk_prob",
)
_INERT = (  # initialisation, kernels, training and generation switches, and fields transformers' model never reads
    "time_step_floor",
    "rescale_prenorm_residual",
    "residual_in_fp32",
    "use_mamba_kernels",
    "mamba_ssm_cache_dtype",
    "num_logits_to_keep",
    "output_router_logits",
    "attention_bias",  # NemotronHAttention has no biases whatever this says
    "mamba_proj_bias",  # the Mamba-2 projections' biases follow use_bias
    "expand",  # the Mamba-2 width is mamba_num_heads * mamba_head_dim
    "num_hidden_layers",  # derived from layers_block_type
    "num_nextn_predict_layers",  # multi-token prediction heads, skipped
    "mtp_layers_block_type",
    "mtp_hybrid_override_pattern",
    "tie_word_embeddings",  # NemotronHForCausalLM never ties: its lm_head is its own tensor whatever this says
    "n_shared_experts",  # transformers builds one shared expert whatever this says
    "moe_shared_expert_overlap",  # a kernel-scheduling switch
)


def _layer_types(c: HFConfig) -> list[str]:
    """``layers_block_type``, or the older ``hybrid_override_pattern`` string spelled out."""
    types = c.get("layers_block_type", None)
    if types is None:
        pattern = c.get("hybrid_override_pattern")
        if any(s not in _SYMBOLS for s in pattern):
            raise unsupported(c, "hybrid_override_pattern", pattern, "its symbols are M, *, - and E")
        types = [_SYMBOLS[s] for s in pattern]
    else:
        c.ignore("hybrid_override_pattern")
    if not types or any(t not in _OPS for t in types):
        raise unsupported(c, "layers_block_type", types, "its entries are linear_attention, full_attention, mlp, moe")
    return types


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Nemotron-H ``config.json``."""
    types = _layer_types(c)
    d, h = int(c.get("hidden_size", 4096)), int(c.get("num_attention_heads", 32))
    c.ignore(*_INERT)
    c.expect("mlp_hidden_act", ("relu2",), "relu2", "Nemotron-H's MLP is the squared ReLU")
    c.expect("mamba_hidden_act", ("silu",), "silu", "the Mamba-2 mixer uses SiLU")
    c.expect("use_bias", (False,), False, "in_proj/out_proj biases of the Mamba-2 mixer are not implemented")
    c.expect("sliding_window", (None,), None, "Nemotron-H attention is global")
    c.get("use_conv_bias", True)  # False: imported as a zero conv bias (exact)
    limit = c.get("time_step_limit", (0.0, float("inf")))
    if list(limit) != [0.0, float("inf")]:
        raise unsupported(c, "time_step_limit", list(limit), "clamping dt is not implemented; only (0, inf) is")
    heads, head_dim = int(c.get("mamba_num_heads", 128)), int(c.get("mamba_head_dim", 64))
    if heads * head_dim % d:
        why = f"mamba_num_heads * mamba_head_dim must be a multiple of hidden_size ({d})"
        raise unsupported(c, "mamba_num_heads", heads, why)
    m = {
        "preset": "transformer",
        "layer_pattern": compress_pattern([_OPS[t] for t in types]),
        "n_layers": len(types),
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": int(c.get("num_key_value_heads", None) or h),
        "head_dim": int(c.get("head_dim", None) or d // h),
        "vocab_size": int(c.get("vocab_size", 131072)),
        "d_ff": int(c.get("intermediate_size", 21504)),
        "mlp": "relu2",
        "mlp_bias": bool(c.get("mlp_bias", False)),
        "mixer_mlp": False,
        "position": "none",
        "norm_eps": float(c.get("layer_norm_epsilon", 1e-5)),
        "tie_embeddings": False,
        "mixers": {
            "mamba2": {
                "d_state": int(c.get("ssm_state_size", 128)),
                "expand": heads * head_dim // d,
                "head_dim": head_dim,
                "n_groups": int(c.get("n_groups", 8)),
                "conv_width": int(c.get("conv_kernel", 4)),
                "chunk_size": int(c.get("chunk_size", 128)),
                "dt_min": float(c.get("time_step_min", 0.001)),
                "dt_max": float(c.get("time_step_max", 0.1)),
            }
        },
    }
    experts = [i for i, t in enumerate(types) if t == "moe"]
    if not experts:
        c.ignore(*_MOE_FIELDS)
        return m
    if m["mlp_bias"]:
        raise unsupported(c, "mlp_bias", True, "our mixture-of-experts layers have no biases")
    c.expect("moe_latent_size", (None,), None, "latent expert projections are not implemented")
    m["moe"] = {
        "n_experts": int(c.get("n_routed_experts", 8)),
        "top_k": int(c.get("num_experts_per_tok", 2)),
        "routing": "sigmoid",
        "normalize_top_k": bool(c.get("norm_topk_prob", True)),
        "score_bias": True,
        "n_groups": int(c.get("n_group", 1)),
        "top_groups": int(c.get("topk_group", 1)),
        "scale": float(c.get("routed_scaling_factor", 1.0)),
        "d_expert": int(c.get("moe_intermediate_size", 7688)),
        "d_shared": int(c.get("moe_shared_expert_intermediate_size", 7688)),
        "layers": experts,
        "aux_loss_weight": 0.0,  # balanced by the score bias, not by an auxiliary loss
    }
    return m


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Nemotron-H checkpoint; ``raw``: config.json."""
    conv_bias = bool(raw.get("use_conv_bias", True))
    top = "backbone." if t.has("backbone.embeddings.weight") else "model."
    d, f, v = m.d_model, m.ff_width, m.vocab_size
    p: dict = {"embed": {"embedding": t.take(top + "embeddings.weight", (v, d))}}
    for i, name in enumerate(m.layers):
        pre = f"{top}layers.{i}."
        norm = {"scale": t.take(pre + "norm.weight", (d,))}
        if name == MLP_LAYER and m.moe.at(i):
            p[f"layers_{i}"] = {"mlp_norm": norm, "moe": _moe_from_hf(t, m, pre + "mixer.")}
            continue
        if name == MLP_LAYER:
            p[f"layers_{i}"] = {"mlp_norm": norm, "mlp": _mlp_from_hf(t, pre + "mixer.", d, f, m.mlp_bias)}
            continue
        if name == "mamba2":
            mixer = mamba2_from_hf(t, m, pre + "mixer.", conv_bias)
        else:
            mixer = attention_from_hf(t, m, pre + "mixer.")
        p[f"layers_{i}"] = {"mixer_norm": norm, "mixer": mixer}
    p["final_norm"] = {"scale": t.take(top + "norm_f.weight", (d,))}
    p.update(head_from_hf(t, False, p["embed"]["embedding"]))
    t.skip_prefix("mtp.")
    return {"params": p}


def _mlp_from_hf(t: Tensors, pre: str, d: int, f: int, bias: bool) -> dict:
    """``pre`` + ``{up,down}_proj`` as our plain MLP {up, down}."""
    return {
        "up": linear_from_hf(t, pre + "up_proj", (f, d), bias),
        "down": linear_from_hf(t, pre + "down_proj", (d, f), bias),
    }


def _moe_from_hf(t: Tensors, m, pre: str) -> dict:
    """A NemotronHMoE at ``pre`` as our MoE: router, score bias, stacked plain experts, shared expert."""
    d, e = m.d_model, m.moe
    experts = [_mlp_from_hf(t, f"{pre}experts.{j}.", d, e.d_expert, False) for j in range(e.n_experts)]
    return {
        "router": {"kernel": linear_in(t.take(pre + "gate.weight", (e.n_experts, d)))},
        "score_bias": t.take(pre + "gate.e_score_correction_bias", (e.n_experts,)),
        **{k: {"kernel": np.stack([x[k]["kernel"] for x in experts])} for k in ("up", "down")},
        "shared": _mlp_from_hf(t, pre + "shared_experts.", d, e.d_shared, False),
    }


def _moe_to_hf(moe: dict, pre: str) -> dict[str, np.ndarray]:
    """Inverse of ``_moe_from_hf``; a model without a score bias exports exact zeros."""
    n = moe["router"]["kernel"].shape[-1]
    out = {
        pre + "gate.weight": linear_out(moe["router"]["kernel"]),
        pre + "gate.e_score_correction_bias": f32(moe.get("score_bias", np.zeros(n))),
        pre + "shared_experts.up_proj.weight": linear_out(moe["shared"]["up"]["kernel"]),
        pre + "shared_experts.down_proj.weight": linear_out(moe["shared"]["down"]["kernel"]),
    }
    for j in range(n):
        for proj in ("up", "down"):
            out[f"{pre}experts.{j}.{proj}_proj.weight"] = linear_out(moe[proj]["kernel"][j])
    return out


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that Nemotron-H cannot express."""
    del family
    fix = "Nemotron-H layers hold one op each: set model.mixer_mlp=false and give the MLPs their own mlp layers"
    require_exportable(not m.mixer_mlp, "mixer_mlp", m.mixer_mlp, ARCHITECTURE, fix)
    layers = {"mamba2", "attention", MLP_LAYER}
    free = {"mlp_bias": None, "rotary_fraction": None}  # no RoPE: its fraction is moot
    require_decoder(m, ARCHITECTURE, layers, any_head_dim=True, mlp="relu2", position="none", **free)
    e = m.moe
    if e.n_experts:
        require_exportable(e.routing == "sigmoid", "moe.routing", e.routing, ARCHITECTURE, "its router is sigmoid")
        why = "its MoE layers always have a shared expert and no gate on it"
        require_exportable(e.d_shared > 0, "moe.d_shared", e.d_shared, ARCHITECTURE, why)
        require_exportable(not e.shared_gate, "moe.shared_gate", e.shared_gate, ARCHITECTURE, why)
    require_block_options(m, ARCHITECTURE, moe=True)
    require_mamba2_options(m, ARCHITECTURE)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    mc, e = m.mixers.mamba2, m.moe
    types = {"mamba2": "linear_attention", "attention": "full_attention", MLP_LAYER: "mlp"}
    experts = {  # the router's fields; transformers' defaults when there are no experts
        "n_routed_experts": e.n_experts,
        "num_experts_per_tok": e.top_k,
        "moe_intermediate_size": e.d_expert or m.ff_width,
        "moe_shared_expert_intermediate_size": e.d_shared,
        "norm_topk_prob": e.normalize_top_k,
        "routed_scaling_factor": e.scale,
        "n_group": e.n_groups,
        "topk_group": e.top_groups,
        "moe_latent_size": None,
    }
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "nemotron_h",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "layers_block_type": ["moe" if e.at(i) else types[name] for i, name in enumerate(m.layers)],
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.attn_head_dim,
        "intermediate_size": m.ff_width,
        "mlp_hidden_act": "relu2",
        "mlp_bias": m.mlp_bias,
        "mamba_num_heads": mc.expand * m.d_model // mc.head_dim,
        "mamba_head_dim": mc.head_dim,
        "n_groups": mc.n_groups,
        "ssm_state_size": mc.d_state,
        "conv_kernel": mc.conv_width,
        "expand": mc.expand,
        "chunk_size": mc.chunk_size,
        "time_step_min": mc.dt_min,
        "time_step_max": mc.dt_max,
        "use_conv_bias": True,
        "use_bias": False,
        "layer_norm_epsilon": m.norm_eps,
        "tie_word_embeddings": False,
        **(experts if e.n_experts else {}),
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params`` (under ``backbone.``, as transformers saves)."""
    del family
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "backbone.embeddings.weight", "backbone.norm_f.weight")
    if m.tie_embeddings:  # transformers' Nemotron-H never ties, so a tied head is saved as its own copy
        out["lm_head.weight"] = f32(p["embed"]["embedding"])
    for i, name in enumerate(m.layers):
        layer, pre = p[f"layers_{i}"], f"backbone.layers.{i}."
        if "moe" in layer:
            out[pre + "norm.weight"] = f32(layer["mlp_norm"]["scale"])
            out.update(_moe_to_hf(layer["moe"], pre + "mixer."))
            continue
        if name == MLP_LAYER:
            out[pre + "norm.weight"] = f32(layer["mlp_norm"]["scale"])
            for proj in ("up", "down"):
                out[f"{pre}mixer.{proj}_proj.weight"] = linear_out(layer["mlp"][proj]["kernel"])
                if m.mlp_bias:
                    out[f"{pre}mixer.{proj}_proj.bias"] = f32(layer["mlp"][proj]["bias"])
            continue
        out[pre + "norm.weight"] = f32(layer["mixer_norm"]["scale"])
        if name == "mamba2":
            out.update(mamba2_to_hf(layer["mixer"], pre + "mixer."))
        else:
            out.update(attention_to_hf(layer["mixer"], m, pre + "mixer."))
    return out
