"""Weight-shared transformer blocks that several layers reuse (``model.shared_block``), Zamba-style.

Zamba (Glorioso et al. 2024, arXiv:2405.16712) and Zamba2 (arXiv:2411.15242, Fig. 2) interleave a stack of Mamba
layers with a few transformer blocks whose parameters are shared: before each layer in ``shared_block.layers`` its
use k runs block k % n_blocks,

    u = [x ; e]  (``concat_embed``: the residual stream beside the input embeddings e, 2 d wide) or u = x
    y = proj_k(mlp(norm(attention(norm(u)))))          no residual inside the block

where each use k has its own parameters next to the shared ones: low-rank adapters up(down(.)) added to the
attention's query/key/value projections and to the MLP's input projection (``*_adapter_rank``; LoRA-shaped,
Hu et al. 2021, but trained as part of the model), the d x d projection ``proj_k`` (``out_proj``), and its own KV
cache. y then joins the residual stream (``add_to: residual``) or only the next layer's mixer input,
x + mixer(norm(x + y)) (``add_to: mixer_input``, Zamba2). The attention has model.n_heads / n_kv_heads heads of
width ``head_dim`` (default: u's width / n_heads) and the model's attention options (RoPE per ``model.position``,
``attn_scale``, biases, qk norms).

Parameters: ``shared/block_b/{attn_norm, attention, mlp_norm, mlp}`` once per block, and
``shared/block_b/use_k/{q,k,v}_adapter/{down,up}, mlp_adapter/{down,up}, proj`` for each use k of block b.
``scan_layers`` is refused with shared blocks (config.py): the uses are unrolled.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import ModelConfig
from slm_jax.mixers.attention import Attention, AttentionOptions
from slm_jax.mixers.contract import state_bytes
from slm_jax.modules.linear import Linear, dtype_of, scaled_init
from slm_jax.modules.mlp import MLP, PLAIN_ACTIVATIONS, mlp_params
from slm_jax.modules.norms import make_norm


class LowRank(nn.Module):
    """x f32[..., d_in] -> up(down(x)) f32[..., features] through ``rank`` channels: a per-use adapter.

    ``up`` starts at zero, so a new adapter leaves the shared block's output unchanged (as LoRA's B)."""

    features: int
    rank: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = lambda f, init, name: Linear(
            f, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        down = dense(self.rank, nn.initializers.normal(self.init_std), "down")(x)
        return dense(self.features, nn.initializers.zeros, "up")(down)


class UseParams(nn.Module):
    """The parameters of one use of a shared block: adapters and the output projection (each optional)."""

    qkv_widths: tuple[int, int, int]  # (h e, k e, k e): query, key and value columns of the fused projection
    gated: bool  # the fused projection ends with h e output-gate columns, which get no adapter
    mlp_width: int  # columns of the MLP's input projection (2 f gated, f plain)
    width: int  # d
    attn_rank: int = 0
    mlp_rank: int = 0
    out_proj: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1

    def setup(self):
        low_rank = lambda f, r: LowRank(f, r, self.dtype, self.param_dtype, self.init_std)
        if self.attn_rank:
            self.q_adapter, self.k_adapter, self.v_adapter = (low_rank(f, self.attn_rank) for f in self.qkv_widths)
        if self.mlp_rank:
            self.mlp_adapter = low_rank(self.mlp_width, self.mlp_rank)
        if self.out_proj:
            init = scaled_init(self.init_std, self.n_layers)
            self.proj = Linear(self.width, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init)

    def qkv_delta(self, h: Array) -> Array | None:
        """f32[b, t, d_in] -> the adapters' f32[b, t, qkv_width] added to the fused projection (None: no adapters)."""
        if not self.attn_rank:
            return None
        parts = [self.q_adapter(h), self.k_adapter(h), self.v_adapter(h)]
        if self.gated:
            parts.append(jnp.zeros_like(parts[0]))
        return jnp.concatenate(parts, axis=-1)

    def up_delta(self, h: Array) -> Array | None:
        """f32[b, t, d] -> the adapter's f32[b, t, mlp_width] added to the MLP's input projection (None: none)."""
        return self.mlp_adapter(h) if self.mlp_rank else None

    def output(self, y: Array) -> Array:
        """f32[b, t, d] -> proj(y), or y without ``out_proj``."""
        return self.proj(y) if self.out_proj else y


