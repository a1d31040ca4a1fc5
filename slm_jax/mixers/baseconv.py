"""BaseConv, the gated convolution of Zoology (Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou,
Rudra & Re 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models",
arXiv:2312.04927, Sec. 4 and HazyResearch/zoology ``zoology/mixers/base_conv.py``).

    g = u W + b_1                      "projection": Linear(d, d) with bias
    c = h * u + u                      long conv (kernel_size = -1): s = max_len taps, plus the unit skip
                                       of zoology's fft_conv
      = h * u + b_2                    short conv (kernel_size = k > 0): k taps and a bias (a depthwise Conv1d)
    y = out_proj(g o c)                (use_act: silu(g) o silu(c))

with * the causal convolution over time, per channel. The paper's BaseConv is y = (u W + b_1) o
(h * u + b_2): a gated convolution that provably simulates any gated-convolution architecture
(H3, Hyena, RWKV, RetNet) with poly-log overhead, and the simplest one that still solves
associative recall. The long filter h is
  * implicit (zoology's ImplicitLongConvolution, the default): h[j] = Linear(relu(Linear(pe(j)))),
    pe the Hyena positional features (mixers/hyena.py) of pos_emb_dim = 3 at lag j < max_len;
  * or explicit (LongConvolution): a parameter of [max_len, d] taps. zoology draws it N(0, 1);
    here N(0, 1 / max_len) so that the convolution of a long sequence keeps the input's scale.
filter[j] multiplies the input j steps back (lag order, not torch's reversed Conv1d order).
Differences from zoology's code: an output projection (every mixer here ends in one, so tensor
parallelism and LoRA see the same layout), and no "+ u" after the gate (the block's residual
adds the mixer input). Zoology alternates short and long BaseConv layers (kernel_size [3, -1]);
here model.mixers.baseconv.kernel_size sets every baseconv layer.

Training runs the long conv as an FFT and the short one as a sum over its taps
(ops/long_conv.py). The decode state is the last s - 1 inputs, {"history": [b, s - 1, d]}
(s = max_len, or k for the short conv): for the long filter a history that grows with the
context it covers, like attention's keys and values, declared in ``kv_leaves`` and sized for
s = max_len up front.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.implicit_filter import FAN_IN_UNIFORM, positional_features
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.ops.long_conv import fft_flops_per_token, long_conv_direct, long_conv_fft, long_conv_step, push_history
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def _uniform(bound: float):
    def init(key, shape, dtype=_f32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@dataclass(frozen=True)
class BaseConvOptions:
    """BaseConv options (Arora et al. 2023, arXiv:2312.04927; zoology's BaseConv arguments)."""

    kernel_size: int = -1  # -1: long conv of max_len taps; k > 0: short conv of k taps
    implicit: bool = True  # long filter from a small MLP of positions (else max_len explicit taps)
    max_len: int = 2048  # long filter taps s; also normalises the positional features
    filter_hidden: int = 16  # implicit filter MLP width (zoology's d_hidden)
    pos_emb_dim: int = 3  # odd: time plus (pos_emb_dim - 1) / 2 sine/cosine bands
    use_act: bool = False  # silu on both factors of the gate


class BaseConv(nn.Module):
    """BaseConv: f32[b, t, d] -> f32[b, t, d]."""

    Options = BaseConvOptions
    param_axes = {
        "projection/kernel": ("embed", "inner"),
        "projection/bias": ("inner",),
        "filter": ("conv", "inner"),
        "filter_in/kernel": (None, None),
        "filter_in/bias": (None,),
        "filter_out/kernel": (None, "inner"),
        "filter_out/bias": ("inner",),
        "conv_bias": ("inner",),
        "out_proj/kernel": ("inner", "embed"),
    }
    lora_targets = ("projection", "out_proj")
    kv_leaves = ("history",)
    test_variants = ()
    test_options = {"max_len": 16, "filter_hidden": 12, "pos_emb_dim": 5, "use_act": True}  # filter shorter than t

    width: int  # d
    kernel_size: int = -1
    implicit: bool = True
    max_len: int = 2048
    filter_hidden: int = 16
    pos_emb_dim: int = 3
    use_act: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: BaseConvOptions) -> "BaseConv":
        m = options
        if m.kernel_size != -1 and m.kernel_size < 1:
            raise ConfigError(
                f"model.mixers.baseconv.kernel_size must be -1 (long conv) or >= 1 (short conv), got {m.kernel_size}."
            )
        if m.max_len < 2:
            raise ConfigError(f"model.mixers.baseconv.max_len (long filter taps) must be >= 2, got {m.max_len}.")
        if m.pos_emb_dim < 3 or m.pos_emb_dim % 2 == 0:
            raise ConfigError(f"model.mixers.baseconv.pos_emb_dim must be odd and >= 3, got {m.pos_emb_dim}.")
        if m.filter_hidden < 1:
            raise ConfigError(f"model.mixers.baseconv.filter_hidden must be >= 1, got {m.filter_hidden}.")
        return cls(
            width=cfg.d_model, **{k: getattr(m, k) for k in BaseConvOptions.__dataclass_fields__}, **module_fields(cfg)
        )

    @property
    def short(self) -> bool:
        return self.kernel_size > 0

    @property
    def taps(self) -> int:
        """s: the filter length (and s - 1 cached inputs)."""
        return self.kernel_size if self.short else self.max_len

    def _filter(self, length: int) -> Array:
        """The filter at lags 0 .. length - 1 (length <= taps): f32[length, d]."""
        d = self.width
        if self.short or not self.implicit:
            init = _uniform(self.kernel_size**-0.5) if self.short else nn.initializers.normal(self.max_len**-0.5)
            return self.param("filter", init, (self.taps, d), self.param_dtype)[:length].astype(_f32)
        dense = lambda width, name: Linear(
            width, use_bias=True, dtype=_f32, param_dtype=self.param_dtype, kernel_init=FAN_IN_UNIFORM, name=name
        )
        pe = positional_features(length, self.max_len, self.pos_emb_dim)
        return dense(d, "filter_out")(jax.nn.relu(dense(self.filter_hidden, "filter_in")(pe)))

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions unused: the input history carries order) -> (f32[b, t, d], cache).

        ``segment_ids`` i32[b, t] (packed rows, no cache): the conv reads zeros across a document boundary
        (the long one then runs as a masked sum over lags, not an FFT: ops/long_conv.py).
        """
        del positions
        check_parallel_only(segment_ids, cache)
        d, t = self.width, x.shape[1]
        gate = Linear(
            d,
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std),
            name="projection",
        )(x).astype(_f32)
        u = x.astype(_f32)
        h = self._filter(self.taps if cache is not None else min(self.taps, t))
        conv_fn = long_conv_direct if self.short else long_conv_fft  # a few taps: the direct sum is cheaper
        if cache is None:
            conv, new_cache = conv_fn(u, h, segment_ids=segment_ids), None
        elif t == 1:
            conv, hist = long_conv_step(u[:, 0], h, cache["history"])
            conv, new_cache = conv[:, None], {"history": hist}
        else:
            conv, new_cache = conv_fn(u, h, cache["history"]), {"history": push_history(cache["history"], u)}
        if self.short:
            conv = conv + self.param("conv_bias", nn.initializers.zeros, (d,), self.param_dtype).astype(_f32)
        else:
            conv = conv + u
        if self.use_act:
            gate, conv = jax.nn.silu(gate), jax.nn.silu(conv)
        out = Linear(
            d,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="out_proj",
        )((gate * conv).astype(self.dtype))
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"history": dtype[b, s - 1, d]}: zeros; s is the filter length, whatever the call's ``max_len``."""
        del max_len
        return {"history": jnp.zeros((batch, self.taps - 1, self.width), dtype)}

    def _implicit_params(self) -> int:
        return linear_params(self.pos_emb_dim, self.filter_hidden, True) + linear_params(
            self.filter_hidden, self.width, True
        )

    def num_params(self) -> int:
        d = self.width
        if self.short:
            conv = self.kernel_size * d + d
        else:
            conv = self._implicit_params() if self.implicit else self.max_len * d
        return linear_params(d, d, True) + conv + linear_params(d, d)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per projection weight, the conv (2 per short tap, or an FFT long
        conv: ``fft_flops_per_token`` per channel), ~4 elementwise per channel (bias, skip, gate; +4
        with use_act), and for the implicit filter its MLP at min(max_len, seq_len) lags, computed
        once per sequence: this per-token figure is for batch 1 (an upper bound for larger batches)."""
        d = self.width
        total = 2 * (linear_params(d, d) + linear_params(d, d)) + (8 if self.use_act else 4) * d
        if self.short:
            return total + 2 * self.kernel_size * d
        total += d * fft_flops_per_token(seq_len)
        if self.implicit:
            mlp = 2 * (self._implicit_params() - self.filter_hidden - d) + 2 * self.filter_hidden + d
            total += mlp * min(self.max_len, seq_len) / seq_len
        return total

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """BaseConv with the conv as a Python loop over time: (y [b, t, d], {"history": last s - 1 inputs})."""
        del positions
        p, s, t = variables["params"], self.taps, x.shape[1]
        if "filter" in p:
            h = p["filter"]
        else:
            pe = positional_features(s, self.max_len, self.pos_emb_dim)
            hidden = jax.nn.relu(pe @ p["filter_in"]["kernel"] + p["filter_in"]["bias"])
            h = hidden @ p["filter_out"]["kernel"] + p["filter_out"]["bias"]
        padded = jnp.pad(x, ((0, 0), (s - 1, 0), (0, 0)))  # s - 1 zeros before the sequence
        conv = jnp.stack(
            [jnp.sum(h[::-1] * padded[:, i : i + s], axis=1) for i in range(t)], axis=1
        )  # sum_j h_j x_{i-j}
        conv = conv + (p["conv_bias"] if self.short else x)
        gate = x @ p["projection"]["kernel"] + p["projection"]["bias"]
        if self.use_act:
            gate, conv = jax.nn.silu(gate), jax.nn.silu(conv)
        return (gate * conv) @ p["out_proj"]["kernel"], {"history": padded[:, t:]}
