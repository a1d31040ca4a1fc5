"""Mamba-1: the selective state-space mixer (Gu & Dao 2023, arXiv:2312.00752, Alg. 2, Sec. 3.6).

    x, z   = in_proj(u)                                   u: [b, t, d] -> x, z: [b, t, w]
    x      = silu(conv1d(x))                              causal depthwise, width k
    dt, B, C = x_proj(x)                                  dt: [b, t, r], B, C: [b, t, n]
    dt     = softplus(dt_proj(dt))                        [b, t, w]  (dt_proj has a bias)
    A      = -exp(A_log)                                  [w, n], S4D-real init A_log = log(1..n)
    h_t    = exp(dt_t A) o h_{t-1} + (dt_t x_t) B_t^T     h: [b, w, n] (zero-order hold on A,
                                                          Euler on B, as in the paper, Sec. 3.6)
    y_t    = h_t C_t + D o x_t                            [b, t, w], D init 1
    out    = out_proj(y o silu(z))                        [b, t, d]

with w = expand * d inner channels, n = d_state and r = dt_rank. ``selective=False`` is the
non-selective (LTI, S4D-like) ablation: dt (per channel), B and C (per state) are learned
parameters that do not depend on the input; the block is otherwise identical.

Parameter names follow Hugging Face's ``MambaMixer`` (in_proj, conv1d, x_proj, dt_proj,
A_log, D, out_proj) so that a checkpoint converter is a rename plus transposes. The reference
implementation is state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py``.

The scan is ``ops/selective_scan.py`` (fused on CPU). The decode cache is
{"conv": [b, k - 1, w] (last conv inputs), "h": f32[b, w, n]}: constant in
the context length. The recurrence runs in float32 whatever the compute dtype.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable

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
from slm_jax.ops.scan import ScanImpl, scan_impl_named
from slm_jax.ops.segments import check_parallel_only
from slm_jax.ops.selective_scan import selective_scan

_f32 = jnp.float32


class _BiasedLinear(Linear):
    """``Linear`` (bias off) plus a bias with its own initializer; Linear's bias starts at zero."""

    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = super().__call__(x)
        return y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(y.dtype)


@dataclass(frozen=True)
class MambaOptions:
    """Mamba-1 selective SSM options (Gu & Dao 2023, arXiv:2312.00752)."""

    d_state: int = 16
    expand: int = 2
    conv_width: int = 4
    dt_rank: int = 0  # 0 -> ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    selective: bool = True  # False: dt, B, C are input-independent parameters (an LTI ablation)
    dt_bc_norms: bool = False  # RMSNorm on x_proj's dt, B and C before dt_proj and the scan (Jamba)
    scan_impl: str = "auto"  # reference | linear | associative | chunked | auto (ops/scan.py: by backend)


