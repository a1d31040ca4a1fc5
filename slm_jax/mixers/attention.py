"""Causal multi-head attention with RoPE, GQA/MQA, an optional sliding window and a KV cache.

The cache holds ``L`` slots: the whole context (``max_len``) for global attention, or only the
last ``window`` positions as a ring buffer for sliding-window attention, so a windowed layer's
decode state is bounded (Beltagy et al. 2020, Longformer; Mistral 7B). Each slot remembers
the absolute position it holds, and the mask is computed from positions (ops/attention.py).
Packed rows (``segment_ids``, parallel path) also mask keys of other documents; positions restart per document.
Gemma 2's options (Gemma Team 2024, arXiv:2408.00118): a score scale other than 1 / sqrt(e)
(``query_pre_attn_scalar``) and soft-capped scores, cap * tanh(scores / cap), before the softmax.
Gated attention (Qiu et al. 2025, arXiv:2505.06708; Qwen3-Next, Qwen3.5): ``output_gate`` multiplies each
head's output by sigmoid(x W_g) channel by channel before the output projection; W_g is the last h e columns
of the fused projection, [q | k | v | gate].
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.bidirectional import NO_CACHE
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.modules.norms import RMSNorm
from slm_jax.modules.rope import apply_rope
from slm_jax.ops.attention import attend
from slm_jax.ops.segments import check_parallel_only


@dataclass(frozen=True)
class AttentionOptions:
    """Global causal attention; heads, RoPE and biases are model-level fields (``model.n_heads`` ...)."""

    window: int = 0  # sliding window in tokens (a ring-buffer cache); 0 -> global causal attention


@dataclass(frozen=True)
class LocalAttentionOptions:
    """Sliding-window attention (Griffin's local attention, Samba)."""

    window: int = 128  # tokens each query sees, itself included (a ring-buffer cache of this many slots)
    rope_theta: float = 0.0  # RoPE base of these layers; 0 -> model.rope_theta (ModernBERT: 10000 local, 160000 global)


class Attention(nn.Module):
    """f32[b, t, d] -> f32[b, t, d]; h query heads and k key/value heads of width e."""

    Options = AttentionOptions
    param_axes = {
        "qkv/kernel": ("embed", "heads"),
        "qkv/bias": ("heads",),
        "o/kernel": ("heads", "embed"),
        "o/bias": ("embed",),
        "q_norm/scale": ("norm",),
        "k_norm/scale": ("norm",),
    }
    lora_targets = ("qkv", "o")
    kv_leaves = ("k", "v")
    test_variants = ()
    test_options = {}
    native_bidirectional = True  # an encoder drops the causal mask (field ``causal``) rather than run twice

    width: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rotary_dim: int | None = None  # leading channels of a head that RoPE rotates; None -> all
    rope_scaling: Any = None  # a RopeScalingConfig (frequency scaling), or None
    window: int = 0  # 0 -> global causal attention
    causal: bool = True  # False (encoders): every key is visible, a window is symmetric (|i - j| < window)
    qk_norm: bool = False  # RMSNorm of each query/key head before RoPE (Qwen3)
    qk_norm_all_heads: bool = False  # the qk norms span all heads' queries / keys at once (OLMo 2), not each head
    qkv_bias: bool = False
    out_bias: bool = False
    output_gate: bool = False  # out * sigmoid(gate) per head channel; the gate is qkv's last h e columns
    norm_eps: float = 1e-5  # of the qk norms
    norm_offset: float = 0.0  # of the qk norms: 1 -> (1 + w)
    scale: float = 0.0  # multiplier of q.k; 0 -> 1 / sqrt(head_dim)
    softcap: float = 0.0  # 0 -> off; else scores -> softcap * tanh(scores / softcap) before the softmax
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options) -> "Attention":
        if options.window < 0 or (cls is LocalAttention and options.window == 0):
            kind = "a positive window" if cls is LocalAttention else ">= 0 (0 = global)"
            raise ConfigError(
                f"The {cls.__name__} window must be {kind}, got {options.window}; set model.mixers.<name>.window."
            )
        return cls(
            width=cfg.d_model,
            num_heads=cfg.n_heads,
            num_kv_heads=cfg.kv_heads,
            head_dim=cfg.attn_head_dim,
            rope_theta=getattr(options, "rope_theta", 0.0) or cfg.rope_theta,
            rotary_dim=cfg.rotary_dim if cfg.position == "rope" else 0,  # learned / no positions: no rotation
            rope_scaling=cfg.rope_scaling,
            window=options.window,
            causal=cfg.causal,
            qk_norm=cfg.qk_norm,
            qk_norm_all_heads=cfg.qk_norm_all_heads,
            qkv_bias=cfg.qkv_bias,
            out_bias=cfg.attn_out_bias,
            output_gate=cfg.attn_output_gate,
            norm_eps=cfg.norm_eps,
            norm_offset=cfg.norm_offset,
            scale=cfg.attn_scale,
            softcap=cfg.attn_softcap,
            **module_fields(cfg),
        )

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        cache: PyTree = None,
        lengths: Array | None = None,
        segment_ids: Array | None = None,
        qkv_delta: Array | None = None,
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d], positions i32[b, t] -> (f32[b, t, d], cache); ``lengths`` i32[b] (encoders only)
        hides the keys at and after each row's length (right padding); ``segment_ids`` i32[b, t] (packed
        rows, no cache) hides the keys of other documents. ``qkv_delta`` f32[b, t, qkv_width] is added to the
        fused projection: a shared block's per-use adapters (models/shared_block.py)."""
        if not self.causal and cache is not None:
            raise ConfigError(NO_CACHE)
        check_parallel_only(segment_ids, cache)
        b, t, _ = x.shape
        h, k, e = self.num_heads, self.num_kv_heads, self.head_dim
        std_init = nn.initializers.normal(self.init_std)
        dense = lambda f, name, bias=False, init=std_init: Linear(
            f, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        # One fused projection: a single wider matmul is faster than three narrow ones on CPU.
        qkv = dense(self.qkv_width, "qkv", self.qkv_bias)(x)
        if qkv_delta is not None:
            qkv = qkv + qkv_delta.astype(qkv.dtype)
        q, key, value, gate = jnp.split(qkv, [h * e, (h + k) * e, (h + 2 * k) * e], axis=-1)
        norm = lambda name: RMSNorm(
            self.norm_eps, self.norm_offset, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        if self.qk_norm and self.qk_norm_all_heads:  # over [h e] and [k e]
            q, key = norm("q_norm")(q), norm("k_norm")(key)
        q, key = q.reshape(b, t, h, e), key.reshape(b, t, k, e)
        if self.qk_norm and not self.qk_norm_all_heads:  # over each head's e
            q, key = norm("q_norm")(q), norm("k_norm")(key)
        rope = lambda a: apply_rope(a, positions, self.rope_theta, self.rotary_dim, self.rope_scaling)
        q = rope(q)
        # Keys and values head-major, [b, k, t, e]: the layout of the cache and of ops.attend.
        key = rope(key).transpose(0, 2, 1, 3)
        value = value.reshape(b, t, k, e).transpose(0, 2, 1, 3)
        scores = {"scale": self.scale, "softcap": self.softcap}

        if not self.causal:
            mask = _bidirectional_mask_positions(positions, lengths, self.window)
            out = attend(q, key, value, *mask, segment_ids, **scores)
        elif cache is None:
            out = attend(q, key, value, positions, positions, self.window, segment_ids, **scores)
        elif t == 1:
            # Decode: write the token in place, then attend over the slots. The slot it
            # overwrites in a ring buffer holds position p - window, already outside the window.
            cache = _write_slots(cache, key, value, positions)
            keys, values = cache["k"].astype(self.dtype), cache["v"].astype(self.dtype)
            out = attend(q, keys, values, positions, cache["pos"], self.window, **scores)
        else:
            # Prefill: attend over [cached slots ; new tokens] first, since the new tokens may
            # overwrite ring slots that earlier queries of this chunk still see.
            keys = jnp.concatenate([cache["k"], key.astype(cache["k"].dtype)], axis=2)  # [b, k, L + t, e]
            values = jnp.concatenate([cache["v"], value.astype(cache["v"].dtype)], axis=2)
            k_pos = jnp.concatenate([cache["pos"], positions], axis=1)  # [b, L + t]
            out = attend(q, keys.astype(self.dtype), values.astype(self.dtype), positions, k_pos, self.window, **scores)
            cache = _write_slots(cache, key, value, positions)
        out = out.reshape(b, t, h * e)
        if self.output_gate:
            out = out * jax.nn.sigmoid(gate)
        y = dense(self.width, "o", self.out_bias, scaled_init(self.init_std, self.n_layers))(out)
        return y, cache

    @property
    def qkv_width(self) -> int:
        """Columns of the fused projection: h e queries, 2 k e keys and values, h e gates when gated."""
        return ((1 + self.output_gate) * self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def cache_len(self, max_len: int) -> int:
        return min(max_len, self.window) if self.window else max_len

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        n = self.cache_len(max_len)
        kv = jnp.zeros((batch, self.num_kv_heads, n, self.head_dim), dtype)
        return {"k": kv, "v": kv, "pos": jnp.full((batch, n), -1, jnp.int32), "end": jnp.zeros((), jnp.int32)}

    def num_params(self) -> int:
        e, h, d = self.head_dim, self.num_heads, self.width
        qkv = linear_params(d, self.qkv_width, bias=self.qkv_bias)
        norms = (h + self.num_kv_heads) * e if self.qk_norm_all_heads else 2 * e
        return qkv + linear_params(h * e, d, bias=self.out_bias) + (norms if self.qk_norm else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: projections plus scores and weighted sum over the causal context
        (and, gated, about 5 per gated channel: the sigmoid and the product)."""
        context = min(seq_len, self.window or seq_len)
        mean_context = (context + 1) / 2 if context == seq_len else context  # causal average
        if not self.causal:  # every key, or a symmetric window of 2 * window - 1
            mean_context = min(seq_len, 2 * self.window - 1) if self.window else seq_len
        e, h, d = self.head_dim, self.num_heads, self.width
        weights = linear_params(d, self.qkv_width) + linear_params(h * e, d)
        return 2 * weights + 4 * h * e * mean_context + 5 * h * e * self.output_gate  # sigmoid ~4, product 1

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """Softmax attention written out per query (Vaswani et al. 2017), with GQA, the window, scale and cap.

        Returns (y f32[b, t, d], {"k", "v": [b, k, t, e]}: every key and value, RoPE applied).
        """
        p = variables["params"]
        b, t, _ = x.shape
        h, k, e = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = x @ p["qkv"]["kernel"] + (p["qkv"]["bias"] if self.qkv_bias else 0.0)
        q, key, value = qkv[..., : h * e], qkv[..., h * e : (h + k) * e], qkv[..., (h + k) * e : (h + 2 * k) * e]
        rms = lambda a, s: a / jnp.sqrt(jnp.mean(a * a, -1, keepdims=True) + self.norm_eps) * (self.norm_offset + s)
        if self.qk_norm and self.qk_norm_all_heads:
            q, key = rms(q, p["q_norm"]["scale"]), rms(key, p["k_norm"]["scale"])
        q, key, value = q.reshape(b, t, h, e), key.reshape(b, t, k, e), value.reshape(b, t, k, e)
        if self.qk_norm and not self.qk_norm_all_heads:
            q, key = rms(q, p["q_norm"]["scale"]), rms(key, p["k_norm"]["scale"])
        rope = lambda a: apply_rope(a, positions, self.rope_theta, self.rotary_dim, self.rope_scaling)
        q, key = rope(q), rope(key)
        key_h = jnp.repeat(key, h // k, axis=2)  # GQA: query head j reads key/value head j // (h / k)
        value_h = jnp.repeat(value, h // k, axis=2)
        outs = []
        for i in range(t):  # one query position at a time, over the keys it may see
            lo = max(0, i - self.window + 1) if self.window else 0
            hi = i + 1 if self.causal else (min(t, i + self.window) if self.window else t)
            scores = jnp.einsum("bhe,bjhe->bhj", q[:, i], key_h[:, lo:hi]) * (self.scale or 1 / np.sqrt(e))
            if self.softcap:
                scores = self.softcap * jnp.tanh(scores / self.softcap)
            outs.append(jnp.einsum("bhj,bjhe->bhe", jax.nn.softmax(scores, axis=-1), value_h[:, lo:hi]))
        out = jnp.stack(outs, axis=1).reshape(b, t, h * e)
        if self.output_gate:
            out = out / (1 + jnp.exp(-qkv[..., (h + 2 * k) * e :]))
        y = out @ p["o"]["kernel"] + (p["o"]["bias"] if self.out_bias else 0.0)
        # The cache after t tokens: slot s holds the newest position p < t with p = s (mod slots).
        n = self.cache_len(t)
        held = np.array([s + n * ((t - 1 - s) // n) for s in range(n)])
        return y, {"k": key[:, held].transpose(0, 2, 1, 3), "v": value[:, held].transpose(0, 2, 1, 3)}


class LocalAttention(Attention):
    """Sliding-window attention with a ring-buffer cache of ``window`` slots (Griffin, Samba)."""

    Options = LocalAttentionOptions
    test_options = {"window": 6}  # shorter than the test sequences, so the ring buffer wraps


def _bidirectional_mask_positions(positions: Array, lengths: Array | None, window: int) -> tuple[Array, Array, int]:
    """(query positions, key positions, window) for ``attend`` whose causal mask is the encoder's mask.

    ``attend`` shows key k to query q when q - window < k <= q and k >= 0. Shifting every query to
    q + window - 1 and widening the window to 2 * window - 1 turns that into |q - k| < window; a
    global encoder shifts queries past every key. Padded keys (index >= length) get position -1.
    """
    k_pos = positions
    if lengths is not None:
        k_pos = jnp.where(jnp.arange(positions.shape[1])[None, :] < lengths[:, None], positions, -1)
    if window:
        return positions + window - 1, k_pos, 2 * window - 1
    return jnp.full_like(positions, jnp.iinfo(jnp.int32).max), k_pos, 0


def _write_slots(cache: PyTree, key: Array, value: Array, positions: Array) -> PyTree:
    """Store the last min(t, L) new tokens at slots (end + i) mod L; key/value: [b, k, t, e]."""
    n, t = cache["k"].shape[2], key.shape[2]
    if t == 1:  # one contiguous slot: an in-place update inside a compiled decode loop
        slot = cache["end"] % n
        put = lambda buf, new, axis: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), slot, axis=axis)
    else:
        kept = min(t, n)  # with t > L only the newest L tokens can stay
        slots = (cache["end"] + (t - kept) + jnp.arange(kept)) % n

        def put(buf, new, axis):
            index = (slice(None),) * axis + (slots,)
            return buf.at[index].set(jax.lax.slice_in_dim(new, t - kept, t, axis=axis).astype(buf.dtype))

    return {
        "k": put(cache["k"], key, 2),
        "v": put(cache["v"], value, 2),
        "pos": put(cache["pos"], positions, 1),
        "end": cache["end"] + t,
    }
