"""Based: Taylor-feature linear attention (Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou,
Rudra & Re 2024, "Simple linear attention language models balance the recall-throughput tradeoff",
arXiv:2402.18668, Sec. 4).

    q, k, v = in_proj(x)                          q, k: [b, t, h, f]; v: [b, t, h, v]
    phi(x)  = [1, x / f^(1/4), vec(x x^T) / (sqrt(2) sqrt(f))]     [.., n], n = 1 + f + f^2
    S_t     = S_{t-1} + phi(k_t)^T v_t            S: f32[b, h, n, v]   (no decay)
    z_t     = z_{t-1} + phi(k_t)                  z: f32[b, h, n]      (the running key sum)
    o_t     = phi(q_t) S_t / (phi(q_t) . z_t + eps)
    y       = out_proj(o)

so phi(q) . phi(k) = 1 + q.k / sqrt(f) + (q.k)^2 / (2 f), the second-order Taylor expansion of
exp(q.k / sqrt(f)), with f = feature_dim (16 in the paper) and v = d / h. The feature map's
scalings and the full (not symmetrised) f x f outer product are those of HazyResearch/zoology's
``TaylorExp``. Since 1 + x + x^2 / 2 >= 1/2, the denominator is at least t / 2: eps only guards
``normalize=false``-style misuse and follows fla's default (1e-6; zoology uses 1e-12).

The numerator and denominator come from one linear-attention op call: the values get a
constant extra channel of ones, whose output is phi(q) . z and whose state column is z
(ops/linear_attention.py, no decay: training and prefill chunked, decode its one-step
recurrence). The decode cache {"s": f32[b, h, n, v], "z": f32[b, h, n]} is constant in the
context length ("z" is absent with normalize=false). In the Based architecture these layers
alternate with small sliding-window attention (the ``based`` preset).
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.ops.linear_attention import linear_attention, linear_attention_flops_per_token
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def taylor_features(x: Array) -> Array:
    """phi(x) = [1, x / f^(1/4), vec(x x^T) / sqrt(2 f)]: f32[..., f] -> f32[..., 1 + f + f^2]."""
    f = x.shape[-1]
    x = x.astype(_f32)
    outer = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], f * f)
    return jnp.concatenate([jnp.ones_like(x[..., :1]), x * f**-0.25, outer * (2 * f) ** -0.5], axis=-1)


@dataclass(frozen=True)
class BasedOptions:
    """Based linear attention options (Arora et al. 2024, arXiv:2402.18668)."""

    feature_dim: int = 16  # f: query/key width before the Taylor map (n = 1 + f + f^2 features)
    n_heads: int = 0  # 0 -> model.n_heads
    chunk_size: int = 64
    normalize: bool = True  # divide by phi(q) . sum phi(k)
    eps: float = 1e-6


class Based(nn.Module):
    """Based linear attention: f32[b, t, d] -> f32[b, t, d] with h heads of f features and value width v = d / h."""

    Options = BasedOptions
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "out_proj/kernel": ("inner", "embed"),
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 5}, {"chunk_size": 64})
    test_options = {"feature_dim": 3, "chunk_size": 8}  # 13 Taylor features, 3 heads of value width 8

    width: int  # d = h v
    num_heads: int  # h
    feature_dim: int = 16  # f
    chunk_size: int = 64
    normalize: bool = True
    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: BasedOptions) -> "Based":
        m = options
        h = m.n_heads or cfg.n_heads
        for key, value in (("n_heads", h), ("feature_dim", m.feature_dim), ("chunk_size", m.chunk_size)):
            if value <= 0:
                raise ConfigError(f"model.mixers.based.{key} must be positive, got {value}.")
        if cfg.d_model % h:
            raise ConfigError(
                f"model.d_model ({cfg.d_model}) must be divisible by "
                f"model.mixers.based.n_heads ({h}, 0 -> model.n_heads); change one of them."
            )
        if m.eps < 0:
            raise ConfigError(f"model.mixers.based.eps must be >= 0, got {m.eps}.")
        return cls(
            width=cfg.d_model,
            num_heads=h,
            feature_dim=m.feature_dim,
            chunk_size=m.chunk_size,
            normalize=m.normalize,
            eps=m.eps,
            **module_fields(cfg),
        )

    @property
    def num_features(self) -> int:
        """n = 1 + f + f^2, the width of phi."""
        return 1 + self.feature_dim + self.feature_dim**2

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: no decay, no position encoding) -> (f32[b, t, d], cache);
        ``segment_ids`` i32[b, t] (packed rows, no cache) restarts the state and the key sum at each document."""
        check_parallel_only(segment_ids, cache)
        del positions
        bsz, t, d = x.shape
        h, f = self.num_heads, self.feature_dim
        dv = d // h
        std_init = nn.initializers.normal(self.init_std)
        dense = lambda n, name, init=std_init: Linear(
            n, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        q, k, v = jnp.split(dense(2 * h * f + d, "in_proj")(x), [h * f, 2 * h * f], axis=-1)
        q, k = taylor_features(q.reshape(bsz, t, h, f)), taylor_features(k.reshape(bsz, t, h, f))
        v = v.reshape(bsz, t, h, dv).astype(_f32)
        if self.normalize:  # a channel of ones: its output is the denominator, its state column the key sum z
            v = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)
            h0 = None if cache is None else jnp.concatenate([cache["s"], cache["z"][..., None]], axis=-1)
        else:
            h0 = None if cache is None else cache["s"]

        # training, prefill and decode alike
        o, state = linear_attention(q, k, v, None, self.chunk_size, h0, segment_ids=segment_ids)
        if self.normalize:
            o = o[..., :dv] / (o[..., dv:] + self.eps)
            new_cache = {"s": state[..., :dv], "z": state[..., dv]}
        else:
            new_cache = {"s": state}
        y = dense(self.width, "out_proj", scaled_init(self.init_std, self.n_layers))(
            o.reshape(bsz, t, d).astype(self.dtype)
        )
        return y, None if cache is None else new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"s": f32[b, h, n, v], "z": f32[b, h, n]}: zeros, independent of ``max_len`` (float32 sums)."""
        del max_len, dtype
        h, n = self.num_heads, self.num_features
        cache = {"s": jnp.zeros((batch, h, n, self.width // h), _f32)}
        if self.normalize:
            cache["z"] = jnp.zeros((batch, h, n), _f32)
        return cache

    def num_params(self) -> int:
        d, hf = self.width, self.num_heads * self.feature_dim
        return linear_params(d, 2 * hf + d) + linear_params(d, d)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight, the chunked op per head, the feature maps.

        Convention: elementwise ops count 1 FLOP each: per head and map, the outer product and
        its scale (2 f^2) and the linear term's scale (f); the division by the denominator
        (v + 1 per head, with eps). The ones channel is one more value channel of the op.
        """
        d, h, f = self.width, self.num_heads, self.feature_dim
        matmul = linear_params(d, 2 * h * f + d) + linear_params(d, d)
        dv = d // h + int(self.normalize)
        op = h * linear_attention_flops_per_token(self.num_features, dv, seq_len, self.chunk_size, per_channel=False)
        return 2 * matmul + op + h * 2 * (2 * f * f + f) + (d + h) * int(self.normalize)

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """Based's causal attention with the Taylor kernel (Sec. 4), one query at a time: (y [b, t, d], {"s", "z"}).

        The outputs use the kernel 1 + q.k / sqrt(f) + (q.k)^2 / (2 f) directly (no feature
        map); the state is the sum of phi(k)^T v (and of phi(k)) over the sequence.
        """
        del positions
        p = variables["params"]
        bsz, t, d = x.shape
        h, f = self.num_heads, self.feature_dim
        proj = x @ p["in_proj"]["kernel"]
        q, k = proj[..., : h * f].reshape(bsz, t, h, f), proj[..., h * f : 2 * h * f].reshape(bsz, t, h, f)
        v = proj[..., 2 * h * f :].reshape(bsz, t, h, d // h)
        outs = []
        for i in range(t):
            dot = jnp.einsum("bhf,bshf->bhs", q[:, i], k[:, : i + 1])
            weights = 1.0 + dot / jnp.sqrt(f) + dot**2 / (2.0 * f)  # [b, h, s]
            num = jnp.einsum("bhs,bshv->bhv", weights, v[:, : i + 1])
            outs.append(num / (jnp.sum(weights, axis=-1)[..., None] + self.eps) if self.normalize else num)
        y = jnp.stack(outs, axis=1).reshape(bsz, t, d) @ p["out_proj"]["kernel"]
        phi_k = taylor_features(k)
        state = {"s": jnp.einsum("bthn,bthv->bhnv", phi_k, v)}
        if self.normalize:
            state["z"] = jnp.sum(phi_k, axis=1)
        return y, state
