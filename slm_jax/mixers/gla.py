"""Gated Linear Attention (Yang, Wang, Shen, Panda & Kim 2024, arXiv:2312.06635, Sec. 4).

    q, k, v, r = in_proj(x)                         q, k: [b, t, h, k]; v, r: [b, t, h, v]
    log a_t    = logsigmoid(x W1 W2 + b) / tau      [b, t, h, k]: alpha_t = sigmoid(x W1 W2 + b)^(1 / tau), tau = 16
    S_t        = diag(alpha_t) S_{t-1} + k_t^T v_t  S: f32[b, h, k, v] per head
    o_t        = (q_t / sqrt(k)) S_t                [b, t, h, v]
    y          = out_proj(rmsnorm_head(o) * g_norm.scale * swish(r))

with h heads, key width k = expand_k d / h and value width v = expand_v d / h (paper: expand_k
0.5, expand_v 1). The forget gate is low rank (W1: [d, 16], W2: [16, h k], a bias b) and
tau = 16 keeps alpha near 1 (Sec. 4.4); it is computed in log space (logsigmoid / tau), so
the chunked op never forms alpha^(1/tau) of a saturated sigmoid. The output is normalised per
head (RMSNorm over the v channels of each head, one scale shared by the heads, as
fla-org/flash-linear-attention's ``FusedRMSNormGated``) and gated by swish(x W_r). The query
scale 1 / sqrt(k) is that implementation's default; the decay stays in float32 whatever the
compute dtype.

Training and prefill use the chunked op (ops/linear_attention.py, per key channel decay,
secondary chunking); decode is its one-step recurrence. The decode cache {"s": f32[b, h, k, v]}
is constant in the context length.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.head_norm_gate import HeadNormGate, head_norm_gate_flops, head_norm_gate_reference
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.ops.linear_attention import linear_attention, linear_attention_flops_per_token
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


@dataclass(frozen=True)
class GLAOptions:
    """Gated Linear Attention options (Yang et al. 2024, arXiv:2312.06635)."""

    n_heads: int = 0  # 0 -> model.n_heads
    expand_k: float = 0.5  # total key width = expand_k * d_model
    expand_v: float = 1.0  # total value width = expand_v * d_model
    gate_low_rank: int = 16  # rank of the forget-gate projection W1 W2
    chunk_size: int = 64


class GLA(nn.Module):
    """Gated linear attention: f32[b, t, d] -> f32[b, t, d] with h heads of key width k and value width v."""

    Options = GLAOptions
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "out_proj/kernel": ("inner", "embed"),
        "gk_proj_a/kernel": ("embed", None),  # low-rank forget gate W1: [d, rank]
        "gk_proj_b/kernel": (None, "inner"),  # W2: [rank, h k]
        "gk_proj_b/bias": ("inner",),
        "g_norm/scale": ("norm",),  # [v], shared by the heads
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 5}, {"chunk_size": 64})
    test_options = {"n_heads": 2, "gate_low_rank": 5, "chunk_size": 8}  # key width 6, value width 12 per head

    width: int  # d
    num_heads: int  # h
    key_dim: int  # h k
    value_dim: int  # h v
    gate_low_rank: int = 16
    chunk_size: int = 64
    gate_logit_normalizer: float = 16.0  # tau (the paper's value; not an option)
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: GLAOptions) -> "GLA":
        m = options
        h = m.n_heads or cfg.n_heads
        for key, value in (("n_heads", h), ("gate_low_rank", m.gate_low_rank), ("chunk_size", m.chunk_size)):
            if value <= 0:
                raise ConfigError(f"model.mixers.gla.{key} must be positive, got {value}.")
        for key in ("expand_k", "expand_v"):
            width = int(getattr(m, key) * cfg.d_model)
            if width <= 0 or width % h:
                raise ConfigError(
                    f"model.mixers.gla.{key} * model.d_model ({width}) must be a positive multiple of the head count "
                    f"({h}, model.mixers.gla.n_heads or model.n_heads); change one of them."
                )
        return cls(
            width=cfg.d_model,
            num_heads=h,
            key_dim=int(m.expand_k * cfg.d_model),
            value_dim=int(m.expand_v * cfg.d_model),
            gate_low_rank=m.gate_low_rank,
            chunk_size=m.chunk_size,
            norm_eps=cfg.norm_eps,
            **module_fields(cfg),
        )

    @property
    def head_dims(self) -> tuple[int, int]:
        """(key width k, value width v) of one head."""
        return self.key_dim // self.num_heads, self.value_dim // self.num_heads

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: the state carries order) -> (f32[b, t, d], cache);
        ``segment_ids`` i32[b, t] (packed rows, no cache) restarts the state at each document."""
        check_parallel_only(segment_ids, cache)
        del positions
        bsz, t, _ = x.shape
        h, (dk, dv) = self.num_heads, self.head_dims
        std_init = nn.initializers.normal(self.init_std)
        dense = lambda f, name, bias=False, init=std_init: Linear(
            f, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        q, k, v, r = jnp.split(
            dense(2 * self.key_dim + 2 * self.value_dim, "in_proj")(x),
            [self.key_dim, 2 * self.key_dim, 2 * self.key_dim + self.value_dim],
            axis=-1,
        )
        gk = dense(self.key_dim, "gk_proj_b", bias=True)(dense(self.gate_low_rank, "gk_proj_a")(x))
        log_alpha = (jax.nn.log_sigmoid(gk.astype(_f32)) / self.gate_logit_normalizer).reshape(bsz, t, h, dk)
        q = q.reshape(bsz, t, h, dk) * dk**-0.5
        k, v = k.reshape(bsz, t, h, dk), v.reshape(bsz, t, h, dv)

        h0 = None if cache is None else cache["s"]
        o, state = linear_attention(q, k, v, log_alpha, self.chunk_size, h0, segment_ids=segment_ids)
        o = HeadNormGate(self.norm_eps, self.dtype, self.param_dtype, name="g_norm")(o, r.reshape(bsz, t, h, dv))
        y = dense(self.width, "out_proj", init=scaled_init(self.init_std, self.n_layers))(o)
        return y, None if cache is None else {"s": state}

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"s": f32[b, h, k, v]}: zeros, independent of ``max_len`` (the state stays float32)."""
        del max_len, dtype
        dk, dv = self.head_dims
        return {"s": jnp.zeros((batch, self.num_heads, dk, dv), _f32)}

    def num_params(self) -> int:
        d, kd, vd, r = self.width, self.key_dim, self.value_dim, self.gate_low_rank
        gate = linear_params(d, r) + linear_params(r, kd, bias=True)
        return linear_params(d, 2 * kd + 2 * vd) + gate + self.head_dims[1] + linear_params(vd, d)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight, the chunked op per head, elementwise ops.

        Convention: elementwise ops count 1 FLOP each: per key channel the gate bias, logsigmoid
        (about 4), / tau and the query scale (7 k h in all); the norm and gate 9 per value channel.
        """
        d, kd, vd, r = self.width, self.key_dim, self.value_dim, self.gate_low_rank
        matmul = linear_params(d, 2 * kd + 2 * vd) + linear_params(d, r) + linear_params(r, kd) + linear_params(vd, d)
        dk, dv = self.head_dims
        op = self.num_heads * linear_attention_flops_per_token(dk, dv, seq_len, self.chunk_size, per_channel=True)
        return 2 * matmul + op + 7 * kd + head_norm_gate_flops(vd)

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """GLA's recurrent form (eq. 2 / Sec. 4) as a Python loop over time: (y [b, t, d], {"s": [b, h, k, v]})."""
        del positions
        p = variables["params"]
        bsz, t, _ = x.shape
        h, (dk, dv), kd, vd = self.num_heads, self.head_dims, self.key_dim, self.value_dim
        proj = x @ p["in_proj"]["kernel"]
        heads = lambda a, e: a.reshape(bsz, t, h, e)
        q, k = heads(proj[..., :kd], dk) / jnp.sqrt(dk), heads(proj[..., kd : 2 * kd], dk)
        v, r = heads(proj[..., 2 * kd : 2 * kd + vd], dv), heads(proj[..., 2 * kd + vd :], dv)
        logits = x @ p["gk_proj_a"]["kernel"] @ p["gk_proj_b"]["kernel"] + p["gk_proj_b"]["bias"]
        alpha = heads(jax.nn.sigmoid(logits) ** (1.0 / self.gate_logit_normalizer), dk)  # the paper's gate
        s = jnp.zeros((bsz, h, dk, dv))
        outs = []
        for i in range(t):
            s = alpha[:, i, :, :, None] * s + k[:, i, :, :, None] * v[:, i, :, None, :]
            outs.append(jnp.einsum("bhk,bhkv->bhv", q[:, i], s))
        o = head_norm_gate_reference(jnp.stack(outs, axis=1), r, p["g_norm"]["scale"], self.norm_eps)
        return o @ p["out_proj"]["kernel"], {"s": s}
