"""Mamba (``MambaForCausalLM``) and Mamba-2 (``Mamba2ForCausalLM``) <-> our ``mamba`` / ``mamba2`` presets.

Both are x + mixer(norm(x)) with no MLP; our mixers already use Hugging Face's parameter names
(mixers/mamba.py, mixers/mamba2.py), so conversion is a rename plus transposes:

  backbone.embeddings.weight [v, d]          -> embed/embedding
  backbone.layers.i.norm.weight [d]          -> layers_i/mixer_norm/scale
  backbone.layers.i.mixer.in_proj.weight     -> layers_i/mixer/in_proj/kernel (transposed)
  backbone.layers.i.mixer.conv1d.{weight,bias} [c, 1, k], [c] -> conv1d/{kernel [k, c], bias}
  Mamba:   x_proj.weight, dt_proj.{weight,bias}, A_log [w, n], D [w]
  Mamba-2: dt_bias [h], A_log [h], D [h], norm.weight [w] (the gated RMSNorm)
  backbone.layers.i.mixer.out_proj.weight    -> out_proj/kernel
  backbone.norm_f.weight, lm_head.weight     -> final_norm/scale, head/kernel
"""

from __future__ import annotations

import math

import numpy as np

from slm_jax.interop.hf_config import HFConfig, require_block_options, require_exportable, unsupported
from slm_jax.interop.hf_weights import Tensors, conv_in, conv_out, f32, head_from_hf, linear_in, linear_out

ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}
_INIT_ONLY = (  # fields that only shape the random initialisation or pick a kernel
    "time_step_scale",
    "time_step_init_scheme",
    "time_step_floor",
    "rescale_prenorm_residual",
    "residual_in_fp32",
    "use_mambapy",
    "use_associative_scan",
    "intermediate_size",
)