class Mamba(nn.Module):
    """Mamba-1 mixer: f32[b, t, d] -> f32[b, t, d] with w inner channels and an n-dim state each."""

    Options = MambaOptions
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "out_proj/kernel": ("inner", "embed"),
        "conv1d/kernel": ("conv", "inner"),
        "conv1d/bias": ("inner",),
        "x_proj/kernel": ("inner", None),  # channels -> (dt rank, B, C)
        "dt_proj/kernel": (None, "inner"),
        "dt_proj/bias": ("inner",),
        "dt_bias": ("inner",),  # non-selective ablation: dt, B, C are parameters
        "B": (None,),
        "C": (None,),
        "A_log": ("inner", None),
        "D": ("inner",),
        "dt_norm/scale": ("norm",),
        "B_norm/scale": ("norm",),
        "C_norm/scale": ("norm",),
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ()
    test_variants = tuple({"scan_impl": impl} for impl in ScanImpl if impl is not ScanImpl.AUTO)
    test_options = {"d_state": 5}

    width: int  # d
    inner_width: int  # w = expand * d
    d_state: int = 16  # n
    dt_rank: int = 1  # r
    conv_width: int = 4  # k
    dt_min: float = 0.001
    dt_max: float = 0.1
    selective: bool = True
    dt_bc_norms: bool = False
    norm_eps: float = 1e-5  # of the dt / B / C norms
    scan_impl: ScanImpl = ScanImpl.AUTO
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: MambaOptions) -> "Mamba":
        m = options
        for key in ("d_state", "expand", "conv_width"):
            if getattr(m, key) <= 0:
                raise ConfigError(f"model.mixers.mamba.{key} must be positive, got {getattr(m, key)}.")
        if m.dt_rank < 0:
            raise ConfigError(f"model.mixers.mamba.dt_rank must be >= 0 (0 -> ceil(d_model / 16)), got {m.dt_rank}.")
        if not 0 < m.dt_min <= m.dt_max:
            raise ConfigError(
                f"model.mixers.mamba needs 0 < dt_min <= dt_max, got dt_min={m.dt_min}, dt_max={m.dt_max}."
            )
        return cls(
            width=cfg.d_model,
            inner_width=m.expand * cfg.d_model,
            d_state=m.d_state,
            dt_rank=m.dt_rank or math.ceil(cfg.d_model / 16),
            conv_width=m.conv_width,
            dt_min=m.dt_min,
            dt_max=m.dt_max,
            selective=m.selective,
            dt_bc_norms=m.dt_bc_norms,
            norm_eps=cfg.norm_eps,
            scan_impl=scan_impl_named(m.scan_impl, "model.mixers.mamba.scan_impl"),
            **module_fields(cfg),
        )

    def _conv(self) -> CausalConv1D:
        return CausalConv1D(
            features=self.inner_width,
            kernel_size=self.conv_width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv1d",
        )

    def _dt_b_c(self, x: Array) -> tuple[Array, Array, Array]:
        """dt f32[b, t, w] (after softplus), B and C f32[b, t, n] (or f32[n] when not selective)."""
        w, n, r = self.inner_width, self.d_state, self.dt_rank
        dt_init = dt_bias_init(self.dt_min, self.dt_max)
        if not self.selective:
            dt = self.param("dt_bias", dt_init, (w,), self.param_dtype).astype(_f32)
            b = self.param("B", nn.initializers.ones, (n,), self.param_dtype).astype(_f32)  # S4D: B = 1
            c = self.param("C", nn.initializers.normal(1.0), (n,), self.param_dtype).astype(_f32)  # S4D: C ~ N(0, 1)
            return jax.nn.softplus(dt), b, c
        dbc = Linear(
            r + 2 * n,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std),
            name="x_proj",
        )(x)
        dt, b, c = jnp.split(dbc.astype(_f32), [r, r + n], axis=-1)
        if self.dt_bc_norms:  # Jamba (Lieber et al. 2024, arXiv:2403.19887): stabilises large-scale training
            norm = lambda name, v: RMSNorm(self.norm_eps, dtype=_f32, param_dtype=self.param_dtype, name=name)(v)
            dt, b, c = norm("dt_norm", dt), norm("B_norm", b), norm("C_norm", c)
        # dt_proj runs in float32: softplus and exp(dt A) amplify bfloat16 rounding of dt. Its
        # weights are uniform in +-r^-0.5 (variance preserving), as in the reference.
        dt = _BiasedLinear(
            w,
            dtype=_f32,
            param_dtype=self.param_dtype,
            kernel_init=_uniform(r**-0.5),
            bias_init=dt_init,
            name="dt_proj",
        )(dt)
        return jax.nn.softplus(dt), b, c

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: the state carries order) -> (f32[b, t, d], cache).
        ``segment_ids`` i32[b, t] (packed rows, no cache): conv windows and the state restart at each document."""
        del positions
        check_parallel_only(segment_ids, cache)
        w, n = self.inner_width, self.d_state
        xz = Linear(
            2 * w,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std),
            name="in_proj",
        )(x)
        xs, z = jnp.split(xz, 2, axis=-1)  # [b, t, w] each
        xs, conv_cache = self._conv()(xs, None if cache is None else cache["conv"], segment_ids=segment_ids)
        xs = jax.nn.silu(xs)
        dt, b, c = self._dt_b_c(xs)
        for name, value in (("dt", dt), ("B", b), ("C", c)):  # inspectable with mutable=["intermediates"]
            self.sow("intermediates", name, value)

        a_log = self.param("A_log", _s4d_real_init, (w, n), self.param_dtype)
        d_skip = self.param("D", nn.initializers.ones, (w,), self.param_dtype).astype(_f32)
        x32 = xs.astype(_f32)
        dt = jnp.broadcast_to(dt, x32.shape)  # [b, t, w] (a constant [w] when not selective)
        bc_shape = x32.shape[:2] + (n,)  # [b, t, n] (constants [n] when not selective)
        y, last = selective_scan(
            x32,
            dt,
            -jnp.exp(a_log.astype(_f32)),
            jnp.broadcast_to(b, bc_shape),
            jnp.broadcast_to(c, bc_shape),
            None if cache is None else cache["h"],
            impl=self.scan_impl,
            segment_ids=segment_ids,
        )  # training (h0 = 0), prefill and one-token decode (h0 from the cache) alike
        y = y + d_skip * x32  # [b, t, w]
        y = y * jax.nn.silu(z.astype(_f32))
        out = Linear(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="out_proj",
        )(y.astype(self.dtype))
        new_cache = None if cache is None else {"conv": conv_cache, "h": last.astype(_f32)}
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"conv": dtype[b, k - 1, w], "h": f32[b, w, n]}: zeros, independent of ``max_len``."""
        del max_len
        conv = jnp.zeros((batch, self.conv_width - 1, self.inner_width), dtype)
        return {"conv": conv, "h": jnp.zeros((batch, self.inner_width, self.d_state), _f32)}

    def num_params(self) -> int:
        w, n, r, d = self.inner_width, self.d_state, self.dt_rank, self.width
        if self.selective:
            dt_b_c = linear_params(w, r + 2 * n) + linear_params(r, w, bias=True) + self.dt_bc_norms * (r + 2 * n)
        else:
            dt_b_c = w + 2 * n
        return (
            linear_params(d, 2 * w) + conv_params(w, self.conv_width) + dt_b_c + w * n + w + linear_params(w, d)
        )  # + A_log, D

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight and conv tap, plus the scan's elementwise work.

        Convention: every elementwise op (exp, softplus and silu included) counts 1 FLOP. Per
        state element: dt*A, exp, (dt x)*B, the h update (mul + add) and C.h (mul + add) = 7;
        per channel: conv bias, silu, softplus, dt*x, D*x + y, silu(z), the gate = 8.
        """
        del seq_len  # the recurrence costs the same at every position
        w, n, r, d, k = self.inner_width, self.d_state, self.dt_rank, self.width, self.conv_width
        matmul = linear_params(d, 2 * w) + linear_params(w, d)
        if self.selective:
            matmul += linear_params(w, r + 2 * n) + linear_params(r, w)
        return 2 * matmul + 2 * k * w + 7 * w * n + 8 * w

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """Alg. 2 of Gu & Dao (2023) with a Python loop over time: (y [b, t, d], {"h": [b, w, n]})."""
        del positions
        p = variables["params"]
        w, n, r = self.inner_width, self.d_state, self.dt_rank
        xz = x @ p["in_proj"]["kernel"]
        xs, z = xz[..., :w], xz[..., w:]
        xs = jax.nn.silu(causal_conv_reference(p["conv1d"], xs))
        if self.selective:
            dbc = xs @ p["x_proj"]["kernel"]
            dt, bb, cc = dbc[..., :r], dbc[..., r : r + n], dbc[..., r + n :]
            if self.dt_bc_norms:
                eps = self.norm_eps
                rms = lambda v, name: v / jnp.sqrt(jnp.mean(v**2, axis=-1, keepdims=True) + eps) * p[name]["scale"]
                dt, bb, cc = rms(dt, "dt_norm"), rms(bb, "B_norm"), rms(cc, "C_norm")
            dt = dt @ p["dt_proj"]["kernel"] + p["dt_proj"]["bias"]
        else:
            dt = jnp.broadcast_to(p["dt_bias"], xs.shape)
            bb = jnp.broadcast_to(p["B"], xs.shape[:2] + (n,))
            cc = jnp.broadcast_to(p["C"], xs.shape[:2] + (n,))
        dt = jax.nn.softplus(dt)
        a = -jnp.exp(p["A_log"])  # [w, n]
        h = jnp.zeros((x.shape[0], w, n))
        ys = []
        for i in range(x.shape[1]):
            a_bar = jnp.exp(dt[:, i, :, None] * a)  # zero-order hold on A, Euler on B (Sec. 3.6)
            h = a_bar * h + dt[:, i, :, None] * bb[:, i, None, :] * xs[:, i, :, None]
            ys.append(jnp.einsum("bwn,bn->bw", h, cc[:, i]) + p["D"] * xs[:, i])
        y = jnp.stack(ys, axis=1) * jax.nn.silu(z)
        return y @ p["out_proj"]["kernel"], {"h": h}


def _s4d_real_init(key: Array, shape: tuple[int, ...], dtype: Any = _f32) -> Array:
    """A_log[w, n] = log(1, 2, ..., n) for every channel, i.e. A = -(1..n) (S4D-real, Gu et al. 2022)."""
    del key
    return jnp.log(jnp.broadcast_to(jnp.arange(1, shape[-1] + 1, dtype=_f32), shape)).astype(dtype)


def _uniform(scale: float) -> Callable:
    """U(-scale, scale) initializer."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = _f32) -> Array:
        return jax.random.uniform(key, shape, _f32, -scale, scale).astype(dtype)

    return init
