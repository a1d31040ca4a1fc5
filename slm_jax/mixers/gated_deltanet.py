"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv:2412.06464), laid out as Qwen3-Next / Qwen3.5.

    qkv, z, b, a = in_proj_qkv(x), in_proj_z(x), in_proj_b(x), in_proj_a(x)
                                   qkv: [b, t, 2 k n + h e]; z: [b, t, h e]; b, a: [b, t, h]
    q, k, v = silu(conv1d(qkv))    one causal depthwise conv over q, k and v together
    q, k    = q / (|q| sqrt(n)), k / |k|                   per key head, over n
    beta    = sigmoid(b)                                    [b, t, h]; 2 sigmoid(b) with neg_eigval
    log alpha = -exp(A_log) softplus(a + dt_bias)           [b, t, h], <= 0 (Mamba-2's decay)
    S_t     = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T      per value head: S [n, e]
    o_t     = S_t^T q_t
    y       = out_proj(rmsnorm(o) * silu(z))                gated RMSNorm per value head, over e

with k key heads of width n (queries and keys) and h value heads of width e; h is a multiple
of k and value head j reads key head j // (h / k), as a query head reads its key/value head in
GQA. The training and prefill path is the chunked WY form of ops/delta_rule.py, decode the
one-step recurrence; both in float32. Packed rows (``segment_ids``) restart the convolution and
the state at each document's first token. A_log is initialised log U[0.01, 16] (fla's
GatedDeltaNet draws A from U[0, 16]; Qwen3.5 keeps it off 0) and dt_bias so that
softplus(dt_bias) is log-uniform in [0.001, 0.1], as in Mamba-2.

Names and Hugging Face (``Qwen3_5GatedDeltaNet``, ``model.layers.i.linear_attn.*``; config
linear_num_key_heads = n_heads, linear_num_value_heads = n_v_heads, linear_key_head_dim =
head_dim, linear_value_head_dim = v_head_dim, linear_conv_kernel_dim = conv_width,
rms_norm_eps = norm_eps):

    ours                          qwen3_5                     how
    in_proj_qkv/kernel [d, C]     in_proj_qkv.weight [C, d]   transpose (C = 2 k n + h e, [q | k | v])
    in_proj_z/kernel  [d, h e]    in_proj_z.weight            transpose
    in_proj_b/kernel  [d, h]      in_proj_b.weight            transpose
    in_proj_a/kernel  [d, h]      in_proj_a.weight            transpose
    conv1d/kernel     [K, C]      conv1d.weight [C, 1, K]     squeeze, transpose (conv_bias false: HF has none)
    A_log, dt_bias    [h]         A_log, dt_bias              as is
    o_norm/scale      [e]         norm.weight                 as is
    out_proj/kernel   [h e, d]    out_proj.weight             transpose

Qwen3-Next (``Qwen3NextGatedDeltaNet``) fuses in_proj_qkvz.weight, whose rows come in k groups
of [q (n) | k (n) | v (h/k e) | z (h/k e)], and in_proj_ba.weight, in k groups of
[b (h/k) | a (h/k)]: a converter reshapes them to [k, group] rows and concatenates the q, k
and v slices of all groups into in_proj_qkv (and z, b, a likewise); everything else maps as for
Qwen3.5.

``neg_eigval`` lets beta reach 2, so the transition I - beta k k^T has eigenvalues in (-1, 1] (Grazzi et al.
2024, arXiv:2411.12537: negative eigenvalues let linear RNNs track state such as parity; OLMo hybrid's
``linear_allow_neg_eigval``).

Decode cache: {"conv": [b, K - 1, 2 k n + h e], "state": f32[b, h, n, e]}, constant in context length.
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
from slm_jax.modules.init import dt_bias_init
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.modules.norms import RMSNorm
from slm_jax.ops.delta_rule import chunk_delta_rule, delta_rule_flops_per_token, l2norm
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def _a_log_init(key: Array, shape: tuple[int, ...], dtype: Any = _f32) -> Array:
    """A_log = log(A), A ~ U[0.01, 16] per value head (Qwen3.5's range)."""
    return jnp.log(jax.random.uniform(key, shape, _f32, 0.01, 16.0)).astype(dtype)