class SharedBlock(nn.Module):
    """u f32[b, t, d_in] -> f32[b, t, d] for use ``use``: proj_use(mlp(norm(attention(norm(u))))) (module doc)."""

    attention: Attention  # unbound, reading d_in; adopted as "attention"
    mlp: str = "swiglu"  # none: the block is attention (and proj) alone
    d_ff: int = 0
    mlp_bias: bool = False
    attn_adapter_rank: int = 0  # each use's adapters on the query / key / value projections; 0: none
    mlp_adapter_rank: int = 0  # each use's adapter on the MLP input projection; 0: none
    out_proj: bool = False  # each use's own d x d output projection
    norm: str = "rms"
    norm_eps: float = 1e-5
    norm_offset: float = 0.0
    norm_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1

    @nn.compact
    def __call__(
        self, u: Array, positions: Array, cache: PyTree, use: int, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        norm = lambda name: make_norm(
            self.norm, self.norm_eps, self.norm_offset, self.norm_bias, self.dtype, self.param_dtype, name
        )
        a = self.attention
        own = UseParams(
            (a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.head_dim),
            a.output_gate,
            self.d_ff if self.mlp in PLAIN_ACTIVATIONS else 2 * self.d_ff,
            a.width,
            self.attn_adapter_rank,
            self.mlp_adapter_rank if self.mlp != "none" else 0,
            self.out_proj,
            self.dtype,
            self.param_dtype,
            self.init_std,
            self.n_layers,
            name=f"use_{use}",
        )
        h = norm("attn_norm")(u)
        y, cache = self.attention(h, positions, cache, None, segment_ids, qkv_delta=own.qkv_delta(h))
        if self.mlp != "none":
            h = norm("mlp_norm")(y)
            out_init = scaled_init(self.init_std, self.n_layers)
            mlp = MLP(
                self.d_ff, self.mlp, self.mlp_bias, self.dtype, self.param_dtype, self.init_std, out_init, name="mlp"
            )
            y = mlp(h, up_delta=own.up_delta(h))
        return own.output(y), cache


class SharedBlocks(nn.Module):
    """The ``model.shared_block`` blocks; each call is one use, run before layer ``layer`` of ``cfg``."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        layer: int,
        x: Array,
        embeds: Array,
        positions: Array,
        caches: PyTree,
        segment_ids: Array | None = None,
    ) -> tuple[Array, Array | None, PyTree]:
        """x, embeds f32[b, t, d] -> (x, the mixer-input addition f32[b, t, d] or None, caches): with
        ``add_to: residual`` x gains the block's output, with ``mixer_input`` it is returned for the next layer's
        mixer. ``caches``: one KV cache per use (``init_shared_cache``), None when not decoding."""
        cfg, s = self.cfg, self.cfg.shared_block
        k = s.layers.index(layer)
        block = build_shared_block(cfg, name=f"block_{k % s.n_blocks}")
        u = jnp.concatenate([x, embeds.astype(x.dtype)], axis=-1) if s.concat_embed else x  # [b, t, d_in]
        y, c = block(u, positions, None if caches is None else caches[k], k, segment_ids)
        if caches is not None:
            caches = caches[:k] + (c,) + caches[k + 1 :]
        if s.add_to == "residual":
            return x + y, None, caches
        return x, y, caches


def input_width(cfg: ModelConfig) -> int:
    """d_in: the width a shared block reads (2 d with ``concat_embed``)."""
    return cfg.d_model * (2 if cfg.shared_block.concat_embed else 1)


def shared_attention(cfg: ModelConfig) -> Attention:
    """The unbound attention of the shared blocks: the model's attention options, heads of ``head_dim``."""
    e = cfg.shared_block.head_dim or input_width(cfg) // cfg.n_heads
    rotary = int(e * cfg.rotary_fraction) if cfg.position == "rope" else 0
    return Attention.from_config(cfg, AttentionOptions()).clone(head_dim=e, rotary_dim=rotary, parent=None)


def _mlp_width(cfg: ModelConfig) -> int:
    s = cfg.shared_block
    f = s.d_ff or cfg.ff_width
    return f if s.mlp in PLAIN_ACTIVATIONS else 2 * f


def build_shared_block(cfg: ModelConfig, name: str) -> SharedBlock:
    """The SharedBlock ``name`` of ``cfg`` (a ModelConfig with ``shared_block.n_blocks`` > 0)."""
    s = cfg.shared_block
    return SharedBlock(
        shared_attention(cfg),
        s.mlp,
        s.d_ff or cfg.ff_width,
        cfg.mlp_bias,
        s.attn_adapter_rank,
        s.mlp_adapter_rank,
        s.out_proj,
        cfg.norm,
        cfg.norm_eps,
        cfg.norm_offset,
        cfg.norm_bias,
        dtype_of(cfg.dtype),
        dtype_of(cfg.param_dtype),
        cfg.init_std,
        cfg.n_layers,
        name=name,
    )


def init_shared_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any) -> tuple:
    """One empty KV cache per use of a shared block (each use attends over its own keys and values)."""
    att = shared_attention(cfg)
    return tuple(att.init_cache(batch, max_len, dtype) for _ in cfg.shared_block.layers)


