"""Hyena (Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon & Re 2023, arXiv:2302.10866, Sec. 3).

An order-N Hyena operator, with N + 1 projections and N implicit long filters:

    v, x_1 .. x_N = split(short_conv(in_proj(u)))     each [b, t, d]; short conv of 3 taps over all (N+1) d
    z_1     = v
    z_{n+1} = x_n o (h_n * z_n + beta_n o z_n)        n = 1 .. N; * the causal long conv over time
    y       = out_proj(z_{N+1})                       order 2: y = x_2 o (h_2 * (x_1 o (h_1 * v)))

The filters are implicit (Sec. 3.3): h_n[j] = FFN(pe(j))_n o window(j) for lags j < s = max_len,
    pe(j)     = [j / (s - 1), cos(f_k w_j), -sin(f_k w_j)],  w_j = 2 pi j / s, f_k = linspace(1e-4, K - 1, K)
                (pos_emb_dim = 2K + 1 features)
    FFN       = Linear(filter_hidden) -> sin(f x) -> [Linear -> sin(f x)] x 2 -> Linear(N d, no bias)
                (one trainable frequency vector f shared by the sine activations, initialised to 1)
    window(j) = exp(-|delta_c| j / (s - 1)),  delta_c from log(target)/decay_slow to log(target)/decay_fast
                across the N d filter channels (fixed: the paper's exponential modulation)
and beta_n is a per-channel skip (the filter's "bias", N(0, 1) at init as in the reference code).
Parameters do not depend on the sequence length: positions are computed on the fly, and any
length t works. The filter has s = max_len taps; lags >= s contribute nothing (beyond max_len
the operator is a finite-window convolution). This follows HazyResearch/safari's HyenaOperator
and zoology's hyena.py; the positional features are fixed here rather than trained with a
learning rate of 1e-5 as there.

Training runs the long convolutions as FFTs (ops/long_conv.py ``long_conv_fft``, float32). A long
filter has no constant-size state: decode keeps the last s - 1 inputs of each long conv,
{"history": [b, N, s - 1, d]}, declared in ``kv_leaves`` like attention's keys and values, and
sized for the longest context (s = max_len) up front, so the decode state grows with the
context the filter covers (unlike H3's SSM). Each decode step also re-evaluates the filter
FFN at all s lags (Hyena has no recurrence; distilling it into one is "Laughing Hyena",
Massaroli et al. 2023, arXiv:2310.18780).
"""

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.conv1d import CausalConv1D, causal_conv_reference, conv_params
from slm_jax.modules.implicit_filter import FAN_IN_UNIFORM, positional_features
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.ops.long_conv import fft_flops_per_token, long_conv_fft, long_conv_step, push_history
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


@dataclass(frozen=True)
class HyenaOptions:
    """Hyena operator options (Poli et al. 2023, arXiv:2302.10866)."""

    order: int = 2  # N: long filters (N + 1 projections)
    filter_hidden: int = 64  # width of the filter FFN ("filter_order")
    pos_emb_dim: int = 5  # odd: time plus (pos_emb_dim - 1) / 2 sine/cosine bands
    short_conv_width: int = 3
    decay_fast: float = 0.3  # the fastest window reaches decay_target at this fraction of max_len
    decay_slow: float = 1.5  # ... the slowest at this fraction
    decay_target: float = 0.01
    max_len: int = 2048  # filter taps s; also normalises the positional features


