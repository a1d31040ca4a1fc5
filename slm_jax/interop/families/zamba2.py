"""Zamba2 (``Zamba2ForCausalLM``, Zyphra 2024, arXiv:2411.15242) <-> our ``mamba2`` layers with weight-shared
attention blocks (``model.shared_block``, models/shared_block.py).

Every layer is x + mamba(input_layernorm(x)) (no MLP). A "hybrid" layer (``layers_block_type``) first runs a
shared transformer on [x ; embeddings] (2 d wide): input_layernorm -> attention (heads of 2 d / n_heads, scores
times (head_dim / 2)^-0.5: our ``attn_scale``; RoPE when ``use_mem_rope``) -> pre_ff_layernorm -> gated MLP,
with no residual inside, then its own ``linear`` [d, d]; the result joins only the Mamba layer's input,
x + mamba(norm(x + y)) (our ``add_to: mixer_input``). The k-th hybrid layer uses block k % ``num_mem_blocks``,
whose tensors are saved once under its first hybrid layer; per-use adapters (rank ``adapter_rank``) sit in that
block's lists at index k: always on the MLP's ``gate_up_proj``, on q / k / v with
``use_shared_attention_adapter``. The Mamba-2 mixer's gated norm uses eps 1e-5 whatever ``rms_norm_eps`` is.

Tensor names (torch [out, in] weights; ours are [in, out]); L: a hybrid layer, F: the first hybrid layer of
block b = k % num_mem_blocks:
  model.layers.i.{input_layernorm, mamba.*}                     -> layers_i/{mixer_norm, mixer} (mamba.py's names)
  model.layers.L.mamba_decoder.{input_layernorm, mamba.*}       -> layers_L/{mixer_norm, mixer}
  model.layers.F.shared_transformer.input_layernorm [2d]        -> shared/block_b/attn_norm
  model.layers.F.shared_transformer.self_attn.{q,k,v,o}_proj    -> shared/block_b/attention/{qkv, o}
  model.layers.F.shared_transformer.pre_ff_layernorm            -> shared/block_b/mlp_norm
  model.layers.F.shared_transformer.feed_forward.gate_up_proj   -> shared/block_b/mlp/gate_up (gate first); down_proj
  ....self_attn.linear_{q,k,v}_adapter_list.k.{0,1}             -> shared/block_b/use_k/{q,k,v}_adapter/{down,up}
  ....feed_forward.gate_up_proj_adapter_list.k.{0,1}            -> shared/block_b/use_k/mlp_adapter/{down,up}
  model.layers.L.linear                                         -> shared/block_b/use_k/proj
  model.embed_tokens, model.final_layernorm, lm_head            -> embed, final_norm, head
"""

from __future__ import annotations

import numpy as np

from slm_jax.interop.families.bamba import attention_from_hf, attention_to_hf
from slm_jax.interop.families.mamba import mamba2_from_hf, mamba2_to_hf, require_mamba2_options
from slm_jax.interop.hf_config import (
    EXPORT_TAIL,
    HFConfig,
    read_rope,
    require_block_options,
    require_decoder,
    require_exportable,
    unsupported,
    write_rope,
)
from slm_jax.interop.hf_weights import Tensors, ends_to_hf, f32, head_from_hf, linear_from_hf, linear_out

ARCHITECTURE = "Zamba2ForCausalLM"
_ACTIVATIONS = {"gelu": "geglu_erf", "silu": "swiglu", "gelu_pytorch_tanh": "geglu"}  # hidden_act -> our MLP kind
_MAMBA_EPS = 1e-5  # Zamba2RMSNormGated's eps, fixed in transformers; our mixer uses model.norm_eps


