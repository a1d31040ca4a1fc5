"""Causal multi-head attention with RoPE, GQA/MQA, an optional sliding window and a KV cache.

The cache holds ``L`` slots: the whole context (``max_len``) for global attention, or only the
last ``window`` positions as a ring buffer for sliding-window attention, so a windowed layer's
decode state is bounded (Beltagy et al. 2020, Longformer; Mistral 7B). Each slot remembers
the absolute position it holds, and the mask is computed from positions (ops/attention.py).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.mixers.registry import register_mixer
from slm_jax.modules.linear import Linear, dtype_of, linear_params, scaled_init
from slm_jax.modules.rope import apply_rope
from slm_jax.ops.attention import attend


@register_mixer("attention")
class Attention(nn.Module):
    """f32[b, t, d] -> f32[b, t, d]; h query heads and k key/value heads of width e."""

    width: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    window: int = 0  # 0 -> global causal attention
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def window_of(cls, cfg) -> int:
        return cfg.window

    @classmethod
    def from_config(cls, cfg) -> "Attention":
        return cls(
            width=cfg.d_model,
            num_heads=cfg.n_heads,
            num_kv_heads=cfg.kv_heads,
            head_dim=cfg.attn_head_dim,
            rope_theta=cfg.rope_theta,
            window=cls.window_of(cfg),
            dtype=dtype_of(cfg.dtype),
            param_dtype=dtype_of(cfg.param_dtype),
            init_std=cfg.init_std,
            n_layers=cfg.n_layers,
            parent=None,  # unbound: the Block that receives it adopts it as "mixer"
        )

    @nn.compact
    def __call__(self, x: Array, positions: Array, cache: PyTree = None) -> tuple[Array, PyTree]:
        b, t, _ = x.shape
        h, k, e = self.num_heads, self.num_kv_heads, self.head_dim
        dense = lambda f, name, init=nn.initializers.normal(self.init_std): Linear(
            f, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        # One fused projection: a single wider matmul is faster than three narrow ones on CPU.
        q, key, value = jnp.split(dense((h + 2 * k) * e, "qkv")(x), [h * e, (h + k) * e], axis=-1)
        q = apply_rope(q.reshape(b, t, h, e), positions, self.rope_theta)
        key = apply_rope(key.reshape(b, t, k, e), positions, self.rope_theta)
        value = value.reshape(b, t, k, e)

        if cache is None:
            out = attend(q, key, value, positions, positions, self.window)
        else:
            # Attend over [cached slots ; new tokens], then write the new tokens into the slots.
            keys = jnp.concatenate([cache["k"], key.astype(cache["k"].dtype)], axis=1)  # [b, L + t, k, e]
            values = jnp.concatenate([cache["v"], value.astype(cache["v"].dtype)], axis=1)
            k_pos = jnp.concatenate([cache["pos"], positions], axis=1)  # [b, L + t]
            out = attend(q, keys.astype(self.dtype), values.astype(self.dtype), positions, k_pos, self.window)
            cache = _write_slots(cache, key, value, positions)
        y = dense(self.width, "o", scaled_init(self.init_std, self.n_layers))(out.reshape(b, t, h * e))
        return y, cache

    def cache_len(self, max_len: int) -> int:
        return min(max_len, self.window) if self.window else max_len

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        n = self.cache_len(max_len)
        kv = jnp.zeros((batch, n, self.num_kv_heads, self.head_dim), dtype)
        return {"k": kv, "v": kv, "pos": jnp.full((batch, n), -1, jnp.int32), "end": jnp.zeros((), jnp.int32)}

    def state_size(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> int:
        n = self.cache_len(max_len)
        return 2 * batch * n * self.num_kv_heads * self.head_dim * jnp.dtype(dtype).itemsize + batch * n * 4 + 4

    @staticmethod
    def num_params(cfg) -> int:
        e, h, k, d = cfg.attn_head_dim, cfg.n_heads, cfg.kv_heads, cfg.d_model
        return linear_params(d, h * e) + 2 * linear_params(d, k * e) + linear_params(h * e, d)

    @classmethod
    def flops_per_token(cls, cfg, seq_len: int) -> float:
        """Forward FLOPs per token: projections plus scores and weighted sum over the causal context."""
        context = min(seq_len, cls.window_of(cfg) or seq_len)
        mean_context = (context + 1) / 2 if context == seq_len else context  # causal average
        return 2 * cls.num_params(cfg) + 4 * cfg.n_heads * cfg.attn_head_dim * mean_context


@register_mixer("local_attention")
class LocalAttention(Attention):
    """Sliding-window attention of ``model.local_window`` tokens with a ring-buffer cache (Griffin, Samba)."""

    @classmethod
    def window_of(cls, cfg) -> int:
        return cfg.local_window


def _write_slots(cache: PyTree, key: Array, value: Array, positions: Array) -> PyTree:
    """Store the last min(t, L) new tokens at slots (end + i) mod L."""
    n, t = cache["k"].shape[1], key.shape[1]
    kept = min(t, n)  # with t > L only the newest L tokens can stay
    slots = (cache["end"] + (t - kept) + jnp.arange(kept)) % n
    put = lambda buf, new: buf.at[:, slots].set(new[:, t - kept :].astype(buf.dtype))
    return {
        "k": put(cache["k"], key),
        "v": put(cache["v"], value),
        "pos": put(cache["pos"], positions),
        "end": cache["end"] + t,
    }