@dataclass(frozen=True)
class GatedDeltaNetOptions:
    """Gated DeltaNet options (Yang, Kautz, Hatamizadeh 2024, arXiv:2412.06464; Qwen3-Next / Qwen3.5)."""

    n_heads: int = 0  # key (and query) heads; 0 -> model.n_heads
    n_v_heads: int = 0  # value heads, a multiple of n_heads; 0 -> n_heads
    head_dim: int = 0  # key width n; 0 -> model.d_model / n_heads
    v_head_dim: int = 0  # value width e; 0 -> head_dim
    conv_width: int = 4
    conv_bias: bool = True  # a bias on the short convolution (fla has one; Qwen3-Next / Qwen3.5 do not)
    neg_eigval: bool = False  # beta = 2 sigmoid(b) in (0, 2): negative transition eigenvalues (Grazzi et al. 2024)
    chunk_size: int = 64
    norm_eps: float = 1e-6  # of the gated output norm (Qwen3-Next's rms_norm_eps)


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet mixer: f32[b, t, d] -> f32[b, t, d]; k key heads of width n, h value heads of width e."""

    Options = GatedDeltaNetOptions
    param_axes = {
        "in_proj_qkv/kernel": ("embed", "inner"),
        "in_proj_z/kernel": ("embed", "inner"),
        "in_proj_b/kernel": ("embed", "inner"),
        "in_proj_a/kernel": ("embed", "inner"),
        "conv1d/kernel": ("conv", "inner"),
        "conv1d/bias": ("inner",),
        "A_log": ("inner", None),
        "dt_bias": ("inner",),
        "o_norm/scale": ("norm",),  # one [e] scale shared by all value heads
        "out_proj/kernel": ("inner", "embed"),
    }
    lora_targets = ("in_proj_qkv", "in_proj_z", "out_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 1}, {"chunk_size": 7}, {"chunk_size": 64})  # neg_eigval: test_gated_deltanet.py
    # 2 key heads of 12 feeding 4 value heads of 10 (GQA-like, n != e), chunks of 8 in t = 21
    test_options = {"n_heads": 2, "n_v_heads": 4, "head_dim": 12, "v_head_dim": 10, "chunk_size": 8}

    width: int  # d
    num_heads: int  # k, key heads
    num_v_heads: int  # h, value heads
    head_dim: int  # n
    v_head_dim: int  # e
    conv_width: int = 4
    conv_bias: bool = True
    neg_eigval: bool = False
    chunk_size: int = 64  # c
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @property
    def key_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def value_width(self) -> int:
        return self.num_v_heads * self.v_head_dim

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_width + self.value_width

    @classmethod
    def from_config(cls, cfg, options: GatedDeltaNetOptions) -> "GatedDeltaNet":
        m = options
        for key in ("n_heads", "n_v_heads", "head_dim", "v_head_dim"):
            if getattr(m, key) < 0:
                raise ConfigError(
                    f"model.mixers.gated_deltanet.{key} must be >= 0 (0 = the default), got {getattr(m, key)}."
                )
        for key in ("conv_width", "chunk_size"):
            if getattr(m, key) <= 0:
                raise ConfigError(f"model.mixers.gated_deltanet.{key} must be positive, got {getattr(m, key)}.")
        if m.norm_eps <= 0:
            raise ConfigError(f"model.mixers.gated_deltanet.norm_eps must be positive, got {m.norm_eps}.")
        heads = m.n_heads or cfg.n_heads
        v_heads = m.n_v_heads or heads
        if v_heads % heads:
            raise ConfigError(
                f"model.mixers.gated_deltanet.n_v_heads ({v_heads}) "
                f"must be a multiple of the key head count ({heads}); pick n_v_heads = n_heads times an integer."
            )
        if not m.head_dim and cfg.d_model % heads:
            raise ConfigError(
                f"model.d_model ({cfg.d_model}) must be divisible by the Gated DeltaNet key head count ({heads}) when "
                "model.mixers.gated_deltanet.head_dim is 0; set model.mixers.gated_deltanet.head_dim or n_heads."
            )
        head_dim = m.head_dim or cfg.d_model // heads
        return cls(
            width=cfg.d_model,
            num_heads=heads,
            num_v_heads=v_heads,
            head_dim=head_dim,
            v_head_dim=m.v_head_dim or head_dim,
            conv_width=m.conv_width,
            conv_bias=m.conv_bias,
            neg_eigval=m.neg_eigval,
            chunk_size=m.chunk_size,
            norm_eps=m.norm_eps,
            **module_fields(cfg),
        )

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: the state carries order) -> (f32[b, t, d], cache).

        ``segment_ids`` i32[b, t] (packed rows, no cache): the convolution and the state restart at each document."""
        del positions
        check_parallel_only(segment_ids, cache)
        bsz, t, _ = x.shape
        nk, nv, n, e = self.num_heads, self.num_v_heads, self.head_dim, self.v_head_dim
        std_init = nn.initializers.normal(self.init_std)
        dense = lambda features, name, init=std_init: Linear(
            features, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )
        qkv = dense(self.conv_channels, "in_proj_qkv")(x)
        z = dense(self.value_width, "in_proj_z")(x).reshape(bsz, t, nv, e)
        b_gate = dense(nv, "in_proj_b")(x).astype(_f32)
        a_gate = dense(nv, "in_proj_a")(x).astype(_f32)
        conv = CausalConv1D(
            self.conv_channels,
            self.conv_width,
            self.conv_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv1d",
        )
        qkv, conv_cache = conv(qkv, None if cache is None else cache["conv"], segment_ids)
        q, k, v = jnp.split(jax.nn.silu(qkv), [self.key_width, 2 * self.key_width], axis=-1)
        # Each key head serves nv / nk consecutive value heads: repeat it to the value heads.
        q, k = l2norm(q.reshape(bsz, t, nk, n)) * n**-0.5, l2norm(k.reshape(bsz, t, nk, n))
        q, k = jnp.repeat(q, nv // nk, axis=2), jnp.repeat(k, nv // nk, axis=2)  # [b, t, h, n]
        v = v.reshape(bsz, t, nv, e)

        a_log = self.param("A_log", _a_log_init, (nv,), self.param_dtype)
        dt_bias = self.param("dt_bias", dt_bias_init(0.001, 0.1), (nv,), self.param_dtype)
        beta = jax.nn.sigmoid(b_gate) * (2.0 if self.neg_eigval else 1.0)  # [b, t, h]
        log_alpha = -jnp.exp(a_log.astype(_f32)) * jax.nn.softplus(a_gate + dt_bias.astype(_f32))  # [b, t, h]

        o, state = chunk_delta_rule(
            q, k, v, beta, log_alpha, None if cache is None else cache["state"], self.chunk_size, segment_ids
        )
        # Gated RMSNorm, norm before gate (Qwen3-Next's RMSNormGated): rmsnorm(o) * scale * silu(z).
        o = RMSNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="o_norm")(o)
        o = (o.astype(_f32) * jax.nn.silu(z.astype(_f32))).astype(self.dtype)
        y = dense(self.width, "out_proj", scaled_init(self.init_std, self.n_layers))(
            o.reshape(bsz, t, self.value_width)
        )
        return y, None if cache is None else {"conv": conv_cache, "state": state}

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"conv": dtype[b, K - 1, 2 k n + h e], "state": f32[b, h, n, e]}: zeros, independent of ``max_len``."""
        del max_len
        conv = jnp.zeros((batch, self.conv_width - 1, self.conv_channels), dtype)
        return {"conv": conv, "state": jnp.zeros((batch, self.num_v_heads, self.head_dim, self.v_head_dim), _f32)}

    def num_params(self) -> int:
        d, nv = self.width, self.num_v_heads
        return (
            linear_params(d, self.conv_channels)  # in_proj_qkv
            + linear_params(d, self.value_width)  # in_proj_z
            + 2 * linear_params(d, nv)  # in_proj_b, in_proj_a
            + conv_params(self.conv_channels, self.conv_width, self.conv_bias)
            + 2 * nv  # A_log, dt_bias
            + self.v_head_dim  # o_norm
            + linear_params(self.value_width, d)  # out_proj
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight and conv tap, the chunked delta rule, elementwise ops.

        Convention: the delta rule is counted as the chunked form runs it (``delta_rule_flops_per_token``
        over the h value heads, chunk = min(chunk_size, seq_len)); SiLU, L2 norms, the gated norm
        and the gates count 1 FLOP per elementary op: about 6 per conv channel, 10 per value
        channel and 10 per value head.
        """
        d, nv = self.width, self.num_v_heads
        matmul = linear_params(d, self.conv_channels) + linear_params(d, self.value_width) + 2 * linear_params(d, nv)
        matmul += linear_params(self.value_width, d)
        conv = 2 * self.conv_width * self.conv_channels
        chunk = min(self.chunk_size, seq_len)
        rule = delta_rule_flops_per_token(nv, self.head_dim, self.v_head_dim, chunk)
        return 2 * matmul + conv + rule + 6 * self.conv_channels + 10 * self.value_width + 10 * nv

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """The layer with the gated delta rule as a Python loop over time: (y [b, t, d], {"state": [b, h, n, e]})."""
        del positions
        p = variables["params"]
        nk, nv, n, e = self.num_heads, self.num_v_heads, self.head_dim, self.v_head_dim
        bsz, t, _ = x.shape
        qkv = jax.nn.silu(causal_conv_reference(p["conv1d"], x @ p["in_proj_qkv"]["kernel"]))
        kw = self.key_width
        unit = lambda a: a / jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True) + 1e-6)
        q = unit(qkv[..., :kw].reshape(bsz, t, nk, n)) / jnp.sqrt(n)
        k = unit(qkv[..., kw : 2 * kw].reshape(bsz, t, nk, n))
        q, k = (
            jnp.repeat(q, nv // nk, axis=2),
            jnp.repeat(k, nv // nk, axis=2),
        )  # value head j reads key head j // (h / k)
        v = qkv[..., 2 * kw :].reshape(bsz, t, nv, e)
        beta = jax.nn.sigmoid(x @ p["in_proj_b"]["kernel"])[..., None, None] * (1 + self.neg_eigval)  # [b, t, h, 1, 1]
        alpha = jnp.exp(-jnp.exp(p["A_log"]) * jax.nn.softplus(x @ p["in_proj_a"]["kernel"] + p["dt_bias"]))[
            ..., None, None
        ]
        state, eye, outs = jnp.zeros((bsz, nv, n, e)), jnp.eye(n), []
        for i in range(t):  # S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T;  o_t = S_t^T q_t
            kk = k[:, i, :, :, None] * k[:, i, :, None, :]  # [b, h, n, n]
            kv = k[:, i, :, :, None] * v[:, i, :, None, :]  # [b, h, n, e]
            state = alpha[:, i] * ((eye - beta[:, i] * kk) @ state) + beta[:, i] * kv
            outs.append(jnp.einsum("bhne,bhn->bhe", state, q[:, i]))
        o = jnp.stack(outs, axis=1)  # [b, t, h, e]
        o = o / jnp.sqrt(jnp.mean(o * o, axis=-1, keepdims=True) + self.norm_eps) * p["o_norm"]["scale"]
        z = (x @ p["in_proj_z"]["kernel"]).reshape(bsz, t, nv, e)
        return (o * jax.nn.silu(z)).reshape(bsz, t, self.value_width) @ p["out_proj"]["kernel"], {"state": state}
