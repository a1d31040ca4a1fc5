"""Closed-form model accounting: parameters, FLOPs per token, decode-state bytes.

Conventions: a multiply-add is 2 FLOPs; training costs 3x the forward pass (backward ~ 2x
forward, Kaplan et al. 2020); attention counts the causal half of the score matrix, so at
sequence length T the mean context is (T + 1) / 2 (bounded by the window). Embedding
look-ups are free; the output head is a matmul. Tests check ``param_count`` against the
real parameter tree, so these formulas cannot silently drift.

Mixture-of-experts layers (``model.moe``) have two sizes: every expert (what is stored; ``param_count``) and what
one token uses, its ``top_k`` experts (``active=True``). FLOPs per token count the active experts, as MoE papers
report a model's cost; ``all_experts=True`` counts the dense dispatch of modules/moe.py, every expert on every
token. Matmuls with weights are counted (router, experts, shared expert and its gate), not the weighted sum.
"""

from typing import Any

import jax.numpy as jnp

from slm_jax.config import ModelConfig
from slm_jax.mixers.contract import state_bytes
from slm_jax.models.block import layer_mixer
from slm_jax.models.shared_block import shared_flops_per_token, shared_params, shared_state_bytes
from slm_jax.modules.mlp import mlp_params
from slm_jax.modules.moe import moe_params


def _norm_params(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm_bias else 1)


def _mlp_params(cfg: ModelConfig, layer: int, experts: int = 0, bias: bool = True) -> int:
    """Parameters of layer ``layer``'s MLP (with its biases if ``bias``), or of its MoE counting ``experts``
    experts (0: all of them); 0 for a mixer-only block."""
    e = cfg.moe
    if not cfg.has_mlp(layer):
        return 0
    if not e.at(layer):
        return mlp_params(cfg.mlp, cfg.d_model, cfg.ff_width, cfg.mlp_bias and bias)
    f, bias = e.d_expert or cfg.ff_width, e.score_bias and bias  # the score bias is an add, not a multiply-add
    return moe_params(cfg.d_model, e.n_experts, f, e.d_shared, e.shared_gate, experts, cfg.mlp, bias)


def _block_params(cfg: ModelConfig, mixer_name: str, mixer_norm: bool, layer: int, active: bool = False) -> int:
    norm, reordered = _norm_params(cfg), mixer_name in cfg.reordered_norms  # reordered: output norms only
    post = norm if cfg.post_norms or reordered else 0  # a norm on each branch's output
    mixer_norm = mixer_norm and not reordered
    mlp_norms = norm * (not reordered) + post if cfg.has_mlp(layer) else 0
    mlp = _mlp_params(cfg, layer, cfg.moe.top_k if active else 0) + mlp_norms
    mixer = layer_mixer(cfg, mixer_name)
    if mixer is None:  # an MLP-only block
        return mlp
    return mixer.num_params() + (norm if mixer_norm else 0) + post + mlp


def _mixer_flops(cfg: ModelConfig, name: str, seq_len: int) -> float:
    mixer = layer_mixer(cfg, name)
    return 0.0 if mixer is None else mixer.flops_per_token(seq_len)


def param_count(cfg: ModelConfig, include_embeddings: bool = True, active: bool = False) -> int:
    """Number of parameters of ``CausalLM(cfg)``; ``active``: with each MoE layer's ``top_k`` experts only."""
    d, norm = cfg.d_model, _norm_params(cfg)
    head = (0 if cfg.tie_embeddings else cfg.vocab_size * d) + (cfg.vocab_size if cfg.head_bias else 0)
    if cfg.mlm_head_transform:
        head += d * d + (d if cfg.mlm_head_transform_bias else 0) + norm
    embed = (cfg.vocab_size + (not cfg.causal)) * d if include_embeddings else 0  # + an encoder's mask id
    embed += cfg.max_positions * d if include_embeddings and cfg.position == "learned" else 0
    norms = (norm if cfg.norm_position == "pre" else 0) + (norm if cfg.embed_norm else 0)
    blocks = sum(
        _block_params(cfg, name, i > 0 or cfg.first_mixer_norm, i, active) for i, name in enumerate(cfg.layers)
    )
    return embed + head + norms + blocks + shared_params(cfg)  # + weight-shared blocks (model.shared_block)


def forward_flops_per_token(
    cfg: ModelConfig, seq_len: int, head_fraction: float = 1.0, all_experts: bool = False
) -> float:
    """Forward FLOPs per token at training length ``seq_len``; the output head runs on
    ``head_fraction`` of the positions (below 1 when only labelled positions get logits).
    MoE layers count their ``top_k`` experts, or with ``all_experts`` every expert (dense dispatch)."""
    experts = 0 if all_experts else cfg.moe.top_k
    mlp = lambda i: 2 * _mlp_params(cfg, i, experts, bias=False)  # biases are adds, not multiply-adds
    layers = sum(_mixer_flops(cfg, name, seq_len) + mlp(i) for i, name in enumerate(cfg.layers))
    layers += shared_flops_per_token(cfg, seq_len)  # every use of a weight-shared block
    return layers + head_fraction * 2 * cfg.vocab_size * cfg.d_model


def train_flops_per_token(cfg: ModelConfig, seq_len: int, head_fraction: float = 1.0) -> float:
    """Forward + backward FLOPs per trained token."""
    return 3 * forward_flops_per_token(cfg, seq_len, head_fraction)


def decode_state_bytes(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> int:
    """Bytes of the decode cache for ``batch`` sequences of ``max_len`` tokens (0 for an encoder: it has none)."""
    if not cfg.causal:
        return 0
    mixers = [layer_mixer(cfg, name) for name in cfg.layers]
    shared = shared_state_bytes(cfg, batch, max_len, dtype)  # one KV cache per use of a shared block
    return shared + sum(state_bytes(mixer, batch, max_len, dtype) for mixer in mixers if mixer is not None)


def summary(cfg: ModelConfig, seq_len: int, head_fraction: float = 1.0) -> dict:
    """The numbers every run logs about its model (``head_fraction`` as in ``forward_flops_per_token``)."""
    out = {
        "params": param_count(cfg),
        "params_non_embedding": param_count(cfg, include_embeddings=False),
        "flops_per_token": train_flops_per_token(cfg, seq_len, head_fraction),
        "decode_state_bytes_per_seq": decode_state_bytes(cfg, 1, seq_len),
    }
    if cfg.moe.n_experts:
        out["params_active"] = param_count(cfg, active=True)
        out["flops_per_token_all_experts"] = 3 * forward_flops_per_token(cfg, seq_len, head_fraction, all_experts=True)
    return out
