"""Reading a Hugging Face ``config.json`` strictly: every field is mapped, checked or known to be inert.

``HFConfig`` hands out fields one by one and ``finish()`` rejects any field nobody read, so a
checkpoint whose config has an option we do not implement (a new RoPE type, a quantization
config, per-layer rope parameters, ...) fails with the field's name instead of converting into
a model that computes something else. Shared readers for RoPE, activations and layer types
live here too; the family converters (``families/``) hold the per-architecture mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slm_jax.errors import CheckpointError

_REQUIRED = object()

# Fields that never change the forward pass in float32 inference: metadata, token ids,
# training-time dropout and init, generation defaults, caching switches.
INERT = {
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "use_cache",
    "initializer_range",
    "max_position_embeddings",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "finetuning_task",
    "is_decoder",
    "is_encoder_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "torchscript",
    "use_bfloat16",
    "pruned_heads",
    "chunk_size_feed_forward",
    "tf_legacy_loss",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "cross_attention_hidden_size",
}


class HFConfig:
    """A ``config.json`` mapping whose fields are consumed with ``get`` / ``expect``; see module doc."""

    def __init__(self, raw: dict, where: str):
        self.raw = dict(raw)
        self.where = where
        self.model_type = str(raw.get("model_type", ""))
        self._read: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        """The field's value, or ``default`` when absent (the transformers class default)."""
        self._read.add(key)
        if key in self.raw:
            return self.raw[key]
        if default is _REQUIRED:
            raise CheckpointError(
                f"{self.where} lacks the field {key!r}, which a {self.model_type} model needs; add it to config.json."
            )
        return default

    def expect(self, key: str, allowed: tuple, default: Any, why: str = "") -> Any:
        """The field's value, which must be one of ``allowed`` (else an error naming the field)."""
        value = self.get(key, default)
        if value not in allowed:
            raise unsupported(self, key, value, why or f"slm_jax supports only {', '.join(map(repr, allowed))}")
        return value

    def ignore(self, *keys: str) -> None:
        """Mark fields as read: they do not change the converted model's outputs."""
        self._read.update(keys)

    def finish(self) -> None:
        """Raise on the first field that was neither read nor known to be inert."""
        left = sorted(k for k in self.raw if k not in self._read and k not in INERT and not k.startswith("_"))
        if left:
            raise CheckpointError(
                f"{self.where} has the field {left[0]!r} (= {json.dumps(self.raw[left[0]])[:80]}), "
                f"which the {self.model_type} converter does not implement; a silent approximation "
                "is refused, so remove the field only if it does not change the model."
            )