def _head_dim(d: int, h: int) -> int:
    """The shared attention's head width: the 2 d input split over h heads."""
    return 2 * d // h


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a Zamba2 ``config.json``."""
    n_layers, d = int(c.get("num_hidden_layers", 54)), int(c.get("hidden_size", 2560))
    h = int(c.get("num_attention_heads", 32))
    if (2 * d) % h:
        raise unsupported(c, "num_attention_heads", h, f"it must divide 2 * hidden_size ({2 * d})")
    types = [{"mamba": "linear_attention"}.get(t, t) for t in c.get("layers_block_type")]
    if len(types) != n_layers or any(t not in ("linear_attention", "hybrid") for t in types):
        raise unsupported(c, "layers_block_type", types, f"it needs {n_layers} entries, each mamba or hybrid")
    # Derived again by Zamba2Config from the fields above; training, kernels and generation switches.
    c.ignore("attention_hidden_size", "attention_head_dim", "kv_channels", "mamba_headdim", "num_query_groups")
    c.ignore("hybrid_layer_ids", "use_mamba_kernels", "use_mem_eff_path", "num_logits_to_keep", "time_step_floor")
    c.ignore("use_conv_bias")  # Zamba2's conv1d always has a bias
    c.ignore("use_long_context")  # only raises max_position_embeddings in transformers
    c.expect("add_bias_linear", (False,), False, "biases on the Mamba-2 and MLP projections are not implemented")
    eps = float(c.get("rms_norm_eps", 1e-5))
    if eps != _MAMBA_EPS:
        raise unsupported(c, "rms_norm_eps", eps, f"our Mamba-2 gated norm shares it, and Zamba2's is {_MAMBA_EPS}")
    rope = read_rope(c)
    if rope["rope_scaling"]["kind"] != "none" or rope["rotary_fraction"] != 1.0:
        raise unsupported(c, "rope_parameters", c.raw.get("rope_parameters"), "Zamba2 uses default full RoPE")
    expand, heads = c.get("mamba_expand", 2), int(c.get("n_mamba_heads", 8))
    if int(expand) != expand or (int(expand) * d) % heads:
        raise unsupported(c, "n_mamba_heads", heads, "mamba_expand must be an integer and mamba_expand * d divisible")
    kv, e = int(c.get("num_key_value_heads", None) or h), _head_dim(d, h)
    m = {
        "preset": "transformer",
        "layer_pattern": ["mamba2"],
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": h,
        "n_kv_heads": kv,
        "head_dim": e,
        "vocab_size": int(c.get("vocab_size", 32000)),
        "mlp": "none",
        "position": "rope" if c.get("use_mem_rope", False) else "none",
        "attn_scale": (e / 2) ** -0.5,
        "norm_eps": eps,
        "tie_embeddings": bool(c.get("tie_word_embeddings", True)),
        "mixers": {
            "mamba2": {
                "d_state": int(c.get("mamba_d_state", 64)),
                "expand": int(expand),
                "head_dim": int(expand) * d // heads,
                "n_groups": int(c.get("mamba_ngroups", 1)),
                "conv_width": int(c.get("mamba_d_conv", 4)),
                "chunk_size": int(c.get("chunk_size", 256)),
                "dt_min": float(c.get("time_step_min", 0.001)),
                "dt_max": float(c.get("time_step_max", 0.1)),
                "dt_floor": float(c.get("time_step_min", 0.001)),  # the prefill's time_step_limit (min, inf)
            }
        },
        **rope,
    }
    hybrid = [i for i, t in enumerate(types) if t == "hybrid"]
    blocks, rank = int(c.get("num_mem_blocks", 1)), int(c.get("adapter_rank", 128))
    if not m["tie_embeddings"]:  # transformers ties the shared blocks only together with the head: one copy per use
        blocks = len(hybrid)
    attn_adapters = bool(c.get("use_shared_attention_adapter", False))
    act = c.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise unsupported(c, "hidden_act", act, f"implemented: {', '.join(_ACTIVATIONS)}")
    if attn_adapters and kv != h:
        raise unsupported(c, "num_key_value_heads", kv, "the key / value adapters need num_attention_heads of them")
    ff = int(c.get("intermediate_size", None) or 4 * d)
    if hybrid:
        m["shared_block"] = {
            "n_blocks": min(blocks, len(hybrid)),
            "layers": hybrid,
            "concat_embed": True,
            "head_dim": e,
            "mlp": _ACTIVATIONS[act],
            "d_ff": ff,
            "attn_adapter_rank": rank if attn_adapters else 0,
            "mlp_adapter_rank": rank,
            "out_proj": True,
            "add_to": "mixer_input",
        }
    return m


def _low_rank_from_hf(t: Tensors, pre: str, d_in: int, d_out: int, r: int) -> dict:
    """An adapter ``pre`` + ``{0,1}.weight`` (nn.Sequential of two Linears) as our LowRank {down, up}."""
    return {
        "down": linear_from_hf(t, pre + "0", (r, d_in), False),
        "up": linear_from_hf(t, pre + "1", (d_out, r), False),
    }


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from a Zamba2 checkpoint; ``raw``: config.json."""
    del raw
    s, d, v = m.shared_block, m.d_model, m.vocab_size
    p: dict = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))}}
    for i in range(m.n_layers):
        pre = f"model.layers.{i}." + ("mamba_decoder." if i in s.layers else "")
        p[f"layers_{i}"] = {
            "mixer_norm": {"scale": t.take(pre + "input_layernorm.weight", (d,))},
            "mixer": mamba2_from_hf(t, m, pre + "mamba.", True),
        }
    if s.n_blocks:
        p["shared"] = _shared_from_hf(t, m)
    p["final_norm"] = {"scale": t.take("model.final_layernorm.weight", (d,))}
    p.update(head_from_hf(t, m.tie_embeddings, p["embed"]["embedding"]))
    return {"params": p}