class Hyena(nn.Module):
    """Hyena operator of order N: f32[b, t, d] -> f32[b, t, d]."""

    Options = HyenaOptions
    param_axes = {
        "in_proj/kernel": ("embed", "inner"),
        "in_proj/bias": ("inner",),
        "conv1d/kernel": ("conv", "inner"),
        "conv1d/bias": ("inner",),
        "filter_in/kernel": (None, None),
        "filter_in/bias": (None,),
        "filter_hidden_0/kernel": (None, None),
        "filter_hidden_0/bias": (None,),
        "filter_hidden_1/kernel": (None, None),
        "filter_hidden_1/bias": (None,),
        "filter_out/kernel": (None, "inner"),
        "filter_freq": (None,),
        "filter_bias": (None, "inner"),
        "out_proj/kernel": ("inner", "embed"),
        "out_proj/bias": ("embed",),
    }
    lora_targets = ("in_proj", "out_proj")
    kv_leaves = ("history",)
    test_variants = ()
    test_options = {"filter_hidden": 12, "pos_emb_dim": 3, "max_len": 16}  # a filter shorter than t = 21

    width: int  # d
    order: int = 2
    filter_hidden: int = 64
    pos_emb_dim: int = 5
    short_conv_width: int = 3
    decay_fast: float = 0.3
    decay_slow: float = 1.5
    decay_target: float = 0.01
    max_len: int = 2048
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: HyenaOptions) -> "Hyena":
        m = options
        for key in ("order", "filter_hidden", "short_conv_width"):
            if getattr(m, key) < 1:
                raise ConfigError(f"model.mixers.hyena.{key} must be >= 1, got {getattr(m, key)}.")
        if m.pos_emb_dim < 3 or m.pos_emb_dim % 2 == 0:
            raise ConfigError(
                f"model.mixers.hyena.pos_emb_dim must be odd and >= 3 (time, cosine, sine), got {m.pos_emb_dim}."
            )
        if m.max_len < 2:
            raise ConfigError(f"model.mixers.hyena.max_len (filter taps) must be >= 2, got {m.max_len}.")
        if not (0 < m.decay_fast <= m.decay_slow and 0 < m.decay_target < 1):
            raise ConfigError(
                "model.mixers.hyena needs 0 < decay_fast <= decay_slow and 0 < decay_target < 1, got "
                f"decay_fast={m.decay_fast}, decay_slow={m.decay_slow}, decay_target={m.decay_target}."
            )
        return cls(
            width=cfg.d_model, **{k: getattr(m, k) for k in HyenaOptions.__dataclass_fields__}, **module_fields(cfg)
        )

    def decay_rates(self) -> Array:
        """f32[N d]: |delta| of the exponential window, spread linearly over the filter channels."""
        target = math.log(self.decay_target)
        return jnp.abs(
            jnp.linspace(target / self.decay_slow, target / self.decay_fast, self.order * self.width, dtype=_f32)
        )

    def _filters(self, length: int) -> Array:
        """The implicit filters at lags 0 .. length - 1: f32[length, N, d]."""
        f, nd = self.filter_hidden, self.order * self.width
        freq = self.param("filter_freq", nn.initializers.ones, (f,), self.param_dtype).astype(_f32)
        dense = lambda width, name, bias=True: Linear(
            width, use_bias=bias, dtype=_f32, param_dtype=self.param_dtype, kernel_init=FAN_IN_UNIFORM, name=name
        )
        h = jnp.sin(freq * dense(f, "filter_in")(positional_features(length, self.max_len, self.pos_emb_dim)))
        for i in range(2):
            h = jnp.sin(freq * dense(f, f"filter_hidden_{i}")(h))
        h = dense(nd, "filter_out", bias=False)(h)  # [length, N d]
        lag = jnp.arange(length, dtype=_f32) / (self.max_len - 1)
        h = h * jnp.exp(-lag[:, None] * self.decay_rates())
        return h.reshape(length, self.order, self.width)

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions unused: the conv histories carry order) -> (f32[b, t, d], cache).

        ``segment_ids`` i32[b, t] (packed rows, no cache): the short and long convs read zeros across a
        document boundary; the long ones then run as a masked sum over lags (``long_conv_fft``), not an FFT.
        """
        del positions
        check_parallel_only(segment_ids, cache)
        d, order, t = self.width, self.order, x.shape[1]
        proj = Linear(
            (order + 1) * d,
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std),
            name="in_proj",
        )(x)
        short = CausalConv1D(
            (order + 1) * d, self.short_conv_width, dtype=self.dtype, param_dtype=self.param_dtype, name="conv1d"
        )
        proj, conv_cache = short(proj, None if cache is None else cache["conv"], segment_ids)
        v, *gates = jnp.split(proj.astype(_f32), order + 1, axis=-1)
        skip = self.param("filter_bias", nn.initializers.normal(1.0), (order, d), self.param_dtype).astype(_f32)
        # Training needs lags < t only; a cached call reads the whole history, so all s taps.
        h = self._filters(self.max_len if cache is not None else min(self.max_len, t))

        z, histories = v, []
        for n in range(order):
            if cache is None:
                conv = long_conv_fft(z, h[:, n], segment_ids=segment_ids)
            elif t == 1:
                conv, hist = long_conv_step(z[:, 0], h[:, n], cache["history"][:, n])
                conv = conv[:, None]
                histories.append(hist)
            else:
                conv = long_conv_fft(z, h[:, n], cache["history"][:, n])
                histories.append(push_history(cache["history"][:, n], z))
            z = gates[n] * (conv + skip[n] * z)
        out = Linear(
            d,
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="out_proj",
        )(z.astype(self.dtype))
        new_cache = None if cache is None else {"conv": conv_cache, "history": jnp.stack(histories, axis=1)}
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"conv": dtype[b, w - 1, (N+1) d], "history": dtype[b, N, s - 1, d]}: zeros.

        The history holds the filter's s - 1 = model.mixers.hyena.max_len - 1 lags whatever the
        ``max_len`` of the call: the filter's reach, not the context, sets it.
        """
        del max_len
        conv = jnp.zeros((batch, self.short_conv_width - 1, (self.order + 1) * self.width), dtype)
        return {"conv": conv, "history": jnp.zeros((batch, self.order, self.max_len - 1, self.width), dtype)}

    def _filter_params(self) -> int:
        f = self.filter_hidden
        return (
            linear_params(self.pos_emb_dim, f, True) + 2 * linear_params(f, f, True) + f * self.order * self.width + f
        )

    def num_params(self) -> int:
        d, order = self.width, self.order
        return (
            linear_params(d, (order + 1) * d, True)
            + conv_params((order + 1) * d, self.short_conv_width)
            + self._filter_params()
            + order * d  # filter_bias
            + linear_params(d, d, True)
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: projections and short conv (2 per weight / tap), the N FFT long
        convolutions (``fft_flops_per_token`` per channel), gates and skips (3 per channel and order),
        and the filter FFN evaluated at min(max_len, seq_len) lags: it is computed once per sequence,
        not per batch row, so this per-token figure is for batch 1 (an upper bound for larger batches)."""
        d, order, f = self.width, self.order, self.filter_hidden
        matmul = linear_params(d, (order + 1) * d) + linear_params(d, d)
        # FFN matmuls, then per hidden layer bias, frequency and sine, then the window (scale, exp, product)
        ffn = 2 * (self.pos_emb_dim * f + 2 * f * f + f * order * d) + 9 * f + 3 * order * d
        ffn *= min(self.max_len, seq_len) / seq_len
        return (
            2 * matmul
            + 2 * self.short_conv_width * (order + 1) * d
            + order * d * (fft_flops_per_token(seq_len) + 3)
            + ffn
        )

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """The operator with each long conv as a Python loop over time (a dot with the last s inputs).

        Returns (y [b, t, d], {"conv", "history"} final state).
        """
        del positions
        p, d, order, s = variables["params"], self.width, self.order, self.max_len
        bsz, t, _ = x.shape
        proj = causal_conv_reference(p["conv1d"], x @ p["in_proj"]["kernel"] + p["in_proj"]["bias"])
        v, gates = proj[..., :d], [proj[..., (n + 1) * d : (n + 2) * d] for n in range(order)]
        layer = lambda name, a: a @ p[name]["kernel"] + p[name].get("bias", 0.0)
        h = jnp.sin(p["filter_freq"] * layer("filter_in", positional_features(s, s, self.pos_emb_dim)))
        for i in range(2):
            h = jnp.sin(p["filter_freq"] * layer(f"filter_hidden_{i}", h))
        h = layer("filter_out", h) * jnp.exp(-(jnp.arange(s) / (s - 1))[:, None] * self.decay_rates())
        h = h.reshape(s, order, d)
        z, histories = v, []
        for n in range(order):
            padded = jnp.pad(z, ((0, 0), (s - 1, 0), (0, 0)))  # s - 1 zeros before the sequence
            outs = [jnp.sum(h[::-1, n] * padded[:, i : i + s], axis=1) for i in range(t)]  # sum_j h_j z_{i-j}
            histories.append(padded[:, t:])
            z = gates[n] * (jnp.stack(outs, axis=1) + p["filter_bias"][n] * z)
        y = z @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
        k = self.short_conv_width
        conv = jnp.pad(x @ p["in_proj"]["kernel"] + p["in_proj"]["bias"], ((0, 0), (k - 1, 0), (0, 0)))[:, t:]
        return y, {"conv": conv, "history": jnp.stack(histories, axis=1)}
