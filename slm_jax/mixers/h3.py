"""H3: Hungry Hungry Hippos (Fu, Dao, Saab, Thomas, Rudra & Re 2023, arXiv:2212.14052, Sec. 3).

    q, k, v = q_proj(u), k_proj(u), v_proj(u)         [b, t, d] each
    k'      = shift_conv(k)                            the shift SSM: a causal conv of w = 4 taps
    z       = k' o v                                   head width 1: the k v^T "outer product" is a product
    s_t     = diagSSM(z)_t + D o z_t                   per channel, n = d_state / 2 complex modes:
                h_t = exp(dt A) o h_{t-1} + (exp(dt A) - 1) / A o z_t     h: [b, d, n]
                diagSSM(z)_t = 2 Re(sum_n C_n h_{t,n})
    y       = out_proj(q o s)

The shift SSM (A a shift matrix, B = e_1) remembers the last few keys: its output is exactly a
short causal convolution, computed here with ``CausalConv1D`` (its lag-0 tap plays the shift SSM's
D; the conv's bias is extra). The diagonal SSM is S4D-Lin (Gu, Gupta, Goel & Re 2022,
arXiv:2206.11893): A_n = -1/2 + i pi n, B = 1 (folded into C), zero-order-hold discretisation with
dt log-uniform in [dt_min, dt_max] per channel, C complex normal, D ~ N(0, 1) as H3 initialises it.
Each complex mode stands for a conjugate pair, so d_state = 2n real numbers of state per channel.

Heads: head width 1 (H3's default, ``head_dim=1`` in HazyResearch/H3), so every channel is its
own head and the "outer product" k v^T is the elementwise k o v.

The training and prefill paths run the SSM chunked (ops/long_conv.py ``diag_ssm_chunked``:
Toeplitz products inside chunks of ``chunk_size``, the state carried between chunks by a scan);
decode is its one-step recurrence. Unlike the long-filter mixers (hyena, baseconv), whose decode
state is a history of inputs that grows with the context, H3's decode state is CONSTANT:
{"shift": [b, w - 1, d], "ssm": f32[b, d, 2n]} (the complex state's real parts, then imaginary parts).
"""

import math
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
from slm_jax.ops.long_conv import diag_ssm_chunked, diag_ssm_step
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def _log_dt_init(dt_min: float, dt_max: float):
    """log dt ~ U[log dt_min, log dt_max] (S4D)."""

    def init(key, shape, dtype=_f32):
        return jax.random.uniform(key, shape, _f32, math.log(dt_min), math.log(dt_max)).astype(dtype)

    return init


def _a_imag_init(key, shape, dtype=_f32):
    """S4D-Lin's imaginary parts pi * n for the modes n = 0 .. N - 1 of every channel."""
    del key
    return jnp.broadcast_to(jnp.pi * jnp.arange(shape[-1], dtype=_f32), shape).astype(dtype)


@dataclass(frozen=True)
class H3Options:
    """H3 options (Fu, Dao et al. 2023, arXiv:2212.14052)."""

    d_state: int = 16  # real state numbers per channel: d_state / 2 complex modes (conjugate pairs)
    conv_width: int = 4  # taps of the shift SSM (a short causal conv)
    chunk_size: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1


