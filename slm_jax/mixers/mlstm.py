"""The mLSTM layer of xLSTM (Beck et al. 2024, arXiv:2405.04517, Sec. 2.3), laid out as xLSTM-7B.

    q, k = query(x), key(x)                      [b, t, h, n], h n = qk_dim_factor d
    v    = value(x)                              [b, t, h, e], h e = v_dim_factor d
    i~   = cap(igate_preact(x))                  [b, t, h]; cap(z) = s tanh(z / s), s = gate_soft_cap
    f~   = cap(fgate_preact(x))                  [b, t, h]
    h_t  = mLSTM(q / sqrt(n), k, v, log i = i~, log f = logsigmoid(f~))     ops/mlstm.py
    o    = sigmoid(ogate_preact(x))              [b, t, h e], the output gate
    out  = out_proj(o * multihead_norm(h))       per-head LayerNorm (no bias), scale per channel

with an exponential input gate, a sigmoid forget gate in log space and the stabiliser state m
(ops/mlstm.py). The training / prefill path is the chunked form, the decode path one recurrent
step; both accumulate in float32. The decode cache is {"C": f32[b, h, n, e], "n": f32[b, h, n],
"m": f32[b, h]}, constant in the context length, initialised to zeros (m = 0 as in xLSTM-7B).
Packed rows (``segment_ids``) restart (C, n, m) at zeros at each document's first token.

The layout is Hugging Face ``xLSTMLayer`` (transformers/models/xlstm, ``weight_mode="single"``,
``use_bias=False``; the xLSTM-7B checkpoint NX-AI/xLSTM-7b), so a converter is a rename plus
transposes (interop/families/xlstm.py, which also splits ``weight_mode="fused"`` tensors); per
layer ``i`` of ``backbone.blocks.{i}``:

    mlstm_layer.q.weight [h n, d]            -> mixer/query/kernel [d, h n]          (transpose)
    mlstm_layer.k.weight, .v.weight          -> mixer/key/kernel, mixer/value/kernel (transpose)
    mlstm_layer.ogate_preact.weight          -> mixer/ogate_preact/kernel            (transpose)
    mlstm_layer.igate_preact.weight / .bias  -> mixer/igate_preact/kernel (transpose) / mixer/igate_bias
    mlstm_layer.fgate_preact.weight / .bias  -> mixer/fgate_preact/kernel (transpose) / mixer/fgate_bias
    mlstm_layer.multihead_norm.weight        -> mixer/multihead_norm/scale
    mlstm_layer.out_proj.weight              -> mixer/out_proj/kernel                (transpose)
    norm_mlstm.weight, norm_ffn.weight       -> mixer_norm/scale, mlp_norm/scale (the Block's norms)

Hugging Face scales q by n^-1/2 inside the kernel, as done here before the op, so the states C,
n, m equal theirs. Its ``eps`` (1e-6, the denominator's) is ``model.mixers.mlstm.eps``; its
``norm_eps`` (the multi-head norm's) is ``model.norm_eps``. Init as Hugging Face's
``_init_weights``: gate kernels zero, input-gate bias -10, forget-gate biases linspace(3, 6)
over heads; q, k, v use ``init_std`` and out_proj the scaled residual init, like the other mixers.
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
from slm_jax.ops.mlstm import mlstm_chunked, mlstm_flops_per_token, mlstm_step, zero_state
from slm_jax.ops.segments import check_parallel_only

_f32 = jnp.float32


def soft_cap(z: Array, cap: float) -> Array:
    """cap * tanh(z / cap) (Gemma 2 style); cap = 0 leaves z unchanged."""
    return cap * jnp.tanh(z / cap) if cap else z


class MultiHeadLayerNorm(nn.Module):
    """LayerNorm over each head's e channels (float32 statistics, biased variance), then a per-channel scale.

    x: [..., h, e] -> dtype[..., h e]. xLSTM-7B's ``xLSTMMultiHeadLayerNorm`` without bias.
    """

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        *lead, h, e = x.shape
        scale = self.param("scale", nn.initializers.ones, (h * e,), self.param_dtype)
        x32 = x.astype(_f32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (y.reshape(*lead, h * e) * scale.astype(_f32)).astype(self.dtype)


def _fgate_bias_init(key: Array, shape: tuple[int, ...], dtype: Any = _f32) -> Array:
    """Forget-gate biases linspace(3, 6) over heads: sigmoid 0.95 .. 0.998, long memory at init."""
    del key
    return jnp.linspace(3.0, 6.0, shape[0]).astype(dtype)


@dataclass(frozen=True)
class MLSTMOptions:
    """mLSTM options (Beck et al. 2024, arXiv:2405.04517; defaults of xLSTM-7B)."""

    n_heads: int = 0  # 0 -> model.n_heads
    qk_dim_factor: float = 0.5  # query/key width = qk_dim_factor * d_model
    v_dim_factor: float = 1.0  # value width = v_dim_factor * d_model
    chunk_size: int = 64
    gate_soft_cap: float = 15.0  # 0 disables the cap
    eps: float = 1e-6  # added to the mLSTM denominator


class MLSTM(nn.Module):
    """mLSTM mixer: f32[b, t, d] -> f32[b, t, d] with h heads of key width n and value width e."""

    Options = MLSTMOptions
    param_axes = {
        "query/kernel": ("embed", "inner"),
        "key/kernel": ("embed", "inner"),
        "value/kernel": ("embed", "inner"),
        "ogate_preact/kernel": ("embed", "inner"),
        "igate_preact/kernel": ("embed", "inner"),  # one gate per head
        "igate_bias": ("inner",),
        "fgate_preact/kernel": ("embed", "inner"),
        "fgate_bias": ("inner",),
        "multihead_norm/scale": ("norm",),
        "out_proj/kernel": ("inner", "embed"),
    }
    lora_targets = ("query", "key", "value", "ogate_preact", "out_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 5}, {"chunk_size": 64})
    test_options = {"chunk_size": 8}  # d = 24, 3 heads: key width 4, value width 8

    width: int  # d
    num_heads: int  # h
    qk_dim: int  # h n
    v_dim: int  # h e
    chunk_size: int = 64
    gate_soft_cap: float = 15.0
    eps: float = 1e-6
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @classmethod
    def from_config(cls, cfg, options: MLSTMOptions) -> "MLSTM":
        m = options
        h = m.n_heads or cfg.n_heads
        if h <= 0:
            raise ConfigError(f"model.mixers.mlstm.n_heads must be positive (0 -> model.n_heads), got {h}.")
        for key in ("qk_dim_factor", "v_dim_factor"):
            width = int(cfg.d_model * getattr(m, key))
            if width <= 0 or width % h:
                raise ConfigError(
                    f"model.mixers.mlstm.{key} * model.d_model ({width}) must be a positive multiple of the head count "
                    f"({h}, model.mixers.mlstm.n_heads or model.n_heads); change one of them."
                )
        if m.chunk_size <= 0:
            raise ConfigError(f"model.mixers.mlstm.chunk_size must be positive, got {m.chunk_size}.")
        if m.gate_soft_cap < 0:
            raise ConfigError(f"model.mixers.mlstm.gate_soft_cap must be >= 0 (0 disables it), got {m.gate_soft_cap}.")
        if m.eps <= 0:
            raise ConfigError(f"model.mixers.mlstm.eps must be positive, got {m.eps}.")
        return cls(
            width=cfg.d_model,
            num_heads=h,
            qk_dim=int(cfg.d_model * m.qk_dim_factor),
            v_dim=int(cfg.d_model * m.v_dim_factor),
            chunk_size=m.chunk_size,
            gate_soft_cap=m.gate_soft_cap,
            eps=m.eps,
            norm_eps=cfg.norm_eps,
            **module_fields(cfg),
        )

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: the state carries order) -> (f32[b, t, d], cache).

        ``segment_ids`` i32[b, t] (packed rows, no cache): the state (C, n, m) restarts at each document."""
        del positions
        check_parallel_only(segment_ids, cache)
        bsz, t, _ = x.shape
        h, n, e = self.num_heads, self.qk_dim // self.num_heads, self.v_dim // self.num_heads
        proj = lambda f, name, init=None: Linear(
            f,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(self.init_std) if init is None else init,
            name=name,
        )(x)
        q = proj(self.qk_dim, "query").reshape(bsz, t, h, n).astype(_f32) * n**-0.5
        k = proj(self.qk_dim, "key").reshape(bsz, t, h, n)
        v = proj(self.v_dim, "value").reshape(bsz, t, h, e)
        o = jax.nn.sigmoid(proj(self.v_dim, "ogate_preact", nn.initializers.zeros).astype(_f32))
        # Gate biases live beside their Linear (which initialises biases to zero): the paper's values here.
        i_bias = self.param("igate_bias", nn.initializers.constant(-10.0), (h,), self.param_dtype)
        f_bias = self.param("fgate_bias", _fgate_bias_init, (h,), self.param_dtype)
        i_pre = proj(h, "igate_preact", nn.initializers.zeros).astype(_f32) + i_bias.astype(_f32)
        f_pre = proj(h, "fgate_preact", nn.initializers.zeros).astype(_f32) + f_bias.astype(_f32)
        log_i = soft_cap(i_pre, self.gate_soft_cap)  # exponential input gate: i = e^i~
        log_f = jax.nn.log_sigmoid(soft_cap(f_pre, self.gate_soft_cap))

        if cache is None:
            hs, last = mlstm_chunked(q, k, v, log_i, log_f, self.chunk_size, eps=self.eps, segment_ids=segment_ids)
        elif t == 1:  # one decode step
            hs, last = mlstm_step(
                q[:, 0], k[:, 0], v[:, 0], log_i[:, 0], log_f[:, 0], (cache["C"], cache["n"], cache["m"]), eps=self.eps
            )
            hs = hs[:, None]
        else:  # prefill continuing the cached state
            hs, last = mlstm_chunked(
                q, k, v, log_i, log_f, self.chunk_size, state=(cache["C"], cache["n"], cache["m"]), eps=self.eps
            )
        y = MultiHeadLayerNorm(self.norm_eps, self.dtype, self.param_dtype, name="multihead_norm")(hs)
        out = Linear(
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="out_proj",
        )((o * y.astype(_f32)).astype(self.dtype))
        new_cache = None if cache is None else dict(zip(("C", "n", "m"), last))
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"C": f32[b, h, n, e], "n": f32[b, h, n], "m": f32[b, h]}: zeros, independent of ``max_len`` and
        ``dtype``."""
        del max_len, dtype  # the recurrent state is float32 whatever the compute dtype
        h = self.num_heads
        return dict(zip(("C", "n", "m"), zero_state(batch, h, self.qk_dim // h, self.v_dim // h)))

    def num_params(self) -> int:
        d, h = self.width, self.num_heads
        return (
            linear_params(d, self.qk_dim) * 2  # query, key
            + linear_params(d, self.v_dim) * 2  # value, ogate_preact
            + (linear_params(d, h) + h) * 2  # igate_preact, fgate_preact and their biases
            + self.v_dim  # multihead_norm scale
            + linear_params(self.v_dim, d)  # out_proj
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight, the chunked mLSTM (``mlstm_flops_per_token``,
        chunk = min(chunk_size, seq_len)), and elementwise ops at 1 FLOP each: per value channel
        the sigmoid output gate, the LayerNorm (~7) and the gating (~10); per head the two gate
        soft caps, logsigmoid and q scaling (~15 + n)."""
        d, h = self.width, self.num_heads
        n, e = self.qk_dim // h, self.v_dim // h
        matmul = (
            2 * linear_params(d, self.qk_dim)
            + 2 * linear_params(d, self.v_dim)
            + 2 * d * h
            + linear_params(self.v_dim, d)
        )
        chunk = min(self.chunk_size, seq_len)
        return 2 * matmul + mlstm_flops_per_token(h, n, e, chunk) + 10 * self.v_dim + h * (15 + n)

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """The mLSTM layer with the stabilised recurrence (paper, App. A.3) as a Python loop over time.

        Returns (y [b, t, d], {"C": [b, h, n, e], "n": [b, h, n], "m": [b, h]}).
        """
        del positions
        p = variables["params"]
        bsz, t, _ = x.shape
        h, n, e = self.num_heads, self.qk_dim // self.num_heads, self.v_dim // self.num_heads
        cap = lambda z: soft_cap(z, self.gate_soft_cap)
        q = (x @ p["query"]["kernel"]).reshape(bsz, t, h, n) / jnp.sqrt(n)
        k = (x @ p["key"]["kernel"]).reshape(bsz, t, h, n)
        v = (x @ p["value"]["kernel"]).reshape(bsz, t, h, e)
        log_i = cap(x @ p["igate_preact"]["kernel"] + p["igate_bias"])  # exponential gate: i = e^i~
        log_f = jax.nn.log_sigmoid(cap(x @ p["fgate_preact"]["kernel"] + p["fgate_bias"]))
        c_mem, n_mem, m = jnp.zeros((bsz, h, n, e)), jnp.zeros((bsz, h, n)), jnp.zeros((bsz, h))
        hs = []
        for i in range(t):
            m_new = jnp.maximum(log_f[:, i] + m, log_i[:, i])
            f_s, i_s = jnp.exp(log_f[:, i] + m - m_new), jnp.exp(log_i[:, i] - m_new)  # stabilised gates
            c_mem = f_s[..., None, None] * c_mem + i_s[..., None, None] * k[:, i, :, :, None] * v[:, i, :, None, :]
            n_mem = f_s[..., None] * n_mem + i_s[..., None] * k[:, i]
            m = m_new
            den = jnp.maximum(jnp.abs(jnp.sum(n_mem * q[:, i], -1)), jnp.exp(-m)) + self.eps
            hs.append(jnp.einsum("bhne,bhn->bhe", c_mem, q[:, i]) / den[..., None])
        hs = jnp.stack(hs, axis=1)  # [b, t, h, e]
        hs = hs - hs.mean(-1, keepdims=True)
        hs = hs / jnp.sqrt((hs**2).mean(-1, keepdims=True) + self.norm_eps)
        y = jax.nn.sigmoid(x @ p["ogate_preact"]["kernel"]) * hs.reshape(bsz, t, h * e) * p["multihead_norm"]["scale"]
        return y @ p["out_proj"]["kernel"], {"C": c_mem, "n": n_mem, "m": m}