def _shared_from_hf(t: Tensors, m) -> dict:
    """``shared/block_b/...`` from the tensors of each block's first hybrid layer (module doc)."""
    s, d, f = m.shared_block, m.d_model, m.shared_block.d_ff
    width = m.n_heads * m.attn_head_dim  # each of q / k / v: adapters need n_kv_heads == n_heads (config_from_hf)
    blocks: dict = {}
    for k, layer in enumerate(s.layers):
        b = k % s.n_blocks
        src = f"model.layers.{s.layers[b]}.shared_transformer."
        if k < s.n_blocks:
            ff = src + "feed_forward."
            blocks[f"block_{b}"] = {
                "attn_norm": {"scale": t.take(src + "input_layernorm.weight", (2 * d,))},
                "attention": attention_from_hf(t, m, src + "self_attn.", d_in=2 * d),
                "mlp_norm": {"scale": t.take(src + "pre_ff_layernorm.weight", (d,))},
                "mlp": {
                    "gate_up": linear_from_hf(t, ff + "gate_up_proj", (2 * f, d), False),
                    "down": linear_from_hf(t, ff + "down_proj", (d, f), False),
                },
            }
        else:
            t.skip_prefix(f"model.layers.{layer}.shared_transformer.")  # a tied copy of block b, if the file has one
        use = {"proj": linear_from_hf(t, f"model.layers.{layer}.linear", (d, d), False)}
        r = s.mlp_adapter_rank
        use["mlp_adapter"] = _low_rank_from_hf(t, f"{src}feed_forward.gate_up_proj_adapter_list.{k}.", d, 2 * f, r)
        for n in "qkv" if s.attn_adapter_rank else "":
            pre = f"{src}self_attn.linear_{n}_adapter_list.{k}."
            use[f"{n}_adapter"] = _low_rank_from_hf(t, pre, 2 * d, width, s.attn_adapter_rank)
        blocks[f"block_{b}"][f"use_{k}"] = use
    for layer in s.layers[: s.n_blocks]:  # an untied copy also holds the adapters of other uses, which never run
        src = f"model.layers.{layer}.shared_transformer."
        for name in ("feed_forward.gate_up_proj", "self_attn.linear_q", "self_attn.linear_k", "self_attn.linear_v"):
            t.skip_prefix(f"{src}{name}_adapter_list.")
    return blocks


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that Zamba2 cannot express."""
    del family
    other = "export it as another family (--family) or retrain without it"
    require_decoder(m, ARCHITECTURE, {"mamba2"}, any_head_dim=True, mlp="none", position=None)
    require_exportable(m.position in ("rope", "none"), "position", m.position, ARCHITECTURE, other)
    require_exportable(m.rope_scaling.kind == "none", "rope_scaling.kind", m.rope_scaling.kind, ARCHITECTURE, other)
    e = _head_dim(m.d_model, m.n_heads)
    ok = m.attn_head_dim == e and (2 * m.d_model) % m.n_heads == 0
    require_exportable(ok, "head_dim", m.head_dim, ARCHITECTURE, f"it is 2 d_model / n_heads = {e} there")
    require_exportable(m.norm_eps == _MAMBA_EPS, "norm_eps", m.norm_eps, ARCHITECTURE, "its Mamba-2 norm uses 1e-5")
    require_block_options(m, ARCHITECTURE, attn_scale=(e / 2) ** -0.5)
    require_mamba2_options(m, ARCHITECTURE, dt_floor=m.mixers.mamba2.dt_min)  # time_step_min is both
    s = m.shared_block
    if not s.n_blocks:
        return
    wanted = {"concat_embed": True, "out_proj": True, "add_to": "mixer_input", "head_dim": None}
    for key, value in wanted.items():
        have = getattr(s, key)
        require_exportable(value is None or have == value, f"shared_block.{key}", have, ARCHITECTURE, other)
    require_exportable(s.head_dim in (0, e), "shared_block.head_dim", s.head_dim, ARCHITECTURE, f"it is {e} there")
    kinds = {ours: hf for hf, ours in _ACTIVATIONS.items()}
    require_exportable(s.mlp in kinds, "shared_block.mlp", s.mlp, ARCHITECTURE, f"use one of {', '.join(kinds)}")
    rank = s.mlp_adapter_rank
    require_exportable(rank > 0, "shared_block.mlp_adapter_rank", rank, ARCHITECTURE, "every use has an MLP adapter")
    fix = f"it is 0 or mlp_adapter_rank ({rank}) there"
    require_exportable(
        s.attn_adapter_rank in (0, rank), "shared_block.attn_adapter_rank", s.attn_adapter_rank, ARCHITECTURE, fix
    )
    ok = not s.attn_adapter_rank or m.kv_heads == m.n_heads
    require_exportable(ok, "n_kv_heads", m.n_kv_heads, ARCHITECTURE, "its key / value adapters need n_heads of them")


def _copies(m) -> int:
    """How many shared blocks the checkpoint stores: transformers ties them only together with the head, so an
    untied model gets one copy per use (exact: the copies are equal)."""
    return m.shared_block.n_blocks if m.tie_embeddings else len(m.shared_block.layers)


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` (after ``check_exportable``)."""
    del family
    s, mc = m.shared_block, m.mixers.mamba2
    kinds = {ours: hf for hf, ours in _ACTIVATIONS.items()}
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "zamba2",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "num_hidden_layers": m.n_layers,
        "layers_block_type": ["hybrid" if i in s.layers else "linear_attention" for i in range(m.n_layers)],
        "mamba_d_state": mc.d_state,
        "mamba_d_conv": mc.conv_width,
        "mamba_expand": mc.expand,
        "mamba_ngroups": mc.n_groups,
        "n_mamba_heads": mc.expand * m.d_model // mc.head_dim,
        "chunk_size": mc.chunk_size,
        "time_step_min": mc.dt_min,
        "time_step_max": mc.dt_max,
        "add_bias_linear": False,
        "use_conv_bias": True,
        "intermediate_size": s.d_ff or m.ff_width,
        "hidden_act": kinds.get(s.mlp, "gelu"),
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "num_mem_blocks": max(_copies(m), 1),
        "use_shared_attention_adapter": bool(s.attn_adapter_rank),
        "adapter_rank": s.mlp_adapter_rank or 128,
        "use_mem_rope": m.position == "rope",
        "rope_parameters": write_rope(m),
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        **EXPORT_TAIL,
    }


