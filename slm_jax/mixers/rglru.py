"""Griffin's recurrent block with the RG-LRU (De et al. 2024, arXiv:2402.19427, Fig. 2, Sec. 2.4).

    g, u   = in_proj(x)                                   x: [b, t, d] -> g, u: [b, t, w]
    g      = gelu(g)                                      tanh approximation (as the GeGLU MLP)
    u      = conv1d(u)                                    causal depthwise, width k, no activation
    r_t    = sigmoid(W_a u_t + b_a)                       recurrence gate  } W_a, W_x block-diagonal:
    i_t    = sigmoid(W_x u_t + b_x)                       input gate       } h heads of w/h x w/h
    log a_t = -c softplus(-Lambda) r_t                    i.e. a_t = sigmoid(Lambda)^(c r_t), eq. 4
    h_t    = a_t o h_{t-1} + sqrt(1 - a_t^2) o (i_t o u_t)                  h: f32[b, w], eq. 3
    out    = out_proj(h o g)                              [b, t, d]

with w = ``model.mixers.rglru.width`` recurrence channels (0 -> the multiple of the head count nearest 4/3 d,
the paper's D_RNN) and c = 8.
``Lambda`` is initialised so that a^c = sigmoid(Lambda)^c is uniform in [a_min^2, a_max^2]
(Sec. 2.4: between 0.9^2 and 0.999^2). The gates start near 0.5 (small weights, zero bias), so
the initial per-step decay a^(c r) is about a^(c / 2), in [a_min, a_max]. The gate weights use
LeCun-normal init per block (variance 1 / (w / h)); the projections use ``init_std`` and the
GPT-2 scaled init for ``out_proj``, like the other mixers.

The gates, log a_t, sqrt(1 - a_t^2) = sqrt(-expm1(2 log a_t)) (accurate as a_t -> 1) and the
recurrence run in float32 whatever the compute dtype; the recurrence is ``ops/scan.py``
(``linear_scan`` for the parallel path and prefill, ``scan_step`` for one-token decode). Packed
rows (``segment_ids``) restart the state (a_t = 0) and the conv window at each document; the
sqrt(1 - a_t^2) scaling is kept there. ``reset_at_zero``
(``model.mixers.rglru.reset_at_zero``, set for imported checkpoints) does as recurrentgemma does at
position 0: a_0 = 0 and the input is not scaled by sqrt(1 - a_0^2).

Parameter names are close to google-deepmind/recurrentgemma's ``RecurrentBlock`` / ``RGLRU``
(conv1d, a_param, out_proj; the block-diagonal gates are gate_a / gate_x with ``kernel``
[h, w/h, w/h] and ``bias`` [w]); its linear_x / linear_y are fused here into one ``in_proj``
[d, 2 w] whose first half is the GeLU branch (linear_y) and second half the recurrent branch
(linear_x). The decode cache is {"conv": [b, k - 1, w], "h": f32[b, w]}: constant in the
context length.
"""

from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.conv1d import CausalConv1D, causal_conv_reference, conv_params
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.ops.scan import ScanImpl, linear_scan, scan_impl_named, scan_step
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def a_param_init(a_min: float, a_max: float, c: float) -> Callable:
    """Lambda [w] with sigmoid(Lambda)^c uniform in [a_min^2, a_max^2] (Griffin, Sec. 2.4).

    v ~ U(a_min^2, a_max^2), a = v^(1 / c), Lambda = logit(a) = log(a) - log1p(-a).
    """

    def init(key: Array, shape: tuple[int, ...], dtype: Any = _f32) -> Array:
        v = jax.random.uniform(key, shape, _f32, a_min**2, a_max**2)
        log_a = jnp.log(v) / c
        return (log_a - jnp.log(-jnp.expm1(log_a))).astype(dtype)

    return init


