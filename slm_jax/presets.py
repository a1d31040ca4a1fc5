"""Named architectures as config values: a layer pattern plus mixer options.

A preset only supplies defaults for ``ModelConfig`` fields; anything set in YAML or with
``--set`` wins. A new architecture is one mixer file, one registry line and one entry here.
"""

from slm_jax.errors import ConfigError

PRESETS: dict[str, dict] = {
    # Llama-style decoder (Touvron et al. 2023): RoPE attention, RMSNorm, SwiGLU.
    "transformer": {"layer_pattern": ("attention",), "mlp": "swiglu"},
    # Hawk and Griffin (De et al. 2024, arXiv:2402.19427): RG-LRU blocks, with local attention
    # every third layer for Griffin. Both use a GeGLU MLP in the paper.
    "hawk": {"layer_pattern": ("rglru",), "mlp": "geglu"},
    "griffin": {"layer_pattern": ("rglru", "rglru", "local_attention"), "mlp": "geglu"},
    # Mamba (Gu & Dao 2023) and Mamba-2 (Dao & Gu 2024): the mixer is the whole block, no MLP.
    "mamba": {"layer_pattern": ("mamba",), "mlp": "none"},
    "mamba2": {"layer_pattern": ("mamba2",), "mlp": "none"},
    # Samba (Ren et al. 2024, arXiv:2406.07522): Mamba and sliding-window attention alternating.
    "samba": {"layer_pattern": ("mamba", "local_attention"), "mlp": "swiglu"},
    # Jamba-like (Lieber et al. 2024, arXiv:2403.19887): one attention layer per 8, rest Mamba.
    "jamba_like": {"layer_pattern": ("mamba",) * 7 + ("attention",), "mlp": "swiglu"},
    # DeltaNet (Yang et al. 2024, arXiv:2406.06484) and Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024,
    # arXiv:2412.06464) in every layer, each followed by a SwiGLU MLP.
    "deltanet": {"layer_pattern": ("deltanet",), "mlp": "swiglu"},
    "gated_deltanet": {"layer_pattern": ("gated_deltanet",), "mlp": "swiglu"},
    # Qwen3-Next / Qwen3.5-like hybrid: 3 Gated DeltaNet layers to 1 attention layer with QK-norm.
    "qwen35_like": {"layer_pattern": ("gated_deltanet",) * 3 + ("attention",), "mlp": "swiglu", "qk_norm": True},
    # GLA (Yang, Wang, Shen, Panda, Kim 2024, arXiv:2312.06635): gated linear attention in every layer, SwiGLU MLP.
    "gla": {"layer_pattern": ("gla",), "mlp": "swiglu"},
    # RetNet (Sun et al. 2023, arXiv:2307.08621): multi-scale retention (RoPE in place of xPos), SwiGLU MLP.
    "retnet": {"layer_pattern": ("retnet",), "mlp": "swiglu"},
    # Based (Arora et al. 2024, arXiv:2402.18668): Taylor linear attention alternating with 64-token sliding-window
    # attention.
    "based": {
        "layer_pattern": ("based", "local_attention"),
        "mlp": "swiglu",
        "mixers": {"local_attention": {"window": 64}},
    },
    # xLSTM's mLSTM blocks (Beck et al. 2024, arXiv:2405.04517; layout of xLSTM-7B): mLSTM in every
    # layer, each followed by a SwiGLU MLP.
    "mlstm": {"layer_pattern": ("mlstm",), "mlp": "swiglu"},
    # RWKV-7 "Goose" (Peng et al. 2025, arXiv:2503.14456): RWKV-7 time mixing in every layer; a SwiGLU
    # MLP stands in for RWKV's squared-ReLU channel-mix, and there is no cross-layer value residual.
    "rwkv7": {"layer_pattern": ("rwkv7",), "mlp": "swiglu"},
    # H3 (Fu, Dao et al. 2023, arXiv:2212.14052), Hyena (Poli et al. 2023, arXiv:2302.10866) and Zoology's
    # BaseConv (Arora et al. 2023, arXiv:2312.04927) in every layer, each followed by a SwiGLU MLP.
    "h3": {"layer_pattern": ("h3",), "mlp": "swiglu"},
    "hyena": {"layer_pattern": ("hyena",), "mlp": "swiglu"},
    "baseconv": {"layer_pattern": ("baseconv",), "mlp": "swiglu"},
    # LFM2-like (Liquid AI 2025, arXiv:2511.23404): LFM2-350M's 16 layers, 10 gated short convs and 6 attention
    # layers with QK-norm (GQA there: set n_kv_heads), RoPE theta 1e6, SwiGLU MLPs; cycled to n_layers.
    "lfm2_like": {
        "layer_pattern": ("short_conv", "short_conv", "attention") * 3
        + ("short_conv", "attention") * 3
        + ("short_conv",),
        "mlp": "swiglu",
        "qk_norm": True,
        "rope_theta": 1e6,
    },
    # Encoders (model.causal=false; docs/encoders.md), trained with train.objective=mlm. BERT (Devlin et al. 2019,
    # arXiv:1810.04805) at BERT-base depth, kept pre-norm, with RoPE (slm_jax has no learned absolute positions)
    # and a GeGLU MLP (its tanh-GELU gate stands in for BERT's plain GELU MLP, which slm_jax lacks).
    "bert_like": {"layer_pattern": ("attention",), "mlp": "geglu", "n_layers": 12, "causal": False},
    # DistilBERT (Sanh et al. 2019, arXiv:1910.01108): bert_like at half depth.
    "distilbert_like": {"layer_pattern": ("attention",), "mlp": "geglu", "n_layers": 6, "causal": False},
    # ModernBERT (Warner et al. 2024, arXiv:2412.13663): global attention every third layer (the first of each
    # three), local attention elsewhere, RoPE, GeGLU. Its 128-token local window is |i - j| <= 64, our window 65.
    "modernbert_like": {
        "layer_pattern": ("attention", "local_attention", "local_attention"),
        "mlp": "geglu",
        "causal": False,
        "mixers": {"local_attention": {"window": 65}},
    },
    # Bidirectional Mamba (Vim, Zhu et al. 2024, arXiv:2401.09417; Caduceus, Schiff et al. 2024): a forward and
    # a backward Mamba summed in every layer, no MLP.
    "bimamba_like": {"layer_pattern": ("mamba",), "mlp": "none", "causal": False},
    # A Griffin-shaped encoder: bidirectional RG-LRU twice, then global attention, GeGLU MLPs.
    "hybrid_encoder": {"layer_pattern": ("rglru", "rglru", "attention"), "mlp": "geglu", "causal": False},
}


def preset_fields(name: str) -> dict:
    """The ModelConfig fields a preset sets (layer_pattern as a list, like YAML gives it)."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown model.preset {name!r}; use one of {', '.join(sorted(PRESETS))}.")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS[name].items()}


def is_encoder(name: str) -> bool:
    """Whether preset ``name`` is an encoder (``causal: false``): no decode cache, no generation."""
    return PRESETS[name].get("causal", True) is False


def preset_pattern(name: str) -> tuple[str, ...]:
    return tuple(preset_fields(name)["layer_pattern"])
