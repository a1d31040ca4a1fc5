"""Mamba-2: the SSD mixer (Dao & Gu 2024, "Transformers are SSMs", arXiv:2405.21060, Sec. 7).

    z, x, B, C, dt = in_proj(u)          z, x: [b, t, w]; B, C: [b, t, k*n]; dt: [b, t, h]
    x, B, C = silu(conv1d([x, B, C]))    one causal depthwise conv over the w + 2kn channels
    dt      = softplus(dt + dt_bias)     [b, t, h]; softplus(dt_bias) log-uniform in [dt_min, dt_max]
    A       = -exp(A_log)                one scalar per head, A_log init log U[1, 16]
    h_t     = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T       per head: h [e, n], x_t [e]
    y_t     = h_t C_t + D x_t                            D per head, init 1
    out     = out_proj(norm(y o silu(z)))                gated RMSNorm, one group per B/C group

with w = expand * d (or ``d_inner``) inner channels split into h = w / e heads of width e, and k = n_groups
groups of (B, C) each shared by h / k heads (like keys in grouped-query attention). The
training / prefill path is the chunked SSD algorithm (ops/ssd.py), the decode path the
recurrence (``ssd_step``); both accumulate in float32.

Parameter names follow Hugging Face's ``Mamba2Mixer`` (in_proj, conv1d, dt_bias, A_log, D,
norm, out_proj); the reference implementation is state-spaces/mamba
``mamba_ssm/modules/mamba2_simple.py`` (in-projection order [z, x, B, C, dt]). The gated norm
is ``RMSNormGated(norm_before_gate=False, group_size=w / k)`` there: normalise y * silu(z) in
k groups, then scale. ``gate_norm`` picks the other placements transformers' Mamba-2 hybrids use:
``before_gate`` is rmsnorm(y) * scale * silu(z) (Falcon-H1's ``mamba_norm_before_gate``), ``none`` is
y * silu(z) with no norm (Falcon-H1's ``mamba_rms_norm: false``).

Decode cache: {"conv": [b, k_conv - 1, w + 2kn], "h": f32[b, h, e, n]}, constant in context length.
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
from slm_jax.ops.segments import check_parallel_only
from slm_jax.ops.ssd import ssd, ssd_flops_per_token, ssd_step

_f32 = jnp.float32
GATE_NORMS = ("after_gate", "before_gate", "none")


class GatedRMSNorm(nn.Module):
    """rmsnorm(y o silu(z)) * scale, statistics in float32 over ``groups`` equal slices of the last axis.

    y, z: [..., w] -> dtype[..., w]. Gate before norm (``norm_before_gate=False`` in Mamba-2); with
    ``before_gate``, rmsnorm(y) * scale * silu(z).
    """

    groups: int = 1
    eps: float = 1e-5
    before_gate: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y: Array, z: Array) -> Array:
        w = y.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (w,), self.param_dtype)
        gate = jax.nn.silu(z.astype(_f32))
        v = y.astype(_f32) if self.before_gate else y.astype(_f32) * gate
        v = v.reshape(*v.shape[:-1], self.groups, w // self.groups)  # [..., k, w / k]
        v = v * jax.lax.rsqrt(jnp.mean(v * v, axis=-1, keepdims=True) + self.eps)
        v = v.reshape(y.shape) * scale.astype(_f32)
        return (v * gate if self.before_gate else v).astype(self.dtype)


def _a_log_init(key: Array, shape: tuple[int, ...], dtype: Any = _f32) -> Array:
    """A_log = log(A) with A ~ U[1, 16] per head (the reference's A_init_range)."""
    return jnp.log(jax.random.uniform(key, shape, _f32, 1.0, 16.0)).astype(dtype)


@dataclass(frozen=True)
class Mamba2Options:
    """Mamba-2 SSD options (Dao & Gu 2024, arXiv:2405.21060)."""

    d_state: int = 64
    expand: int = 2
    d_inner: int = 0  # inner width w; 0 -> expand * d_model (Falcon-H1's mamba_d_ssm)
    gate_norm: str = "after_gate"  # after_gate: norm(y silu(z)) | before_gate: norm(y) silu(z) | none: y silu(z)
    head_dim: int = 32
    n_groups: int = 1
    conv_width: int = 4
    chunk_size: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_floor: float = 0.0  # dt is clamped to at least this (Zamba2's time_step_limit (time_step_min, inf)); 0 = off


class Mamba2(nn.Module):
    """Mamba-2 mixer: f32[b, t, d] -> f32[b, t, d] with h heads of width e and state size n."""

    Options = Mamba2Options
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "out_proj/kernel": ("inner", "embed"),
        "conv1d/kernel": ("conv", "inner"),
        "conv1d/bias": ("inner",),
        "norm/scale": ("inner",),  # gated norm over the inner width
        "A_log": ("inner", None),
        "D": ("inner",),
        "dt_bias": ("inner",),
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 7}, {"chunk_size": 64})  # gate_norm, d_inner: tests/mixers/test_mamba2.py
    test_options = {"d_state": 8, "head_dim": 12, "n_groups": 2, "chunk_size": 16}  # 2 groups of (B, C)

    width: int  # d
    inner_width: int  # w = expand * d = h * e
    d_state: int = 64  # n
    head_dim: int = 32  # e
    n_groups: int = 1  # k
    conv_width: int = 4
    chunk_size: int = 64  # c
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_floor: float = 0.0  # lower clamp of dt after the softplus; 0 = off
    gate_norm: str = "after_gate"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @property
    def num_heads(self) -> int:
        return self.inner_width // self.head_dim

    @property
    def conv_channels(self) -> int:
        return self.inner_width + 2 * self.n_groups * self.d_state

    @classmethod
    def from_config(cls, cfg, options: Mamba2Options) -> "Mamba2":
        m = options
        for key in ("d_state", "expand", "head_dim", "n_groups", "conv_width", "chunk_size"):
            if getattr(m, key) <= 0:
                raise ConfigError(f"model.mixers.mamba2.{key} must be positive, got {getattr(m, key)}.")
        if m.d_inner < 0:
            raise ConfigError(f"model.mixers.mamba2.d_inner must be >= 0 (0 = expand * d_model), got {m.d_inner}.")
        if m.gate_norm not in GATE_NORMS:
            raise ConfigError(
                f"model.mixers.mamba2.gate_norm must be one of {', '.join(GATE_NORMS)}, got {m.gate_norm!r}."
            )
        w = m.d_inner or m.expand * cfg.d_model
        if w % m.head_dim:
            raise ConfigError(
                f"The Mamba-2 inner width (d_inner, or expand * model.d_model: {w}) "
                f"must be divisible by model.mixers.mamba2.head_dim ({m.head_dim}); change one of them."
            )
        if (w // m.head_dim) % m.n_groups:
            raise ConfigError(
                f"The Mamba-2 head count ({w // m.head_dim} = {w} / head_dim) "
                f"must be divisible by model.mixers.mamba2.n_groups ({m.n_groups}); pick a divisor such as 1."
            )
        if not 0 < m.dt_min <= m.dt_max:
            raise ConfigError(
                f"model.mixers.mamba2 needs 0 < dt_min <= dt_max, got dt_min={m.dt_min}, dt_max={m.dt_max}."
            )
        if m.dt_floor < 0:
            raise ConfigError(f"model.mixers.mamba2.dt_floor must be >= 0 (0 = off), got {m.dt_floor}.")
        return cls(
            width=cfg.d_model,
            inner_width=w,
            d_state=m.d_state,
            head_dim=m.head_dim,
            n_groups=m.n_groups,
            conv_width=m.conv_width,
            chunk_size=m.chunk_size,
            dt_min=m.dt_min,
            dt_max=m.dt_max,
            dt_floor=m.dt_floor,
            gate_norm=m.gate_norm,
            norm_eps=cfg.norm_eps,
            **module_fields(cfg),
        )

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: the state carries order) -> (f32[b, t, d], cache).
        ``segment_ids`` i32[b, t] (packed rows, no cache): conv windows and the state restart at each document."""
        del positions
        check_parallel_only(segment_ids, cache)
        bsz, t, _ = x.shape
        w, n, k, h, e = self.inner_width, self.d_state, self.n_groups, self.num_heads, self.head_dim
        proj = Linear(
            2 * w + 2 * k * n + h,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std),
            name="in_proj",
        )(x)
        z, xbc, dt = jnp.split(proj, [w, 2 * w + 2 * k * n], axis=-1)
        conv = CausalConv1D(
            features=self.conv_channels,
            kernel_size=self.conv_width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv1d",
        )
        xbc, conv_cache = conv(xbc, None if cache is None else cache["conv"], segment_ids=segment_ids)
        xbc = jax.nn.silu(xbc)
        xs, b, c = jnp.split(xbc, [w, w + k * n], axis=-1)
        xs = xs.reshape(bsz, t, h, e)
        b, c = b.reshape(bsz, t, k, n), c.reshape(bsz, t, k, n)

        dt_bias = self.param("dt_bias", dt_bias_init(self.dt_min, self.dt_max), (h,), self.param_dtype)
        a_log = self.param("A_log", _a_log_init, (h,), self.param_dtype)
        d_skip = self.param("D", nn.initializers.ones, (h,), self.param_dtype).astype(_f32)
        dt = jnp.maximum(jax.nn.softplus(dt.astype(_f32) + dt_bias.astype(_f32)), self.dt_floor)  # [b, t, h]
        a = -jnp.exp(a_log.astype(_f32))  # [h]

        if cache is None:
            y, last = ssd(xs, dt, a, b, c, self.chunk_size, segment_ids=segment_ids)
        elif t == 1:  # one decode step
            y, last = ssd_step(xs[:, 0], dt[:, 0], a, b[:, 0], c[:, 0], cache["h"])
            y = y[:, None]
        else:  # prefill continuing the cached state
            y, last = ssd(xs, dt, a, b, c, self.chunk_size, h0=cache["h"])
        y = y.astype(_f32) + d_skip[:, None] * xs.astype(_f32)  # [b, t, h, e]
        y = y.reshape(bsz, t, w)
        if self.gate_norm == "none":
            y = (y * jax.nn.silu(z.astype(_f32))).astype(self.dtype)
        else:
            before = self.gate_norm == "before_gate"
            y = GatedRMSNorm(k, self.norm_eps, before, self.dtype, self.param_dtype, name="norm")(y, z)
        out = Linear(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="out_proj",
        )(y)
        new_cache = None if cache is None else {"conv": conv_cache, "h": last}
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"conv": dtype[b, k_conv - 1, w + 2kn], "h": f32[b, h, e, n]}: zeros, independent of ``max_len``."""
        del max_len
        conv = jnp.zeros((batch, self.conv_width - 1, self.conv_channels), dtype)
        return {"conv": conv, "h": jnp.zeros((batch, self.num_heads, self.head_dim, self.d_state), _f32)}

    def num_params(self) -> int:
        w, h, d = self.inner_width, self.num_heads, self.width
        gn = self.n_groups * self.d_state
        return (
            linear_params(d, 2 * w + 2 * gn + h)  # in_proj
            + conv_params(w + 2 * gn, self.conv_width)
            + 3 * h  # dt_bias, A_log, D
            + w * (self.gate_norm != "none")  # norm scale
            + linear_params(w, d)  # out_proj
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight and conv tap, plus the chunked SSD's work.

        Convention: SSD is counted as the chunked algorithm runs it (``ssd_flops_per_token``,
        chunk = min(chunk_size, seq_len)); other elementwise ops (silu, softplus, norm, gate, D
        skip) count 1 FLOP each, about 10 per inner channel.
        """
        w, h, d = self.inner_width, self.num_heads, self.width
        gn = self.n_groups * self.d_state
        matmul = linear_params(d, 2 * w + 2 * gn + h) + linear_params(w, d)
        conv = 2 * self.conv_width * (w + 2 * gn)
        chunk = min(self.chunk_size, seq_len)
        return 2 * matmul + conv + ssd_flops_per_token(h, self.head_dim, self.d_state, self.n_groups, chunk) + 10 * w

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """The Mamba-2 block with the SSM as a Python loop over time: (y [b, t, d], {"h": [b, h, e, n]})."""
        del positions
        p = variables["params"]
        w, n, k, e, h = self.inner_width, self.d_state, self.n_groups, self.head_dim, self.num_heads
        bsz, t, _ = x.shape
        proj = x @ p["in_proj"]["kernel"]
        z, xbc, dt = proj[..., :w], proj[..., w : 2 * w + 2 * k * n], proj[..., 2 * w + 2 * k * n :]
        xbc = jax.nn.silu(causal_conv_reference(p["conv1d"], xbc))
        xs = xbc[..., :w].reshape(bsz, t, h, e)
        bh = jnp.repeat(
            xbc[..., w : w + k * n].reshape(bsz, t, k, n), h // k, axis=2
        )  # head j reads group j // (h / k)
        ch = jnp.repeat(xbc[..., w + k * n :].reshape(bsz, t, k, n), h // k, axis=2)
        dt = jnp.maximum(jax.nn.softplus(dt + p["dt_bias"]), self.dt_floor)  # [b, t, h]
        a = -jnp.exp(p["A_log"])  # [h]
        state = jnp.zeros((bsz, h, e, n))
        ys = []
        for i in range(t):
            decay = jnp.exp(dt[:, i] * a)[:, :, None, None]  # [b, h, 1, 1]
            state = decay * state + dt[:, i, :, None, None] * xs[:, i, :, :, None] * bh[:, i, :, None, :]
            ys.append((jnp.einsum("bhen,bhn->bhe", state, ch[:, i]) + p["D"][:, None] * xs[:, i]).reshape(bsz, w))
        y, gate = jnp.stack(ys, axis=1), jax.nn.silu(z)
        if self.gate_norm == "none":
            return (y * gate) @ p["out_proj"]["kernel"], {"h": state}
        yg = (y if self.gate_norm == "before_gate" else y * gate).reshape(bsz, t, k, w // k)  # k groups of w / k
        y = yg / jnp.sqrt(jnp.mean(yg**2, axis=-1, keepdims=True) + self.norm_eps)
        y = y.reshape(bsz, t, w) * p["norm"]["scale"] * (gate if self.gate_norm == "before_gate" else 1.0)
        return y @ p["out_proj"]["kernel"], {"h": state}