def block_diagonal(x: Array, params: list[tuple[Array, Array]]) -> Array:
    """x [..., w] times block-diagonal maps: f32[..., n w] for n = len(params) (kernel, bias) pairs.

    Each kernel is [h, w/h, w/h] (head j maps channels j w/h .. (j + 1) w/h - 1 to the same
    range) and each bias [w]. All maps run in one einsum over heads (the kernels concatenated
    on the output axis), in float32: XLA:CPU has no batched bfloat16 x bfloat16 -> float32 dot,
    and these maps are a small share of the block's FLOPs (h times fewer than a dense w x w).
    Output slab m is map m.
    """
    h, bw = params[0][0].shape[:2]
    n = len(params)
    kernel = jnp.concatenate([k for k, _ in params], axis=-1).astype(_f32)  # [h, bw, n bw]
    bias = jnp.concatenate([b.reshape(h, bw) for _, b in params], axis=-1).astype(_f32)  # [h, n bw]
    xh = x.astype(_f32).reshape(*x.shape[:-1], h, bw)
    y = jnp.einsum("...hi,hij->...hj", xh, kernel) + bias  # [..., h, n bw]
    y = jnp.moveaxis(y.reshape(*y.shape[:-1], n, bw), -2, -3)  # [..., n, h, bw]
    return y.reshape(*x.shape[:-1], n * h * bw)


class _BlockParams(nn.Module):
    """The parameters of one block-diagonal map: ``kernel`` [h, w/h, w/h], ``bias`` [w]."""

    num_heads: int
    block_width: int
    kernel_init: Callable
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[Array, Array]:
        h, bw = self.num_heads, self.block_width
        kernel = self.param("kernel", self.kernel_init, (h, bw, bw), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (h * bw,), self.param_dtype)
        return kernel, bias


@dataclass(frozen=True)
class RGLRUOptions:
    """Griffin recurrent block options (De et al. 2024, arXiv:2402.19427)."""

    width: int = 0  # recurrence width; 0 -> the multiple of n_heads nearest 4/3 * d_model (the paper)
    n_heads: int = 0  # block-diagonal gate heads; 0 -> model.n_heads
    conv_width: int = 4
    c: float = 8.0  # the fixed scalar in a_t = a^(c * r_t)
    a_min: float = 0.9  # a^c is initialised uniformly in [a_min^2, a_max^2] (paper, Sec. 2.4)
    a_max: float = 0.999
    bias: bool = False  # biases on in_proj and out_proj (recurrentgemma has them)
    reset_at_zero: bool = False  # at position 0: zero state and unscaled input (recurrentgemma's document reset)
    scan_impl: str = "auto"  # reference | linear | associative | chunked | auto (ops/scan.py: by backend)


