"""LFM2's gated short convolution (Liquid AI 2025, LFM2 technical report, arXiv:2511.23404; the
``Lfm2ShortConv`` block of Hugging Face transformers ``models/lfm2/modeling_lfm2.py``).

    B, C, x = in_proj(u)                 each [b, t, d]: the three thirds of one projection, in this order
    z       = B o x                      input gate
    z'_t    = sum_{j < L} w_j z_{t-(L-1)+j}    causal depthwise conv, L = 3 taps ("L_cache"), no bias
    y       = out_proj(C o z')           output gate

A short convolution between two multiplicative gates (the "double gated" short conv that
LFM2's hardware-in-the-loop architecture search kept in 10 of its 16 layers, the rest being
grouped-query attention). The decode state is the conv window, the last L - 1 values of z:
{"conv": [b, L - 1, d]}, constant in the context length.

Name mapping from a Hugging Face LFM2 checkpoint (layer i a "conv" layer), so that a converter
is a rename plus transposes:
    model.layers.i.conv.in_proj.weight   [3d, d]     -> layers_i/mixer/in_proj/kernel = W.T   [d, 3d]
    model.layers.i.conv.conv.weight      [d, 1, L]   -> layers_i/mixer/conv_kernel    = W[:, 0, :].T  [L, d]
    model.layers.i.conv.out_proj.weight  [d, d]      -> layers_i/mixer/out_proj/kernel = W.T
    (conv_bias=True checkpoints: in_proj.bias, conv.bias -> conv_bias, out_proj.bias likewise.)
    model.layers.i.operator_norm.weight              -> layers_i/mixer_norm/scale (models/block.py)
torch's Conv1d with padding L - 1, cut to the first t outputs, multiplies w[j] with the input
L - 1 - j steps back: the same tap order as ``conv_kernel`` here (and modules/conv1d.py). HF
caches L inputs; this cache holds the L - 1 that the next output still reads.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.ops.long_conv import long_conv_direct, long_conv_step, push_history
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def _conv_init(key, shape, dtype=_f32):
    """torch Conv1d's default for a depthwise filter: U(-1/sqrt(L), 1/sqrt(L)) (fan-in L)."""
    bound = shape[0] ** -0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclass(frozen=True)
class ShortConvOptions:
    """LFM2 gated short convolution (``conv_L_cache`` and ``conv_bias`` of Lfm2Config)."""

    conv_width: int = 3  # L_cache: taps of the depthwise conv
    bias: bool = False  # biases on in_proj, the conv and out_proj (LFM2: none)


class ShortConv(nn.Module):
    """Double-gated short convolution: f32[b, t, d] -> f32[b, t, d]."""

    Options = ShortConvOptions
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "in_proj/bias": ("inner",),
        "conv_kernel": ("conv", "inner"),
        "conv_bias": ("inner",),
        "out_proj/kernel": ("inner", "embed"),
        "out_proj/bias": ("embed",),
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ()
    test_variants = ()
    test_options = {"conv_width": 4, "bias": True}  # every parameter present; a wider window than LFM2's

    width: int  # d
    conv_width: int = 3
    bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: ShortConvOptions) -> "ShortConv":
        if options.conv_width < 1:
            raise ConfigError(
                f"model.mixers.short_conv.conv_width must be >= 1, got {options.conv_width}; LFM2 uses 3."
            )
        return cls(width=cfg.d_model, conv_width=options.conv_width, bias=options.bias, **module_fields(cfg))

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions unused: the conv window carries order) -> (f32[b, t, d], cache).

        ``segment_ids`` i32[b, t] (packed rows, no cache): conv taps that reach into another document read zero.
        """
        del positions
        check_parallel_only(segment_ids, cache)
        d, t = self.width, x.shape[1]
        proj = Linear(
            3 * d,
            use_bias=self.bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std),
            name="in_proj",
        )(x)
        b_gate, c_gate, xs = jnp.split(proj, 3, axis=-1)
        z = b_gate * xs
        kernel = self.param("conv_kernel", _conv_init, (self.conv_width, d), self.param_dtype)
        taps = kernel[::-1]  # taps[j] multiplies the input j steps back
        if cache is None:
            conv, new_cache = long_conv_direct(z, taps, segment_ids=segment_ids), None
        elif t == 1:
            conv, hist = long_conv_step(z[:, 0], taps, cache["conv"])
            conv, new_cache = conv[:, None], {"conv": hist}
        else:
            conv = long_conv_direct(z, taps, cache["conv"])
            new_cache = {"conv": push_history(cache["conv"], z)}
        if self.bias:
            conv = conv + self.param("conv_bias", nn.initializers.zeros, (d,), self.param_dtype).astype(_f32)
        y = (c_gate.astype(_f32) * conv).astype(self.dtype)
        out = Linear(
            d,
            use_bias=self.bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="out_proj",
        )(y)
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"conv": dtype[b, L - 1, d]}: the gated inputs the next conv output reads; independent of ``max_len``."""
        del max_len
        return {"conv": jnp.zeros((batch, self.conv_width - 1, self.width), dtype)}

    def num_params(self) -> int:
        d, bias = self.width, self.bias
        return linear_params(d, 3 * d, bias) + self.conv_width * d + (d if bias else 0) + linear_params(d, d, bias)

    def flops_per_token(self, seq_len: int) -> float:
        """2 per matmul weight and conv tap, 1 per gate product and bias: 8 d^2 + 2 L d + ~3 d."""
        del seq_len
        d = self.width
        return 2 * (linear_params(d, 3 * d) + linear_params(d, d)) + 2 * self.conv_width * d + 3 * d

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """The block with the conv as a Python loop over time: (y [b, t, d], {"conv": last L - 1 gated inputs})."""
        del positions
        p, d, k = variables["params"], self.width, self.conv_width
        bias = lambda name: p[name]["bias"] if self.bias else 0.0
        proj = x @ p["in_proj"]["kernel"] + bias("in_proj")
        b_gate, c_gate, xs = proj[..., :d], proj[..., d : 2 * d], proj[..., 2 * d :]
        z = jnp.pad(b_gate * xs, ((0, 0), (k - 1, 0), (0, 0)))  # k - 1 zeros before the sequence
        ys = []
        for i in range(x.shape[1]):
            conv = jnp.sum(p["conv_kernel"] * z[:, i : i + k], axis=1)  # kernel[j] * z_{i-(k-1)+j}
            if self.bias:
                conv = conv + p["conv_bias"]
            ys.append(c_gate[:, i] * conv)
        y = jnp.stack(ys, axis=1) @ p["out_proj"]["kernel"] + bias("out_proj")
        return y, {"conv": z[:, z.shape[1] - (k - 1) :]}