class H3(nn.Module):
    """H3 mixer with head width 1: f32[b, t, d] -> f32[b, t, d]."""

    Options = H3Options
    param_axes = {
        "q_proj/kernel": ("embed", "inner"),
        "q_proj/bias": ("inner",),
        "k_proj/kernel": ("embed", "inner"),
        "k_proj/bias": ("inner",),
        "v_proj/kernel": ("embed", "inner"),
        "v_proj/bias": ("inner",),
        "shift_conv/kernel": ("conv", "inner"),
        "shift_conv/bias": ("inner",),
        "log_dt": ("inner",),
        "log_A_real": ("inner", None),
        "A_imag": ("inner", None),
        "ssm_C": ("inner", None, None),
        "D": ("inner",),
        "out_proj/kernel": ("inner", "embed"),
        "out_proj/bias": ("embed",),
    }
    lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 7}, {"chunk_size": 64})
    test_options = {"d_state": 6, "chunk_size": 8}  # 3 complex modes; t = 21 leaves a 5-step last chunk

    width: int  # d
    d_state: int = 16  # 2n
    conv_width: int = 4
    chunk_size: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: H3Options) -> "H3":
        m = options
        if m.d_state < 2 or m.d_state % 2:
            raise ConfigError(f"model.mixers.h3.d_state must be even and >= 2 (conjugate pairs), got {m.d_state}.")
        for key in ("conv_width", "chunk_size"):
            if getattr(m, key) <= 0:
                raise ConfigError(f"model.mixers.h3.{key} must be positive, got {getattr(m, key)}.")
        if not 0 < m.dt_min <= m.dt_max:
            raise ConfigError(f"model.mixers.h3 needs 0 < dt_min <= dt_max, got dt_min={m.dt_min}, dt_max={m.dt_max}.")
        return cls(
            width=cfg.d_model,
            d_state=m.d_state,
            conv_width=m.conv_width,
            chunk_size=m.chunk_size,
            dt_min=m.dt_min,
            dt_max=m.dt_max,
            **module_fields(cfg),
        )

    def _linear(self, name: str, init=None) -> Linear:
        init = init or nn.initializers.normal(self.init_std)
        return Linear(
            self.width, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name
        )

    @staticmethod
    def discretize(log_dt: Array, log_a_real: Array, a_imag: Array, c: Array) -> tuple[Array, Array, Array]:
        """S4D-Lin parameters -> (log of dA, dB, C), c64[d, n] each: dA = exp(dt A), dB = (dA - 1) / A."""
        a = -jnp.exp(log_a_real.astype(_f32)) + 1j * a_imag.astype(_f32)
        log_da = jnp.exp(log_dt.astype(_f32))[:, None] * a
        db = jnp.expm1(log_da) / a  # expm1: exact for the small dt A of slow modes
        return log_da, db, c[..., 0].astype(_f32) + 1j * c[..., 1].astype(_f32)

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions unused: the states carry order) -> (f32[b, t, d], cache).

        ``segment_ids`` i32[b, t] (packed rows, no cache): the shift conv reads zeros across a document
        boundary and the diagonal SSM's state restarts from zero at each document's first token.
        """
        del positions
        check_parallel_only(segment_ids, cache)
        d, n, t = self.width, self.d_state // 2, x.shape[1]
        q, k, v = (self._linear(name)(x) for name in ("q_proj", "k_proj", "v_proj"))
        shift = CausalConv1D(d, self.conv_width, dtype=self.dtype, param_dtype=self.param_dtype, name="shift_conv")
        k, shift_cache = shift(k, None if cache is None else cache["shift"], segment_ids)
        z = k.astype(_f32) * v.astype(_f32)

        log_dt = self.param("log_dt", _log_dt_init(self.dt_min, self.dt_max), (d,), self.param_dtype)
        log_a_real = self.param("log_A_real", nn.initializers.constant(math.log(0.5)), (d, n), self.param_dtype)
        a_imag = self.param("A_imag", _a_imag_init, (d, n), self.param_dtype)
        c = self.param("ssm_C", nn.initializers.normal(0.5**0.5), (d, n, 2), self.param_dtype)  # E|C|^2 = 1
        d_skip = self.param("D", nn.initializers.normal(1.0), (d,), self.param_dtype).astype(_f32)
        log_da, db, cc = self.discretize(log_dt, log_a_real, a_imag, c)

        if cache is None:
            s, h = diag_ssm_chunked(z, log_da, db, cc, self.chunk_size, segment_ids=segment_ids)
        else:
            h0 = jax.lax.complex(cache["ssm"][..., :n], cache["ssm"][..., n:])
            if t == 1:
                s, h = diag_ssm_step(z[:, 0], log_da, db, cc, h0)
                s = s[:, None]
            else:
                s, h = diag_ssm_chunked(z, log_da, db, cc, self.chunk_size, h0)
        y = (q.astype(_f32) * (s + d_skip * z)).astype(self.dtype)
        out = self._linear("out_proj", scaled_init(self.init_std, self.n_layers))(y)
        new_cache = None if cache is None else {"shift": shift_cache, "ssm": jnp.concatenate([h.real, h.imag], axis=-1)}
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"shift": dtype[b, w - 1, d], "ssm": f32[b, d, 2n]}: zeros, independent of ``max_len``."""
        del max_len
        return {
            "shift": jnp.zeros((batch, self.conv_width - 1, self.width), dtype),
            "ssm": jnp.zeros((batch, self.width, self.d_state), _f32),
        }

    def num_params(self) -> int:
        d, n = self.width, self.d_state // 2
        return 4 * linear_params(d, d, bias=True) + conv_params(d, self.conv_width) + 2 * d + 4 * d * n

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight and conv tap, 1 per elementwise op, plus the chunked SSM.

        Convention for the SSM (chunk c = min(chunk_size, seq_len), n complex modes, per channel):
        2c for the masked Toeplitz product inside the chunk (the masked half included, as it
        runs), 4n for the chunk's end state (two real einsums over the chunk) and 4n for the
        entering state's outputs (two more over the modes). The chunk scan (per chunk, not per
        token) and the kernel and power tables (per chunk length, shared by the batch) are left
        out. About 8 more elementwise ops per channel (biases, k o v, D skip, q gate).
        """
        d, n = self.width, self.d_state // 2
        chunk = min(self.chunk_size, seq_len)
        matmul = 4 * linear_params(d, d)
        return 2 * matmul + 2 * self.conv_width * d + d * (2 * chunk + 8 * n + 8)

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """H3 with the diagonal SSM as a Python loop over time: (y [b, t, d], {"shift", "ssm"} final state)."""
        del positions
        p = variables["params"]
        w, n = self.conv_width, self.d_state // 2
        q, k, v = (x @ p[name]["kernel"] + p[name]["bias"] for name in ("q_proj", "k_proj", "v_proj"))
        z = causal_conv_reference(p["shift_conv"], k) * v
        log_da, db, c = self.discretize(p["log_dt"], p["log_A_real"], p["A_imag"], p["ssm_C"])
        da = jnp.exp(log_da)
        h = jnp.zeros((x.shape[0], self.width, n), jnp.complex64)
        ys = []
        for i in range(x.shape[1]):
            h = da * h + db * z[:, i, :, None]
            ys.append(q[:, i] * (2.0 * jnp.sum(jnp.real(c * h), axis=-1) + p["D"] * z[:, i]))
        y = jnp.stack(ys, axis=1) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
        k_hist = jnp.pad(k, ((0, 0), (w - 1, 0), (0, 0)))[:, k.shape[1] :]  # the last w - 1 keys (zeros before t = 0)
        return y, {"shift": k_hist, "ssm": jnp.concatenate([h.real, h.imag], axis=-1)}
