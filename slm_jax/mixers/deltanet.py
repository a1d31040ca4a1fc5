"""DeltaNet: linear attention with the delta rule (Yang, Wang, Zhang, Shen, Kim 2024, arXiv:2406.06484).

    q, k, v = q_proj(x), k_proj(x), v_proj(x)          x: [b, t, d] -> [b, t, h*e] each
    q, k, v = silu(conv1d(q)), silu(conv1d(k)), silu(conv1d(v))    one short causal conv each
    q, k    = q / (|q| sqrt(e)), k / |k|                per head, over e
    beta    = sigmoid(b_proj(x))                        [b, t, h]
    S_t     = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T       per head: S [e, e]
    o_t     = S_t^T q_t                                 [b, t, h, e]
    y       = o_proj(rmsnorm(o))                        per-head RMSNorm over e, then [b, t, d]

with h = ``n_heads`` heads of width e = ``head_dim`` for queries, keys and values alike. This
is the paper's best configuration (Sec. 3.4 / Table 2: L2-normalised q and k, SiLU feature
map, short convolutions, output norm) as implemented by fla-org/flash-linear-attention's
``DeltaNet`` layer, whose parameter names these are (q_proj, k_proj, v_proj, b_proj,
q_conv1d, k_conv1d, v_conv1d, o_norm, o_proj; fla's convolutions have no bias by default,
ours start at zero). q is scaled by e^-1/2 as fla's kernels do by default: the output norm
makes that nearly immaterial, but it keeps imported fla weights exact. The training and
prefill path is the chunked WY form (ops/delta_rule.py ``chunk_delta_rule``), decode the
one-step recurrence; both in float32. Packed rows (``segment_ids``) restart the convolutions and
the state at each document's first token.

Decode cache: {"q_conv", "k_conv", "v_conv": [b, k_conv - 1, h*e], "state": f32[b, h, e, e]},
constant in the context length.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.conv1d import CausalConv1D, causal_conv_reference, conv_params
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.modules.norms import RMSNorm
from slm_jax.ops.delta_rule import chunk_delta_rule, delta_rule_flops_per_token, l2norm
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32
_QKV = ("q", "k", "v")


@dataclass(frozen=True)
class DeltaNetOptions:
    """DeltaNet options (Yang et al. 2024, arXiv:2406.06484)."""

    n_heads: int = 0  # 0 -> model.n_heads
    head_dim: int = 0  # width of queries, keys and values per head; 0 -> model.d_model / heads
    conv_width: int = 4
    chunk_size: int = 64


class DeltaNet(nn.Module):
    """DeltaNet mixer: f32[b, t, d] -> f32[b, t, d] with h heads, each an [e, e] delta-rule state."""

    Options = DeltaNetOptions
    param_axes = {
        "q_proj/kernel": ("embed", "inner"),
        "k_proj/kernel": ("embed", "inner"),
        "v_proj/kernel": ("embed", "inner"),
        "b_proj/kernel": ("embed", "inner"),
        "q_conv1d/kernel": ("conv", "inner"),
        "k_conv1d/kernel": ("conv", "inner"),
        "v_conv1d/kernel": ("conv", "inner"),
        "q_conv1d/bias": ("inner",),
        "k_conv1d/bias": ("inner",),
        "v_conv1d/bias": ("inner",),
        "o_norm/scale": ("norm",),  # one [e] scale shared by all heads
        "o_proj/kernel": ("inner", "embed"),
    }
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 1}, {"chunk_size": 7}, {"chunk_size": 64})
    test_options = {"head_dim": 12, "chunk_size": 8}  # 3 heads of 12 (36 != d), chunks of 8 in t = 21

    width: int  # d
    num_heads: int  # h
    head_dim: int  # e
    conv_width: int = 4
    chunk_size: int = 64  # c
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @property
    def inner_width(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_config(cls, cfg, options: DeltaNetOptions) -> "DeltaNet":
        m = options
        for key in ("n_heads", "head_dim"):
            if getattr(m, key) < 0:
                raise ConfigError(
                    f"model.mixers.deltanet.{key} must be >= 0 (0 takes it from the model), got {getattr(m, key)}."
                )
        for key in ("conv_width", "chunk_size"):
            if getattr(m, key) <= 0:
                raise ConfigError(f"model.mixers.deltanet.{key} must be positive, got {getattr(m, key)}.")
        heads = m.n_heads or cfg.n_heads
        if not m.head_dim and cfg.d_model % heads:
            raise ConfigError(
                f"model.d_model ({cfg.d_model}) must be divisible by the DeltaNet head count ({heads}) when "
                "model.mixers.deltanet.head_dim is 0; set model.mixers.deltanet.head_dim or n_heads."
            )
        return cls(
            width=cfg.d_model,
            num_heads=heads,
            head_dim=m.head_dim or cfg.d_model // heads,
            conv_width=m.conv_width,
            chunk_size=m.chunk_size,
            norm_eps=cfg.norm_eps,
            **module_fields(cfg),
        )

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: the state carries order) -> (f32[b, t, d], cache).

        ``segment_ids`` i32[b, t] (packed rows, no cache): convolutions and the state restart at each document."""
        del positions
        check_parallel_only(segment_ids, cache)
        bsz, t, _ = x.shape
        h, e, w = self.num_heads, self.head_dim, self.inner_width
        std_init = nn.initializers.normal(self.init_std)
        dense = lambda features, name, init=std_init: Linear(
            features, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        feats, new_cache = {}, {}
        for name in _QKV:
            conv = CausalConv1D(
                w, self.conv_width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_conv1d"
            )
            a, new_cache[f"{name}_conv"] = conv(
                dense(w, f"{name}_proj")(x), None if cache is None else cache[f"{name}_conv"], segment_ids
            )
            feats[name] = jax.nn.silu(a).reshape(bsz, t, h, e)
        q, k, v = l2norm(feats["q"]) * e**-0.5, l2norm(feats["k"]), feats["v"]
        beta = jax.nn.sigmoid(dense(h, "b_proj")(x).astype(_f32))  # [b, t, h]

        o, state = chunk_delta_rule(
            q, k, v, beta, None, None if cache is None else cache["state"], self.chunk_size, segment_ids
        )
        o = RMSNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="o_norm")(o)  # per head over e
        y = dense(self.width, "o_proj", scaled_init(self.init_std, self.n_layers))(o.reshape(bsz, t, w))
        return y, None if cache is None else {**new_cache, "state": state}

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"q_conv", "k_conv", "v_conv": dtype[b, k_conv - 1, h*e], "state": f32[b, h, e, e]}: zeros, for any
        ``max_len``."""
        del max_len
        conv = jnp.zeros((batch, self.conv_width - 1, self.inner_width), dtype)
        state = jnp.zeros((batch, self.num_heads, self.head_dim, self.head_dim), _f32)
        return {**{f"{name}_conv": conv for name in _QKV}, "state": state}

    def num_params(self) -> int:
        d, w, h = self.width, self.inner_width, self.num_heads
        return (
            3 * linear_params(d, w)  # q, k, v projections
            + linear_params(d, h)  # b_proj
            + 3 * conv_params(w, self.conv_width)
            + self.head_dim  # o_norm
            + linear_params(w, d)  # o_proj
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight and conv tap, the chunked delta rule, elementwise ops.

        Convention: the delta rule is counted as the chunked form runs it (``delta_rule_flops_per_token``,
        chunk = min(chunk_size, seq_len)); SiLU, L2 norms, the output RMSNorm and the sigmoid count
        1 FLOP per elementary op, about 15 per inner channel.
        """
        d, w, h = self.width, self.inner_width, self.num_heads
        matmul = 3 * linear_params(d, w) + linear_params(d, h) + linear_params(w, d)
        conv = 3 * 2 * self.conv_width * w
        chunk = min(self.chunk_size, seq_len)
        return 2 * matmul + conv + delta_rule_flops_per_token(h, self.head_dim, self.head_dim, chunk) + 15 * w

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """The DeltaNet layer with the delta rule as a Python loop over time: (y [b, t, d], {"state": [b, h, e, e]})."""
        del positions
        p = variables["params"]
        h, e = self.num_heads, self.head_dim
        bsz, t, _ = x.shape
        feat = lambda name: jax.nn.silu(causal_conv_reference(p[f"{name}_conv1d"], x @ p[f"{name}_proj"]["kernel"]))
        unit = lambda a: a / jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True) + 1e-6)
        q, k = unit(feat("q").reshape(bsz, t, h, e)) / jnp.sqrt(e), unit(feat("k").reshape(bsz, t, h, e))
        v = feat("v").reshape(bsz, t, h, e)
        beta = jax.nn.sigmoid(x @ p["b_proj"]["kernel"])[..., None, None]  # [b, t, h, 1, 1]
        state, eye, outs = jnp.zeros((bsz, h, e, e)), jnp.eye(e), []
        for i in range(t):  # S_t = (I - beta k k^T) S_{t-1} + beta k v^T;  o_t = S_t^T q_t
            kk = k[:, i, :, :, None] * k[:, i, :, None, :]  # [b, h, e, e]
            kv = k[:, i, :, :, None] * v[:, i, :, None, :]
            state = (eye - beta[:, i] * kk) @ state + beta[:, i] * kv
            outs.append(jnp.einsum("bhne,bhn->bhe", state, q[:, i]))
        o = jnp.stack(outs, axis=1)  # [b, t, h, e]
        o = o / jnp.sqrt(jnp.mean(o * o, axis=-1, keepdims=True) + self.norm_eps) * p["o_norm"]["scale"]
        return o.reshape(bsz, t, h * e) @ p["o_proj"]["kernel"], {"state": state}