def _low_rank_to_hf(lr: dict, pre: str) -> dict[str, np.ndarray]:
    """Inverse of ``_low_rank_from_hf``."""
    return {pre + "0.weight": linear_out(lr["down"]["kernel"]), pre + "1.weight": linear_out(lr["up"]["kernel"])}


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params``; each shared block is written once."""
    del family
    p, s = params["params"], m.shared_block
    out = ends_to_hf(p, m.tie_embeddings, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i in range(m.n_layers):
        layer, pre = p[f"layers_{i}"], f"model.layers.{i}." + ("mamba_decoder." if i in s.layers else "")
        out[pre + "input_layernorm.weight"] = f32(layer["mixer_norm"]["scale"])
        out.update(mamba2_to_hf(layer["mixer"], pre + "mamba."))
    copies = _copies(m)
    for k, layer in enumerate(s.layers):
        block = p["shared"][f"block_{k % s.n_blocks}"]
        src = f"model.layers.{s.layers[k % copies]}.shared_transformer."
        if k < copies:
            out[src + "input_layernorm.weight"] = f32(block["attn_norm"]["scale"])
            out.update(attention_to_hf(block["attention"], m, src + "self_attn."))
            out[src + "pre_ff_layernorm.weight"] = f32(block["mlp_norm"]["scale"])
            out[src + "feed_forward.gate_up_proj.weight"] = linear_out(block["mlp"]["gate_up"]["kernel"])
            out[src + "feed_forward.down_proj.weight"] = linear_out(block["mlp"]["down"]["kernel"])
        use = block[f"use_{k}"]
        out[f"model.layers.{layer}.linear.weight"] = linear_out(use["proj"]["kernel"])
        out.update(_low_rank_to_hf(use["mlp_adapter"], f"{src}feed_forward.gate_up_proj_adapter_list.{k}."))
        for n in "qkv" if s.attn_adapter_rank else "":
            out.update(_low_rank_to_hf(use[f"{n}_adapter"], f"{src}self_attn.linear_{n}_adapter_list.{k}."))
    return out