# --------------------------------------------------------------------------- import


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Mamba or Mamba-2 ``config.json``."""
    t = c.model_type
    d = int(c.get("hidden_size"))
    c.expect("hidden_act", ("silu",), "silu", "the Mamba mixers use SiLU")
    c.expect("use_bias", (False,), False, "in_proj/out_proj biases are not implemented")
    c.get("use_conv_bias", True)  # False: imported as a zero conv bias (exact)
    c.ignore(*_INIT_ONLY)
    expand = c.get("expand", 2)
    if int(expand) != expand:
        raise unsupported(c, "expand", expand, "slm_jax needs an integer expansion")
    m = {
        "preset": t,
        "layer_pattern": [t],
        "mlp": "none",
        "n_layers": int(c.get("num_hidden_layers")),
        "d_model": d,
        "vocab_size": int(c.get("vocab_size")),
        "norm_eps": float(c.get("layer_norm_epsilon", 1e-5)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", t == "mamba")),
    }
    dt = {"dt_min": float(c.get("time_step_min", 0.001)), "dt_max": float(c.get("time_step_max", 0.1))}
    rank = c.get("time_step_rank", "auto")
    if t == "mamba":
        m["mixers"] = {
            "mamba": {
                "d_state": int(c.get("state_size", 16)),
                "expand": int(expand),
                "conv_width": int(c.get("conv_kernel", 4)),
                "dt_rank": math.ceil(d / 16) if rank == "auto" else int(rank),
                **dt,
            }
        }
        return m
    heads, head_dim = int(c.get("num_heads", 128)), int(c.get("head_dim", 64))
    if heads * head_dim != int(expand) * d:
        raise unsupported(
            c, "num_heads", heads, f"num_heads * head_dim must equal expand * hidden_size = {int(expand) * d}"
        )
    limit = c.get("time_step_limit", (0.0, float("inf")))
    if list(limit) != [0.0, float("inf")]:
        raise unsupported(c, "time_step_limit", list(limit), "clamping dt is not implemented; only (0, inf) is")
    m["mixers"] = {
        "mamba2": {
            "d_state": int(c.get("state_size", 128)),
            "expand": int(expand),
            "head_dim": head_dim,
            "n_groups": int(c.get("n_groups", 8)),
            "conv_width": int(c.get("conv_kernel", 4)),
            "chunk_size": int(c.get("chunk_size", 256)),
            **dt,
        }
    }
    return m


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Mamba / Mamba-2 checkpoint; ``raw``: config.json."""
    model_type, conv_bias = raw["model_type"], bool(raw.get("use_conv_bias", True))
    d, v = m.d_model, m.vocab_size
    embed = "backbone.embeddings.weight" if t.has("backbone.embeddings.weight") else "backbone.embedding.weight"
    p: dict = {"embed": {"embedding": t.take(embed, (v, d))}}
    for i in range(m.n_layers):
        pre = f"backbone.layers.{i}.mixer."
        mix = mamba_from_hf(t, m, pre, conv_bias) if model_type == "mamba" else mamba2_from_hf(t, m, pre, conv_bias)
        p[f"layers_{i}"] = {"mixer_norm": {"scale": t.take(f"backbone.layers.{i}.norm.weight", (d,))}, "mixer": mix}
    p["final_norm"] = {"scale": t.take("backbone.norm_f.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


def _conv(t: Tensors, pre: str, channels: int, k: int, conv_bias: bool) -> dict:
    bias = t.take(pre + "conv1d.bias", (channels,)) if conv_bias else np.zeros(channels, np.float32)
    return {"kernel": conv_in(t.take(pre + "conv1d.weight", (channels, 1, k))), "bias": bias}


def mamba_from_hf(t: Tensors, m, pre: str, conv_bias: bool) -> dict:
    """Our ``mamba`` mixer's parameters from HF Mamba mixer tensors named ``pre`` + ... (also Jamba's, with its
    ``dt_layernorm`` / ``b_layernorm`` / ``c_layernorm`` when ``mixers.mamba.dt_bc_norms``)."""
    d, mc = m.d_model, m.mixers.mamba
    w, n, r = mc.expand * d, mc.d_state, mc.dt_rank or math.ceil(d / 16)
    norms = {}
    if mc.dt_bc_norms:
        for ours, hf, size in (("dt_norm", "dt", r), ("B_norm", "b", n), ("C_norm", "c", n)):
            norms[ours] = {"scale": t.take(f"{pre}{hf}_layernorm.weight", (size,))}
    return norms | {
        "in_proj": {"kernel": linear_in(t.take(pre + "in_proj.weight", (2 * w, d)))},
        "conv1d": _conv(t, pre, w, mc.conv_width, conv_bias),
        "x_proj": {"kernel": linear_in(t.take(pre + "x_proj.weight", (r + 2 * n, w)))},
        "dt_proj": {
            "kernel": linear_in(t.take(pre + "dt_proj.weight", (w, r))),
            "bias": t.take(pre + "dt_proj.bias", (w,)),
        },
        "A_log": t.take(pre + "A_log", (w, n)),
        "D": t.take(pre + "D", (w,)),
        "out_proj": {"kernel": linear_in(t.take(pre + "out_proj.weight", (d, w)))},
    }


def mamba2_from_hf(t: Tensors, m, pre: str, conv_bias: bool) -> dict:
    """Our ``mamba2`` mixer's parameters from HF Mamba-2 mixer tensors named ``pre`` + ... (also Bamba's)."""
    d, mc = m.d_model, m.mixers.mamba2
    w = mc.d_inner or mc.expand * d
    h, gn = w // mc.head_dim, mc.n_groups * mc.d_state
    norm = {} if mc.gate_norm == "none" else {"norm": {"scale": t.take(pre + "norm.weight", (w,))}}
    return {
        "in_proj": {"kernel": linear_in(t.take(pre + "in_proj.weight", (2 * w + 2 * gn + h, d)))},
        "conv1d": _conv(t, pre, w + 2 * gn, mc.conv_width, conv_bias),
        "dt_bias": t.take(pre + "dt_bias", (h,)),
        "A_log": t.take(pre + "A_log", (h,)),
        "D": t.take(pre + "D", (h,)),
        **norm,
        "out_proj": {"kernel": linear_in(t.take(pre + "out_proj.weight", (d, w)))},
    }


# --------------------------------------------------------------------------- export


def require_mamba2_options(
    m, family: str, gate_norms: tuple[str, ...] = ("after_gate",), any_width: bool = False, dt_floor: float = 0.0
):
    """Refuse, naming the field, ``mixers.mamba2`` options that ``family``'s Mamba-2 cannot express: a gate norm
    placement outside ``gate_norms``, an inner width other than expand * d_model (unless ``any_width``: the family
    stores the width), a dt floor other than ``dt_floor`` (the family's own clamp; 0: none)."""
    mc, other = m.mixers.mamba2, "export it as another family (--family) or retrain without it"
    width_ok = any_width or mc.d_inner in (0, mc.expand * m.d_model)
    require_exportable(width_ok, "mixers.mamba2.d_inner", mc.d_inner, family, "its width is expand * d_model")
    require_exportable(mc.gate_norm in gate_norms, "mixers.mamba2.gate_norm", mc.gate_norm, family, other)
    floor = f"it clamps dt at {dt_floor}" if dt_floor else "it does not clamp dt"
    require_exportable(mc.dt_floor == dt_floor, "mixers.mamba2.dt_floor", mc.dt_floor, family, floor)


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ``m`` that ``family`` cannot express."""
    name = ARCHITECTURES[family]
    require_block_options(m, name)
    if family == "mamba2":
        require_mamba2_options(m, name)
    other = "export it as another family (--family) or retrain without it"
    require_exportable(
        set(m.layers) == {family}, "layer_pattern", list(m.pattern), name, f"every layer must be {family}"
    )
    require_exportable(m.mlp == "none", "mlp", m.mlp, name, "Mamba blocks have no MLP")
    require_exportable(m.embed_scale == 1.0, "embed_scale", m.embed_scale, name, other)
    require_exportable(m.norm_offset == 0.0, "norm_offset", m.norm_offset, name, other)
    require_exportable(m.logit_softcap == 0, "logit_softcap", m.logit_softcap, name, other)
    if family == "mamba":
        require_exportable(
            m.mixers.mamba.selective, "mixers.mamba.selective", m.mixers.mamba.selective, name, "HF Mamba is selective"
        )
        norms = m.mixers.mamba.dt_bc_norms
        require_exportable(not norms, "mixers.mamba.dt_bc_norms", norms, name, "export it as jamba (--family jamba)")


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` as Mamba / Mamba-2."""
    out = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "num_hidden_layers": m.n_layers,
        "layer_norm_epsilon": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "use_bias": False,
        "use_conv_bias": True,
        "hidden_act": "silu",
        "dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if family == "mamba":
        mc = m.mixers.mamba
        out.update(
            state_size=mc.d_state,
            expand=mc.expand,
            conv_kernel=mc.conv_width,
            time_step_rank=mc.dt_rank or math.ceil(m.d_model / 16),
            time_step_min=mc.dt_min,
            time_step_max=mc.dt_max,
            intermediate_size=mc.expand * m.d_model,
        )
    else:
        mc = m.mixers.mamba2
        out.update(
            state_size=mc.d_state,
            expand=mc.expand,
            conv_kernel=mc.conv_width,
            num_heads=mc.expand * m.d_model // mc.head_dim,
            head_dim=mc.head_dim,
            n_groups=mc.n_groups,
            chunk_size=mc.chunk_size,
            time_step_min=mc.dt_min,
            time_step_max=mc.dt_max,
        )
    return out


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``."""
    p = params["params"]
    out = {
        "backbone.embeddings.weight": f32(p["embed"]["embedding"]),
        "backbone.norm_f.weight": f32(p["final_norm"]["scale"]),
    }
    for i in range(m.n_layers):
        layer, pre = p[f"layers_{i}"], f"backbone.layers.{i}.mixer."
        mix = layer["mixer"]
        out[f"backbone.layers.{i}.norm.weight"] = f32(layer["mixer_norm"]["scale"])
        out.update(mamba2_to_hf(mix, pre) if family == "mamba2" else mamba_to_hf(mix, pre))
    if not m.tie_embeddings:
        out["lm_head.weight"] = linear_out(p["head"]["kernel"])
    return out


def mamba_to_hf(mix: dict, pre: str) -> dict[str, np.ndarray]:
    """HF Mamba mixer tensors ``pre`` + name for our ``mamba`` mixer's parameters ``mix`` (also Jamba's)."""
    out = {
        pre + "in_proj.weight": linear_out(mix["in_proj"]["kernel"]),
        pre + "conv1d.weight": conv_out(mix["conv1d"]["kernel"]),
        pre + "conv1d.bias": f32(mix["conv1d"]["bias"]),
        pre + "x_proj.weight": linear_out(mix["x_proj"]["kernel"]),
        pre + "dt_proj.weight": linear_out(mix["dt_proj"]["kernel"]),
        pre + "dt_proj.bias": f32(mix["dt_proj"]["bias"]),
        pre + "A_log": f32(mix["A_log"]),
        pre + "D": f32(mix["D"]),
        pre + "out_proj.weight": linear_out(mix["out_proj"]["kernel"]),
    }
    for ours, hf in (("dt_norm", "dt"), ("B_norm", "b"), ("C_norm", "c")):
        if ours in mix:
            out[f"{pre}{hf}_layernorm.weight"] = f32(mix[ours]["scale"])
    return out


def mamba2_to_hf(mix: dict, pre: str) -> dict[str, np.ndarray]:
    """HF Mamba-2 mixer tensors ``pre`` + name for our ``mamba2`` mixer's parameters ``mix`` (also Bamba's)."""
    return {
        pre + "in_proj.weight": linear_out(mix["in_proj"]["kernel"]),
        pre + "conv1d.weight": conv_out(mix["conv1d"]["kernel"]),
        pre + "conv1d.bias": f32(mix["conv1d"]["bias"]),
        pre + "dt_bias": f32(mix["dt_bias"]),
        pre + "A_log": f32(mix["A_log"]),
        pre + "D": f32(mix["D"]),
        **({pre + "norm.weight": f32(mix["norm"]["scale"])} if "norm" in mix else {}),
        pre + "out_proj.weight": linear_out(mix["out_proj"]["kernel"]),
    }
