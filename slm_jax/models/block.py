"""Residual block around a token mixer and an optional MLP, in one of two norm placements.

pre-norm (GPT-2 / Llama): x + mixer(norm(x)), then x + mlp(norm(x));
post-norm (BERT, Vaswani et al. 2017): norm(x + mixer(x)), then norm(x + mlp(x)).

Two pre-norm options: ``post_norms`` also normalises each branch's output before its residual add,
x + norm(mixer(norm(x))) (Gemma 2's sandwich, Gemma Team 2024, arXiv:2408.00118); ``parallel_residual``
feeds both branches the block input through their own norms, x + mixer(norm(x)) + mlp(norm'(x))
(GPT-NeoX: Black et al. 2022, arXiv:2204.06745). Layers whose mixer ``model.reordered_norms`` names norm only each
branch's output, x + norm(f(x)) (OLMo 2's reordered norms, OLMo Team 2025, arXiv:2501.00656; OLMo hybrid's
attention layers). ``residual_scale`` r multiplies each branch's output before
its residual add, x + r f(norm(x)) (Granite's ``residual_multiplier``; 1 = off).

On the layers ``model.moe`` selects, a mixture-of-experts MLP (modules/moe.py) takes the MLP's place, under the
name ``moe``; the other layers, and every layer with ``model.moe.n_experts`` 0, keep the dense ``mlp``.

Single-op blocks (Nemotron-H, NVIDIA 2025, arXiv:2504.03624): a layer-pattern entry ``mlp`` is a block without a
mixer, x + mlp(norm(x)) (its cache is empty), and ``model.mixer_mlp`` false drops the MLP from blocks with a
mixer, x + mixer(norm(x)).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import MLP_LAYER
from slm_jax.mixers.registry import build_mixer
from slm_jax.modules.linear import dtype_of, scaled_init
from slm_jax.modules.mlp import MLP
from slm_jax.modules.moe import MoE
from slm_jax.modules.norms import make_norm
from slm_jax.quant.cache import dequantize_cache, requantize_like


class Block(nn.Module):
    """f32[b, t, d] -> f32[b, t, d] with an optional token mixer and an optional MLP."""

    mixer: nn.Module | None  # an unbound mixer, adopted here under the name "mixer"; None: an MLP-only block
    moe: nn.Module | None = None  # an unbound MoE (modules/moe.py) in the MLP's place, adopted as "moe"; None: MLP
    mlp: str = "swiglu"  # swiglu | geglu | geglu_erf | gelu, relu2 (not gated) | none
    d_ff: int = 0
    mlp_bias: bool = False
    norm_eps: float = 1e-5
    norm_offset: float = 0.0  # 1 -> Gemma's (1 + w) RMSNorm
    norm: str = "rms"  # rms | layer
    norm_bias: bool = False  # LayerNorm bias
    norm_position: str = "pre"  # pre | post
    mixer_norm: bool = True  # False: the mixer reads x itself (ModernBERT's first layer, pre-norm only)
    mlp_norm: bool = True  # False: the MLP reads x itself (OLMo 2's reordered norms, pre-norm only)
    post_norms: bool = False  # norm each branch's output before its residual add (pre-norm only)
    parallel_residual: bool = False  # the MLP reads the block input, not the mixer's update of it (pre-norm only)
    residual_scale: float = 1.0  # each branch's output times this before its residual add
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        cache: PyTree = None,
        lengths: Array | None = None,
        segment_ids: Array | None = None,
        mixer_add: Array | None = None,
    ) -> tuple[Array, PyTree]:
        """``lengths`` i32[b]: valid tokens per row, for an encoder's mixer (right padding); None otherwise.
        ``segment_ids`` i32[b, t]: the documents of packed rows (ops/segments.py); None: one per row.
        ``mixer_add`` f32[b, t, d]: added to the mixer's input only, not to the residual (Zamba2's shared block)."""
        norm = lambda name: make_norm(
            self.norm, self.norm_eps, self.norm_offset, self.norm_bias, self.dtype, self.param_dtype, name
        )
        post = self.norm_position == "post"
        # An int8 cache (model.cache_quant) is read as float and stored back as int8 around the mixer.
        padding = () if lengths is None else (lengths,)
        packing = {} if segment_ids is None else {"segment_ids": segment_ids}
        scaled = lambda z: z if self.residual_scale == 1.0 else z * jnp.asarray(self.residual_scale, z.dtype)
        y = 0.0  # an MLP-only block: no mixer update, and its (empty) cache passes through
        if self.mixer is not None:
            u = x if mixer_add is None else x + mixer_add
            h = u if post or not self.mixer_norm else norm("mixer_norm")(u)
            y, new_cache = self.mixer(h, positions, dequantize_cache(cache), *padding, **packing)
            cache = requantize_like(cache, new_cache)
            if self.post_norms:
                y = norm("mixer_post_norm")(y)
            y = scaled(y)
        mlp = self.moe
        if mlp is None:
            mlp = MLP(
                self.d_ff,
                self.mlp,
                self.mlp_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                init_std=self.init_std,
                out_init=scaled_init(self.init_std, self.n_layers),
                name="mlp",
            )

        def mlp_branch(u: Array) -> Array:  # pre-norm: r [post_norm](mlp(norm(u)))
            z = mlp(norm("mlp_norm")(u) if self.mlp_norm else u)
            return scaled(norm("mlp_post_norm")(z) if self.post_norms else z)

        if self.parallel_residual:
            x = x + y + mlp_branch(x)
        else:
            if self.mixer is not None:
                x = norm("mixer_norm")(x + y) if post else x + y
            if self.mlp != "none":
                x = norm("mlp_norm")(x + scaled(mlp(x))) if post else x + mlp_branch(x)
        # The residual stream's logical axes: a sharding constraint under training/sharding.py's rules, else a no-op.
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, cache


def build_block(
    cfg, mixer_name: str, block_cls: type = Block, name: str | None = None, mixer_norm: bool = True, layer: int = 0
) -> Block:
    """A Block for layer ``layer`` of ``cfg`` (a ModelConfig) whose mixer is ``mixer_name`` (``mlp``: none)."""
    return block_cls(
        mixer=layer_mixer(cfg, mixer_name),
        moe=build_moe(cfg) if cfg.moe.at(layer) else None,
        mlp=cfg.mlp if cfg.has_mlp(layer) else "none",
        d_ff=cfg.ff_width,
        mlp_bias=cfg.mlp_bias,
        norm_eps=cfg.norm_eps,
        norm_offset=cfg.norm_offset,
        norm=cfg.norm,
        norm_bias=cfg.norm_bias,
        norm_position=cfg.norm_position,
        mixer_norm=mixer_norm and mixer_name not in cfg.reordered_norms,
        mlp_norm=mixer_name not in cfg.reordered_norms,
        post_norms=cfg.post_norms or mixer_name in cfg.reordered_norms,
        parallel_residual=cfg.parallel_residual,
        residual_scale=cfg.residual_scale,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        init_std=cfg.init_std,
        n_layers=cfg.n_layers,
        name=name,
    )


def layer_mixer(cfg, name: str) -> nn.Module | None:
    """The unbound mixer of a layer-pattern entry ``name`` of ``cfg``; None for an MLP-only block (``mlp``)."""
    return None if name == MLP_LAYER else build_mixer(cfg, name)


def build_moe(cfg) -> MoE:
    """The unbound MoE MLP of ``cfg`` (a ModelConfig with ``moe.n_experts`` > 0)."""
    e = cfg.moe
    return MoE(
        n_experts=e.n_experts,
        top_k=e.top_k,
        hidden=e.d_expert or cfg.ff_width,
        kind=cfg.mlp,
        routing=e.routing,
        normalize_top_k=e.normalize_top_k,
        score_bias=e.score_bias,
        n_groups=e.n_groups,
        top_groups=e.top_groups,
        scale=e.scale,
        shared_hidden=e.d_shared,
        shared_gate=e.shared_gate,
        dtype=dtype_of(cfg.dtype),
        param_dtype=dtype_of(cfg.param_dtype),
        init_std=cfg.init_std,
        out_init=scaled_init(cfg.init_std, cfg.n_layers),
        parent=None,  # unbound even when built inside a module, so the Block adopts it
    )
