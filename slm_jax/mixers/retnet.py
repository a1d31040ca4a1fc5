"""Multi-scale retention, RetNet's token mixer (Sun et al. 2023, arXiv:2307.08621, Sec. 2).

    q, k, v, r = in_proj(x)                  q, k: [b, t, h, k]; v, r: [b, t, h, v]
    q, k       = rope(q), rope(k)            rotary positions in place of the paper's xPos
    S_t        = gamma_h S_{t-1} + k_t^T v_t  S: f32[b, h, k, v]; gamma_h = 1 - 2^(-5 - h) per head
    o_t        = (q_t / sqrt(k)) S_t         [b, t, h, v]
    y          = out_proj(rmsnorm_head(o) * g_norm.scale * swish(r))

with h heads of key width k = d / h and value width v = expand_v d / h (the paper uses
expand_v = 2; default 1 here so that a block keeps a transformer's parameter count beside the
MLP). The fixed decays give each head its own time scale (multi-scale, eq. 8); the
normalisation is per head (the paper's GroupNorm, here an RMSNorm over each head's v channels
with one scale shared by the heads, as fla-org/flash-linear-attention's MultiScaleRetention)
and the output gate is swish(x W_G) (eq. 8). This is the xPos-free variant: the rotation
e^{i n theta} of eq. 5 is RoPE on q and k (model.rope_theta), without xPos's extra length
decay; 1 / sqrt(k) scales the queries as in the paper's parallel form.

Training and prefill use the chunked op (ops/linear_attention.py, one decay per head, a masked
[c, s] decay matrix: the paper's chunkwise recurrent form, eq. 7); decode is its one-step
recurrence (eq. 6). The decode cache {"s": f32[b, h, k, v]} is constant in the context length.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.head_norm_gate import HeadNormGate, head_norm_gate_flops, head_norm_gate_reference
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.modules.rope import apply_rope
from slm_jax.ops.linear_attention import linear_attention, linear_attention_flops_per_token
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def retention_log_decays(num_heads: int) -> np.ndarray:
    """log gamma_h with gamma_h = 1 - 2^(-5 - h), h = 0 .. num_heads - 1 (eq. 8): f32[h]."""
    return np.log1p(-(2.0 ** (-5.0 - np.arange(num_heads)))).astype(np.float32)


@dataclass(frozen=True)
class RetNetOptions:
    """Multi-scale retention options (Sun et al. 2023, arXiv:2307.08621)."""

    n_heads: int = 0  # 0 -> model.n_heads
    expand_v: float = 1.0  # total value width = expand_v * d_model (the paper: 2)
    chunk_size: int = 64


class RetNet(nn.Module):
    """Multi-scale retention: f32[b, t, d] -> f32[b, t, d] with h heads of key width k = d / h."""

    Options = RetNetOptions
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "out_proj/kernel": ("inner", "embed"),
        "g_norm/scale": ("norm",),  # [v], shared by the heads
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 5}, {"chunk_size": 64})
    test_options = {"expand_v": 1.5, "chunk_size": 8}  # 3 heads: key width 8, value width 12

    width: int  # d = h k
    num_heads: int  # h
    value_dim: int  # h v
    chunk_size: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: RetNetOptions) -> "RetNet":
        m = options
        h = m.n_heads or cfg.n_heads
        if h <= 0 or m.chunk_size <= 0:
            raise ConfigError(
                f"model.mixers.retnet.n_heads and chunk_size must be positive, got {h} and {m.chunk_size}."
            )
        if cfg.d_model % h or (cfg.d_model // h) % 2:
            raise ConfigError(
                f"model.d_model ({cfg.d_model}) must split into model.mixers.retnet.n_heads ({h}, 0 -> model.n_heads) "
                "heads of an even key width (RoPE rotates pairs); change one of them."
            )
        vd = int(m.expand_v * cfg.d_model)
        if vd <= 0 or vd % h:
            raise ConfigError(
                f"model.mixers.retnet.expand_v * model.d_model ({vd}) "
                f"must be a positive multiple of the head count ({h}); change expand_v."
            )
        return cls(
            width=cfg.d_model,
            num_heads=h,
            value_dim=vd,
            chunk_size=m.chunk_size,
            rope_theta=cfg.rope_theta,
            norm_eps=cfg.norm_eps,
            **module_fields(cfg),
        )

    @property
    def head_dims(self) -> tuple[int, int]:
        """(key width k, value width v) of one head."""
        return self.width // self.num_heads, self.value_dim // self.num_heads

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d], positions i32[b, t] (RoPE) -> (f32[b, t, d], cache); ``segment_ids``
        i32[b, t] (packed rows, no cache) restarts the state at each document."""
        check_parallel_only(segment_ids, cache)
        bsz, t, d = x.shape
        h, (dk, dv) = self.num_heads, self.head_dims
        std_init = nn.initializers.normal(self.init_std)
        dense = lambda f, name, init=std_init: Linear(
            f, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        q, k, v, r = jnp.split(
            dense(2 * d + 2 * self.value_dim, "in_proj")(x), [d, 2 * d, 2 * d + self.value_dim], axis=-1
        )
        q = apply_rope(q.reshape(bsz, t, h, dk), positions, self.rope_theta) * dk**-0.5
        k = apply_rope(k.reshape(bsz, t, h, dk), positions, self.rope_theta)
        v = v.reshape(bsz, t, h, dv)
        log_gamma = jnp.asarray(retention_log_decays(h))[:, None]  # [h, 1]: one decay per head

        h0 = None if cache is None else cache["s"]
        o, state = linear_attention(q, k, v, log_gamma, self.chunk_size, h0, segment_ids=segment_ids)
        o = HeadNormGate(self.norm_eps, self.dtype, self.param_dtype, name="g_norm")(o, r.reshape(bsz, t, h, dv))
        y = dense(self.width, "out_proj", scaled_init(self.init_std, self.n_layers))(o)
        return y, None if cache is None else {"s": state}

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"s": f32[b, h, k, v]}: zeros, independent of ``max_len`` (the state stays float32)."""
        del max_len, dtype
        dk, dv = self.head_dims
        return {"s": jnp.zeros((batch, self.num_heads, dk, dv), _f32)}

    def num_params(self) -> int:
        d, vd = self.width, self.value_dim
        return linear_params(d, 2 * d + 2 * vd) + self.head_dims[1] + linear_params(vd, d)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight, the chunked op per head, elementwise ops.

        Convention: elementwise ops count 1 FLOP each: RoPE about 4 per query and key channel
        (rotate, combine) plus the query scale (9 d in all); the norm and gate 9 per value channel.
        """
        d, vd = self.width, self.value_dim
        matmul = linear_params(d, 2 * d + 2 * vd) + linear_params(vd, d)
        dk, dv = self.head_dims
        op = self.num_heads * linear_attention_flops_per_token(dk, dv, seq_len, self.chunk_size, per_channel=False)
        return 2 * matmul + op + 9 * d + head_norm_gate_flops(vd)

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """Retention's recurrent form (eq. 6) as a Python loop over time: (y [b, t, d], {"s": [b, h, k, v]})."""
        p = variables["params"]
        bsz, t, d = x.shape
        h, (dk, dv), vd = self.num_heads, self.head_dims, self.value_dim
        proj = x @ p["in_proj"]["kernel"]
        heads = lambda a, e: a.reshape(bsz, t, h, e)
        q = apply_rope(heads(proj[..., :d], dk), positions, self.rope_theta) / jnp.sqrt(dk)
        k = apply_rope(heads(proj[..., d : 2 * d], dk), positions, self.rope_theta)
        v, r = heads(proj[..., 2 * d : 2 * d + vd], dv), heads(proj[..., 2 * d + vd :], dv)
        gamma = 1.0 - 2.0 ** (-5.0 - jnp.arange(h))  # [h]
        s = jnp.zeros((bsz, h, dk, dv))
        outs = []
        for i in range(t):
            s = gamma[:, None, None] * s + k[:, i, :, :, None] * v[:, i, :, None, :]
            outs.append(jnp.einsum("bhk,bhkv->bhv", q[:, i], s))
        o = head_norm_gate_reference(jnp.stack(outs, axis=1), r, p["g_norm"]["scale"], self.norm_eps)
        return o @ p["out_proj"]["kernel"], {"s": s}