def unsupported(c: HFConfig, key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(
        f"{c.where}: {key} = {json.dumps(value)[:80]} is not supported ({why}); nothing was converted."
    )


def _special_floats(d: dict) -> Any:
    """transformers 5 writes inf / nan as {"__float__": "Infinity"} (plain JSON has no such numbers)."""
    return float(d["__float__"]) if set(d) == {"__float__"} else d


def load_hf_config(directory: str | Path) -> HFConfig:
    """``HF_DIR/config.json`` as an ``HFConfig``; JSON only, never code (``auto_map`` is refused)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no config.json; pass a Hugging Face model directory (save_pretrained output)."
        )
    try:
        raw = json.loads(path.read_text(), object_hook=_special_floats)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-save the model.") from None
    c = HFConfig(raw, str(path))
    if "auto_map" in raw:
        raise unsupported(c, "auto_map", raw["auto_map"], "it points at remote Python code, which slm_jax never runs")
    if raw.get("quantization_config"):
        raise unsupported(c, "quantization_config", raw["quantization_config"], "convert a non-quantized checkpoint")
    c.ignore("quantization_config")
    return c


# --------------------------------------------------------------------------- shared readers


def read_rope(
    c: HFConfig, default_fraction: float = 1.0, default_theta: float = 10000.0, inert: tuple[str, ...] = ()
) -> dict:
    """Our ``rope_theta``, ``rotary_fraction`` and ``rope_scaling`` fields from either config format; ``inert``:
    parameters that do not change a text model's RoPE (multimodal sections, when every stream has one position).

    transformers 5 writes ``rope_parameters`` {rope_type, rope_theta, partial_rotary_factor, ...};
    older files have top-level ``rope_theta`` / ``partial_rotary_factor`` and ``rope_scaling``.
    The defaults apply when neither format gives a value (a family's own older field names).
    """
    top_theta = c.get("rope_theta", None)
    top_fraction = c.get("partial_rotary_factor", None)
    params = c.get("rope_parameters", None) or c.get("rope_scaling", None) or {}
    key = "rope_parameters" if c.has("rope_parameters") and c.raw["rope_parameters"] else "rope_scaling"
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise unsupported(c, key, params, "RoPE parameters per layer type are not implemented")
    params = {k: v for k, v in params.items() if k not in inert}
    kind = params.pop("rope_type", params.pop("type", "default"))
    theta = float(params.pop("rope_theta", top_theta if top_theta is not None else default_theta))
    fraction = float(
        params.pop("partial_rotary_factor", top_fraction if top_fraction is not None else default_fraction)
    )
    scaling: dict = {"kind": "none"}
    if kind == "linear":
        scaling = {"kind": "linear", "factor": float(params.pop("factor"))}
    elif kind == "llama3":
        original = params.pop("original_max_position_embeddings", None) or c.get(
            "original_max_position_embeddings", None
        )
        scaling = {
            "kind": "llama3",
            "factor": float(params.pop("factor")),
            "low_freq_factor": float(params.pop("low_freq_factor")),
            "high_freq_factor": float(params.pop("high_freq_factor")),
            "original_max_len": int(original or c.get("max_position_embeddings")),
        }
    elif kind != "default":
        raise unsupported(c, f"{key}.rope_type", kind, "implemented RoPE types: default, linear, llama3")
    if params:
        name = sorted(params)[0]
        raise unsupported(c, f"{key}.{name}", params[name], f"not used by RoPE type {kind!r} in slm_jax")
    return {"rope_theta": theta, "rotary_fraction": fraction, "rope_scaling": scaling}


def write_rope(m) -> dict:
    """The ``rope_parameters`` field (transformers 5 format) for our ModelConfig ``m``."""
    rs = m.rope_scaling
    params: dict = {"rope_type": "default" if rs.kind == "none" else rs.kind, "rope_theta": m.rope_theta}
    if m.rotary_fraction != 1.0:
        params["partial_rotary_factor"] = m.rotary_fraction
    if rs.kind in ("linear", "llama3"):
        params["factor"] = rs.factor
    if rs.kind == "llama3":
        params.update(
            low_freq_factor=rs.low_freq_factor,
            high_freq_factor=rs.high_freq_factor,
            original_max_position_embeddings=rs.original_max_len,
        )
    return params


def read_mlp_activation(c: HFConfig, key: str, default: str, legacy_gelu_is_tanh: bool = False) -> str:
    """Our ``model.mlp`` (swiglu / geglu) for the activation named by field ``key``."""
    act = c.get(key, default)
    if act in ("silu", "swish"):
        return "swiglu"
    if act in ("gelu_pytorch_tanh", "gelu_new") or (legacy_gelu_is_tanh and act == "gelu"):
        return "geglu"  # the tanh approximation of GELU
    raise unsupported(
        c, key, act, "implemented MLP activations: silu (SwiGLU) and the tanh approximation of GELU (GeGLU)"
    )


def compress_pattern(layers: list[str]) -> list[str]:
    """The shortest period p with layers[i] == p[i % len(p)] (our layer patterns are cycled)."""
    for n in range(1, len(layers) + 1):
        if all(layers[i] == layers[i % n] for i in range(len(layers))):
            return layers[:n]
    return layers


def sliding_layers(c: HFConfig, n_layers: int) -> tuple[list[str], int]:
    """Mixer names per layer and the window, from Qwen-style ``layer_types`` / ``use_sliding_window``."""
    window = c.get("sliding_window", None)
    use = c.get("use_sliding_window", False)
    first = c.get("max_window_layers", n_layers)
    types = c.get("layer_types", None)
    if types is None:  # transformers' rule when the file predates layer_types
        types = [
            "sliding_attention" if use and window is not None and i >= first else "full_attention"
            for i in range(n_layers)
        ]
    layers = attention_layers(c, types, n_layers)
    if "local_attention" in layers and not (use and window):
        layers = ["attention"] * n_layers  # transformers drops the window unless use_sliding_window
    return layers, int(window or 0)


def attention_layers(c: HFConfig, types: list, n_layers: int) -> list[str]:
    """Our mixer names for ``layer_types`` entries full_attention / sliding_attention (checked: one per layer)."""
    names = {"full_attention": "attention", "sliding_attention": "local_attention"}
    if len(types) != n_layers or any(t not in names for t in types):
        raise unsupported(c, "layer_types", types, f"need {n_layers} entries of full_attention / sliding_attention")
    return [names[t] for t in types]


def float32_round(x: float) -> float:
    """x rounded to float32 (how torch stores a Python scalar buffer)."""
    import numpy as np

    return float(np.float32(x))


def bfloat16_round(x: float) -> float:
    """x rounded to bfloat16 (RecurrentGemma's embedding normalizer is a bfloat16 buffer)."""
    import ml_dtypes
    import numpy as np

    return float(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32))


# --------------------------------------------------------------------------- export-side checks


def require_exportable(ok: bool, key: str, value: Any, family: str, fix: str) -> None:
    """Raise a ConfigError naming ``model.<key>`` when a config has no exact ``family`` equivalent."""
    from slm_jax.errors import ConfigError

    if not ok:
        raise ConfigError(f"model.{key} = {value!r} has no exact equivalent in a {family} checkpoint; {fix}.")


# The config.json fields every hybrid export ends with: float32 weights, no special token ids of ours.
EXPORT_TAIL = {"dtype": "float32", "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}

# What a pre-norm RMSNorm decoder with RoPE and a SwiGLU MLP has: the hybrid families' export baseline.
DECODER_FIELDS = {
    "norm": "rms",
    "norm_offset": 0.0,
    "mlp": "swiglu",
    "mlp_bias": False,
    "qkv_bias": False,
    "attn_out_bias": False,
    "qk_norm": False,
    "rotary_fraction": 1.0,
    "embed_scale": 1.0,
    "logit_softcap": 0.0,
    "position": "rope",
    "causal": True,
    "norm_position": "pre",
    "embed_norm": False,
    "first_mixer_norm": True,
    "mlm_head_transform": False,
    "head_bias": False,
}


def require_decoder(m, family: str, layers: set[str], any_head_dim: bool = False, **fields) -> None:
    """Refuse, naming the field, a ModelConfig ``m`` that is not ``DECODER_FIELDS`` with ``fields`` changed
    (a value None: any), whose layers are not among ``layers`` (attention global only), or, unless
    ``any_head_dim`` (the family has a head_dim field), whose attention head width is not d_model / n_heads
    (as most of transformers' hybrids derive it)."""
    other = "export it as another family (--family) or retrain without it"
    layers_ok = set(m.layers) <= layers and m.mixers.attention.window == 0
    names = " and ".join(sorted(layers))
    require_exportable(layers_ok, "layer_pattern", list(m.pattern), family, f"its layers are {names}, global only")
    head_ok = any_head_dim or m.attn_head_dim * m.n_heads == m.d_model
    require_exportable(head_ok, "head_dim", m.head_dim, family, "it is d_model / n_heads there")
    for key, value in {**DECODER_FIELDS, **fields}.items():
        require_exportable(value is None or getattr(m, key) == value, key, getattr(m, key), family, other)


def require_block_options(m, family: str, moe: bool = False, **fixed) -> None:
    """Refuse the block and attention options that ``family`` cannot express, naming the field.

    Keyword arguments give the family's own value of ``attn_softcap``, ``attn_scale``, ``attn_output_gate``,
    ``qk_norm_all_heads``, ``post_norms``, ``reordered_norms``, ``parallel_residual``, ``residual_scale`` or
    ``logit_divisor`` (default: off, with 0 scale meaning 1 / sqrt(head_dim)); None: the family has a config field
    for any value. ``moe``: the family has mixture-of-experts MLPs (``model.moe``), refused otherwise.
    """
    wanted = {
        "attn_softcap": 0.0,
        "attn_scale": 0.0,
        "attn_output_gate": False,
        "qk_norm_all_heads": False,
        "post_norms": False,
        "reordered_norms": (),
        "parallel_residual": False,
        "residual_scale": 1.0,
        "logit_divisor": 1.0,
        **fixed,
    }
    default_scale = m.attn_head_dim**-0.5
    for key, value in wanted.items():
        have = getattr(m, key)
        if key == "attn_scale":  # 0 and 1 / sqrt(head_dim) are the same scale
            have, value = have or default_scale, None if value is None else value or default_scale
        fix = "export it as another family (--family) or retrain without it"
        require_exportable(value is None or have == value, key, getattr(m, key), family, fix)
    if not moe:
        require_exportable(
            not m.moe.n_experts, "moe.n_experts", m.moe.n_experts, family, "it has no mixture of experts"
        )


def layer_windows(m) -> list[int]:
    """Attention window of every layer of ModelConfig ``m`` (0 = global causal)."""
    return [getattr(m.mixers, name).window for name in m.layers]