def _use_params(cfg: ModelConfig) -> int:
    """Parameters of one use: its adapters and projection."""
    s, att, d = cfg.shared_block, shared_attention(cfg), cfg.d_model
    qkv = (att.num_heads + 2 * att.num_kv_heads) * att.head_dim
    attn = s.attn_adapter_rank * (3 * input_width(cfg) + qkv)
    mlp = s.mlp_adapter_rank * (d + _mlp_width(cfg)) if s.mlp != "none" else 0
    return attn + mlp + (d * d if s.out_proj else 0)


def _attention_params(cfg: ModelConfig, att: Attention) -> int:
    """The attention's parameters; its fused projection reads d_in, not d (``num_params`` assumes d)."""
    return att.num_params() + (input_width(cfg) - cfg.d_model) * att.qkv_width


def shared_params(cfg: ModelConfig) -> int:
    """Parameters of all shared blocks and all their uses (0 when off); models/accounting.py adds them."""
    s = cfg.shared_block
    if not s.n_blocks:
        return 0
    d, norm = cfg.d_model, 2 if cfg.norm_bias else 1
    block = norm * input_width(cfg) + _attention_params(cfg, shared_attention(cfg))
    if s.mlp != "none":
        block += norm * d + mlp_params(s.mlp, d, s.d_ff or cfg.ff_width, cfg.mlp_bias)
    return s.n_blocks * block + len(s.layers) * _use_params(cfg)


def shared_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of every use of a shared block at training length ``seq_len`` (0 when off)."""
    s = cfg.shared_block
    if not s.n_blocks:
        return 0.0
    att = shared_attention(cfg)
    extra_in = 2 * (input_width(cfg) - cfg.d_model) * att.qkv_width  # the wider fused projection
    mlp = 2 * mlp_params(s.mlp, cfg.d_model, s.d_ff or cfg.ff_width)
    return len(s.layers) * (att.flops_per_token(seq_len) + extra_in + mlp + 2 * _use_params(cfg))


def shared_state_bytes(cfg: ModelConfig, batch: int, max_len: int, dtype: Any) -> int:
    """Bytes of the uses' KV caches for ``batch`` sequences of ``max_len`` tokens (0 when off)."""
    if not cfg.shared_block.n_blocks:
        return 0
    return len(cfg.shared_block.layers) * state_bytes(shared_attention(cfg), batch, max_len, dtype)
