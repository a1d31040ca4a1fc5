"""xLSTM (``xLSTMForCausalLM``, NX-AI xLSTM-7B: Beck et al. 2025, arXiv:2503.13427) <-> our ``mlstm`` preset.

Each block is x + mlstm(norm_mlstm(x)), then x + ffn(norm_ffn(x)) (RMSNorms), with the mLSTM layer of
mixers/mlstm.py (whose docstring maps its tensors) and a SwiGLU FFN silu(proj_up_gate(x)) * proj_up(x) of width
round_up(hidden_size * ``ffn_proj_factor``, ``ffn_round_up_to_multiple_of``); after the last block ``out_norm``,
``lm_head`` and the logit soft cap ``output_logit_soft_cap`` (our ``logit_softcap``). transformers' xLSTM never ties
its head (it has no tied-weights keys), so ``tie_word_embeddings`` is inert: import is untied, and a tied model of
ours exports its embedding table as ``lm_head``. The cache (``xLSTMCache``) sizes its states with the query/key
and value widths rounded up to 64, so export needs ``d_model * {qk,v}_dim_factor`` to be multiples of 64.

Tensor names (torch [out, in] weights; ours are [in, out]):
  backbone.embeddings.weight [v, d]                        -> embed/embedding
  backbone.blocks.i.norm_mlstm, norm_ffn                   -> layers_i/mixer_norm, mlp_norm
  backbone.blocks.i.mlstm_layer.{q,k,v}                    -> layers_i/mixer/{query,key,value}
  backbone.blocks.i.mlstm_layer.ogate_preact, out_proj     -> layers_i/mixer/ogate_preact, out_proj
  backbone.blocks.i.mlstm_layer.{i,f}gate_preact (+ bias)  -> layers_i/mixer/{i,f}gate_preact, {i,f}gate_bias
  backbone.blocks.i.mlstm_layer.multihead_norm.weight      -> layers_i/mixer/multihead_norm/scale
  weight_mode "fused": qkv_opreact [2 qk + 2 v, d] (q, k, v, o rows) and ifgate_preact [2 h, d] (i, f rows)
  backbone.blocks.i.ffn.proj_up_gate, proj_up, proj_down   -> layers_i/mlp/gate_up (gate first), mlp/down
  backbone.out_norm.weight, lm_head.weight                 -> final_norm/scale, head/kernel
"""

from __future__ import annotations

import math

import numpy as np

from slm_jax.interop.hf_config import (
    EXPORT_TAIL,
    HFConfig,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
)
from slm_jax.interop.hf_weights import Tensors, ends_to_hf, f32, linear_from_hf, linear_in, linear_out

ARCHITECTURE = "xLSTMForCausalLM"
_GATE_NAMES = ("query", "key", "value", "ogate_preact")  # our names of the fused qkv_opreact rows, in order
_HF_NAMES = {"query": "q", "key": "k", "value": "v", "ogate_preact": "ogate_preact", "out_proj": "out_proj"}
# Kernel and precision choices of transformers' xLSTM backend: the same mLSTM in float32.
_KERNEL_ONLY = (
    "chunkwise_kernel",
    "sequence_kernel",
    "step_kernel",
    "mode",
    "return_last_states",
    "autocast_kernel_dtype",
    "inference_state_dtype",
    "max_inference_chunksize",
    "norm_reduction_force_float32",
)