class RGLRU(nn.Module):
    """Griffin recurrent block: f32[b, t, d] -> f32[b, t, d] with a w-channel diagonal state."""

    Options = RGLRUOptions
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "in_proj/bias": ("inner",),
        "out_proj/kernel": ("inner", "embed"),
        "out_proj/bias": ("embed",),
        "conv1d/kernel": ("conv", "inner"),
        "conv1d/bias": ("inner",),
        "gate_a/kernel": ("inner", None, None),  # block-diagonal gates: [heads, block, block]
        "gate_x/kernel": ("inner", None, None),
        "gate_a/bias": ("inner",),
        "gate_x/bias": ("inner",),
        "a_param": ("inner",),
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ()
    test_variants = tuple({"scan_impl": impl} for impl in ScanImpl if impl is not ScanImpl.AUTO)
    test_options = {"width": 36, "n_heads": 3}  # gate blocks of 12: not a power of two

    width: int  # d
    rnn_width: int  # w
    num_heads: int = 1  # h, blocks of the gate matrices
    conv_width: int = 4  # k
    c: float = 8.0
    a_min: float = 0.9
    a_max: float = 0.999
    use_bias: bool = False  # biases on in_proj and out_proj (recurrentgemma)
    reset_at_zero: bool = False  # at position 0: a_t = 0 and no sqrt(1 - a_t^2) input scaling (recurrentgemma)
    scan_impl: ScanImpl = ScanImpl.AUTO
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: RGLRUOptions) -> "RGLRU":
        m = options
        h = m.n_heads or cfg.n_heads
        if h <= 0:
            raise ConfigError(f"model.mixers.rglru.n_heads must be positive (0 -> model.n_heads), got {h}.")
        if m.width < 0:
            raise ConfigError(f"model.mixers.rglru.width must be >= 0 (0 -> about 4/3 * model.d_model), got {m.width}.")
        # 0: the paper's 4/3 d, rounded to the nearest multiple of the head count (so that the
        # default works for any d_model); equal to round(4/3 d) whenever that is divisible.
        w = m.width or h * max(1, round(4 * cfg.d_model / (3 * h)))
        if w % h:
            raise ConfigError(
                f"model.mixers.rglru.width ({w}) must be divisible by "
                f"model.mixers.rglru.n_heads ({h}, 0 -> model.n_heads); change one of them."
            )
        if m.conv_width <= 0:
            raise ConfigError(f"model.mixers.rglru.conv_width must be positive, got {m.conv_width}.")
        if m.c <= 0:
            raise ConfigError(f"model.mixers.rglru.c must be positive, got {m.c}.")
        if not 0 < m.a_min < m.a_max < 1:
            raise ConfigError(f"model.mixers.rglru needs 0 < a_min < a_max < 1, got a_min={m.a_min}, a_max={m.a_max}.")
        return cls(
            width=cfg.d_model,
            rnn_width=w,
            num_heads=h,
            conv_width=m.conv_width,
            c=m.c,
            a_min=m.a_min,
            a_max=m.a_max,
            use_bias=m.bias,
            reset_at_zero=m.reset_at_zero,
            scan_impl=scan_impl_named(m.scan_impl, "model.mixers.rglru.scan_impl"),
            **module_fields(cfg),
        )

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d], positions i32[b, t] (used only by reset_at_zero) -> (f32[b, t, d], cache).
        ``segment_ids`` i32[b, t] (packed rows, no cache): conv windows and the state restart at each document."""
        check_parallel_only(segment_ids, cache)
        w = self.rnn_width
        gu = Linear(
            2 * w,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std),
            name="in_proj",
        )(x)
        g, u = jnp.split(gu, 2, axis=-1)  # [b, t, w] each
        u, conv_cache = CausalConv1D(
            features=w,
            kernel_size=self.conv_width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv1d",
        )(u, None if cache is None else cache["conv"], segment_ids=segment_ids)

        bw = w // self.num_heads
        gate_params = [
            _BlockParams(self.num_heads, bw, nn.initializers.normal(bw**-0.5), self.param_dtype, name=name)()
            for name in ("gate_a", "gate_x")
        ]  # LeCun normal per block
        gates = block_diagonal(u, gate_params)  # f32[b, t, 2 w]: [W_a u + b_a, W_x u + b_x]
        r, i = jnp.split(jax.nn.sigmoid(gates), 2, axis=-1)
        lam = self.param("a_param", a_param_init(self.a_min, self.a_max, self.c), (w,), self.param_dtype)
        log_a = -self.c * jax.nn.softplus(-lam.astype(_f32)) * r  # log a_t = c r_t log sigmoid(Lambda) <= 0
        a = jnp.exp(log_a)
        scale = jnp.sqrt(-jnp.expm1(2.0 * log_a))  # sqrt(1 - a_t^2)
        if self.reset_at_zero:  # a document starts at position 0: forget the state, keep the input whole
            start = (positions == 0)[..., None]  # [b, t, 1]
            a, scale = jnp.where(start, 0.0, a), jnp.where(start, 1.0, scale)
        b = scale * (i * u.astype(_f32))  # sqrt(1 - a_t^2) i_t u_t
        if cache is not None and x.shape[1] == 1:  # one decode step
            last = scan_step(a[:, 0], b[:, 0], cache["h"])
            hs = last[:, None]
        else:  # training (h0 = 0) and prefill (h0 from the cache)
            hs, last = linear_scan(
                a, b, None if cache is None else cache["h"], impl=self.scan_impl, segment_ids=segment_ids
            )
        y = hs * jax.nn.gelu(g.astype(_f32), approximate=True)
        out = Linear(
            self.width,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="out_proj",
        )(y.astype(self.dtype))
        new_cache = None if cache is None else {"conv": conv_cache, "h": last.astype(_f32)}
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"conv": dtype[b, k - 1, w], "h": f32[b, w]}: zeros, independent of ``max_len``."""
        del max_len
        conv = jnp.zeros((batch, self.conv_width - 1, self.rnn_width), dtype)
        return {"conv": conv, "h": jnp.zeros((batch, self.rnn_width), _f32)}

    def num_params(self) -> int:
        w, h, d, bias = self.rnn_width, self.num_heads, self.width, self.use_bias
        gate = w * (w // h) + w  # h blocks of (w/h)^2, plus a bias
        return (
            linear_params(d, 2 * w, bias) + conv_params(w, self.conv_width) + 2 * gate + w + linear_params(w, d, bias)
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight (gates: the blocks only) and conv tap, plus elementwise.

        Convention: every elementwise op (exp, expm1, sqrt, sigmoid, gelu included) counts 1
        FLOP. Per channel: conv bias, gelu, two gate biases, two sigmoids, log a_t (the
        per-channel c softplus(-Lambda) is a constant), exp, 2 log a_t and its expm1, sqrt,
        i u, the sqrt scaling, the h update (mul + add), the output gate = 16.
        """
        del seq_len  # the recurrence costs the same at every position
        w, h, d, k = self.rnn_width, self.num_heads, self.width, self.conv_width
        matmul = linear_params(d, 2 * w) + 2 * w * (w // h) + linear_params(w, d)
        return 2 * matmul + 2 * k * w + 16 * w

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """Griffin's recurrent block (Fig. 2, eqs. 1-4) with a Python loop over time: (y [b, t, d], {"h": [b, w]})."""
        p = variables["params"]
        w, c = self.rnn_width, self.c
        bias = lambda name: p[name]["bias"] if self.use_bias else 0.0
        gu = x @ p["in_proj"]["kernel"] + bias("in_proj")
        g, u = gu[..., :w], gu[..., w:]
        u = causal_conv_reference(p["conv1d"], u)
        dense = lambda q: jax.scipy.linalg.block_diag(*q["kernel"])  # [w, w], zeros off the diagonal blocks
        a = jax.nn.sigmoid(p["a_param"])  # [w]
        h = jnp.zeros((x.shape[0], w))
        hs = []
        for i in range(x.shape[1]):
            r = jax.nn.sigmoid(u[:, i] @ dense(p["gate_a"]) + p["gate_a"]["bias"])
            gate_in = jax.nn.sigmoid(u[:, i] @ dense(p["gate_x"]) + p["gate_x"]["bias"])
            a_t = a ** (c * r)
            scale = jnp.sqrt(1.0 - a_t**2)
            if self.reset_at_zero:
                start = (positions[:, i] == 0)[:, None]
                a_t, scale = jnp.where(start, 0.0, a_t), jnp.where(start, 1.0, scale)
            h = a_t * h + scale * (gate_in * u[:, i])
            hs.append(h)
        gelu = 0.5 * g * (1.0 + jnp.tanh(jnp.sqrt(2.0 / jnp.pi) * (g + 0.044715 * g**3)))
        y = jnp.stack(hs, axis=1) * gelu
        return y @ p["out_proj"]["kernel"] + bias("out_proj"), {"h": h}