def round_up(x: float, multiple: int) -> int:
    """transformers' ``round_up_to_next_multiple_of``: x rounded up to a multiple of ``multiple``."""
    return int(((x + multiple - 1) // multiple) * multiple)


def _cap(c: HFConfig, key: str, default: float) -> float:
    """A soft cap field as our value: null -> 0 (off); transformers divides by it, so it must be positive."""
    value = c.get(key, default)
    if value is None:
        return 0.0
    if value <= 0:
        raise unsupported(c, key, value, "a soft cap must be positive; null turns it off")
    return float(value)


def _same(c: HFConfig, key: str, alias: str, default: int) -> int:
    """Field ``key`` (hidden_size), which ``alias`` (embedding_dim) must not contradict: transformers fills a null
    one from the other, and builds a broken model when they differ."""
    value, other = c.get(key, default), c.get(alias, None)
    if value is None:
        value = c.get(alias)  # the error naming the missing field, when both are null
    if other is not None and other != value:
        raise unsupported(c, alias, other, f"it must equal {key} ({value}) or be null")
    return int(value)


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for an xLSTM ``config.json``."""
    d, n_layers = _same(c, "hidden_size", "embedding_dim", 4096), _same(c, "num_hidden_layers", "num_blocks", 32)
    c.expect("use_bias", (False,), False, "biases (including on the RMSNorms) are not implemented")
    c.expect("weight_mode", ("single", "fused"), "single")
    c.ignore(*_KERNEL_ONLY)
    # transformers' xLSTMModel applies out_norm whatever add_out_norm says, and never ties lm_head.
    c.ignore("add_out_norm", "tie_word_embeddings")
    factor, multiple = float(c.get("ffn_proj_factor", 2.667)), int(c.get("ffn_round_up_to_multiple_of", 64))
    h = int(c.get("num_heads", 8))
    if d % h:
        raise unsupported(c, "num_heads", h, f"slm_jax needs hidden_size ({d}) divisible by it")
    return {
        "preset": "mlstm",
        "layer_pattern": ["mlstm"],
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "vocab_size": int(c.get("vocab_size", 50304)),
        "d_ff": round_up(d * factor, multiple),
        "mlp": "swiglu",
        "position": "none",  # the mLSTM state carries order
        "norm_eps": float(c.get("norm_eps", 1e-6)),
        "tie_embeddings": False,
        "logit_softcap": _cap(c, "output_logit_soft_cap", 30.0),
        "mixers": {
            "mlstm": {
                "qk_dim_factor": float(c.get("qk_dim_factor", 0.5)),
                "v_dim_factor": float(c.get("v_dim_factor", 1.0)),
                "chunk_size": int(c.get("chunk_size", 64)),
                "gate_soft_cap": _cap(c, "gate_soft_cap", 15.0),
                "eps": float(c.get("eps", 1e-6)),
            }
        },
    }


def _widths(m) -> tuple[int, int, int]:
    """(heads h, query/key width h n, value width h e) of ModelConfig ``m``'s mLSTM layers."""
    o = m.mixers.mlstm
    return o.n_heads or m.n_heads, int(m.d_model * o.qk_dim_factor), int(m.d_model * o.v_dim_factor)


def _mlstm_from_hf(t: Tensors, m, pre: str, fused: bool) -> dict:
    """Our ``mlstm`` mixer's parameters from the tensors of transformers' ``xLSTMLayer`` named ``pre`` + ..."""
    d, (h, qk, v) = m.d_model, _widths(m)
    widths = dict(zip(_GATE_NAMES, (qk, qk, v, v)))
    if fused:
        rows = np.split(t.take(pre + "qkv_opreact.weight", (2 * qk + 2 * v, d)), [qk, 2 * qk, 2 * qk + v])
        mixer = {name: {"kernel": linear_in(w)} for name, w in zip(_GATE_NAMES, rows)}
        gates = np.split(t.take(pre + "ifgate_preact.weight", (2 * h, d)), 2)
        biases = np.split(t.take(pre + "ifgate_preact.bias", (2 * h,)), 2)
    else:
        mixer = {name: linear_from_hf(t, pre + _HF_NAMES[name], (w, d), False) for name, w in widths.items()}
        gates = [t.take(f"{pre}{g}gate_preact.weight", (h, d)) for g in "if"]
        biases = [t.take(f"{pre}{g}gate_preact.bias", (h,)) for g in "if"]
    for g, w, b in zip("if", gates, biases):
        mixer[f"{g}gate_preact"], mixer[f"{g}gate_bias"] = {"kernel": linear_in(w)}, b
    mixer["multihead_norm"] = {"scale": t.take(pre + "multihead_norm.weight", (v,))}
    mixer["out_proj"] = linear_from_hf(t, pre + "out_proj", (d, v), False)
    return mixer


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from an xLSTM checkpoint; ``raw``: config.json."""
    fused = raw.get("weight_mode", "single") == "fused"
    d, f, vocab = m.d_model, m.ff_width, m.vocab_size
    p: dict = {"embed": {"embedding": t.take("backbone.embeddings.weight", (vocab, d))}}
    for i in range(m.n_layers):
        pre = f"backbone.blocks.{i}."
        ffn = pre + "ffn."
        if fused:
            gate_up = t.take(ffn + "proj_up_gate_z.weight", (2 * f, d))
        else:
            gate_up = np.concatenate(
                [t.take(ffn + "proj_up_gate.weight", (f, d)), t.take(ffn + "proj_up.weight", (f, d))]
            )
        p[f"layers_{i}"] = {
            "mixer_norm": {"scale": t.take(pre + "norm_mlstm.weight", (d,))},
            "mixer": _mlstm_from_hf(t, m, pre + "mlstm_layer.", fused),
            "mlp_norm": {"scale": t.take(pre + "norm_ffn.weight", (d,))},
            "mlp": {
                "gate_up": {"kernel": linear_in(gate_up)},
                "down": linear_from_hf(t, ffn + "proj_down", (d, f), False),
            },
        }
    p["final_norm"] = {"scale": t.take("backbone.out_norm.weight", (d,))}
    p["head"] = {"kernel": linear_in(t.take("lm_head.weight", (vocab, d)))}
    return {"params": p}


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that xLSTM cannot express."""
    del family
    require_decoder(m, ARCHITECTURE, {"mlstm"}, position=None, logit_softcap=None)
    require_block_options(m, ARCHITECTURE)
    o = m.mixers.mlstm
    fix = "transformers' xLSTM divides by it; set a positive cap"
    require_exportable(m.logit_softcap > 0, "logit_softcap", m.logit_softcap, ARCHITECTURE, fix)
    require_exportable(o.gate_soft_cap > 0, "mixers.mlstm.gate_soft_cap", o.gate_soft_cap, ARCHITECTURE, fix)
    for key in ("qk_dim_factor", "v_dim_factor"):
        width = m.d_model * getattr(o, key)
        fix = (
            f"its cache rounds d_model * {key} ({width:g}) up to a multiple of 64; pick d_model or {key} to make it one"
        )
        require_exportable(int(width) == round_up(width, 64), f"mixers.mlstm.{key}", getattr(o, key), ARCHITECTURE, fix)


def _ffn_fields(m) -> dict:
    """``ffn_proj_factor`` and ``ffn_round_up_to_multiple_of`` that make transformers build our MLP width f exactly.

    Any multiple > 1 dividing f absorbs the rounding error of d * (f / d); an odd f is its own multiple."""
    f = m.ff_width
    multiple = math.gcd(f, 64) if f % 2 == 0 else f
    factor = f / m.d_model
    assert round_up(m.d_model * factor, multiple) == f, (f, m.d_model)
    return {"ffn_proj_factor": factor, "ffn_round_up_to_multiple_of": multiple}


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    o = m.mixers.mlstm
    h, _, _ = _widths(m)
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "xlstm",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "embedding_dim": m.d_model,
        "num_hidden_layers": m.n_layers,
        "num_blocks": m.n_layers,
        "num_heads": h,
        "use_bias": False,
        "weight_mode": "single",
        "qk_dim_factor": o.qk_dim_factor,
        "v_dim_factor": o.v_dim_factor,
        "chunk_size": o.chunk_size,
        "gate_soft_cap": o.gate_soft_cap,
        "eps": o.eps,
        "norm_eps": m.norm_eps,
        **_ffn_fields(m),
        "output_logit_soft_cap": m.logit_softcap,
        "inference_state_dtype": "float32",
        "tie_word_embeddings": False,  # transformers' xLSTM has a separate lm_head always
        **EXPORT_TAIL,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``."""
    del family
    p = params["params"]
    out = ends_to_hf(p, m.tie_embeddings, "backbone.embeddings.weight", "backbone.out_norm.weight")
    if m.tie_embeddings:  # a tied model: its embedding table is the head
        out["lm_head.weight"] = f32(p["embed"]["embedding"])
    for i in range(m.n_layers):
        layer, pre = p[f"layers_{i}"], f"backbone.blocks.{i}."
        mixer, mix = layer["mixer"], pre + "mlstm_layer."
        for ours, hf in _HF_NAMES.items():
            out[f"{mix}{hf}.weight"] = linear_out(mixer[ours]["kernel"])
        for g in "if":
            out[f"{mix}{g}gate_preact.weight"] = linear_out(mixer[f"{g}gate_preact"]["kernel"])
            out[f"{mix}{g}gate_preact.bias"] = f32(mixer[f"{g}gate_bias"])
        out[mix + "multihead_norm.weight"] = f32(mixer["multihead_norm"]["scale"])
        gate, up = np.split(linear_out(layer["mlp"]["gate_up"]["kernel"]), 2)
        out[pre + "ffn.proj_up_gate.weight"], out[pre + "ffn.proj_up.weight"] = gate, up
        out[pre + "ffn.proj_down.weight"] = linear_out(layer["mlp"]["down"]["kernel"])
        out[pre + "norm_mlstm.weight"] = f32(layer["mixer_norm"]["scale"])
        out[pre + "norm_ffn.weight"] = f32(layer["mlp_norm"]["scale"])
    return out
