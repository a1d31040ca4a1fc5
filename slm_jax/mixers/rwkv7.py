"""RWKV-7 "Goose" time mixing (Peng et al. 2025, arXiv:2503.14456, Sec. 4 and Fig. 1).

    x'_t   = x_{t-1} - x_t                               token shift (x_{-1}: zeros or the cached token)
    x_c    = x + x' o mu_c        for c in r, w, k, v, a, g       (the lerps x_r ... x_g)
    r, k, v = r_proj(x_r), k_proj(x_k), v_proj(x_v)     [b, t, h, n], n = e = d / h
    log w  = -e^{-1/2} sigmoid(w0 + tanh(x_w W1) W2)     per channel: w in (0.545, 1)
    alpha  = sigmoid(a0 + x_a A1 A2)                     in-context learning rate
    g      = sigmoid(x_g G1) G2                          output gate
    kappa  = l2norm_per_head(k o k_k);  k <- k o (1 + (alpha - 1) o k_a)
    S_t    = S_{t-1} (diag(w_t) - kappa_t^T (alpha_t o kappa_t)) + v_t^T k_t     y_t = S_t r_t
    y      = groupnorm_per_head(y) + (sum_n r o k o r_k) v                       "bonus" term
    out    = o_proj(y o g)

with the state evolution in ops/rwkv.py (a = -kappa, b = kappa o alpha; chunked for training and
prefill, one step for decode, float32). Not included: the value residual (v mixed with the
first layer's v through v0, v1, v2), which needs a tensor passed between layers that the mixer
contract does not carry; every layer here behaves as the paper's layer 0. RWKV's channel-mix
(squared-ReLU FFN) is the Block's MLP, not part of this mixer.

Packed rows (``segment_ids``, parallel path only): the token shift reads zeros across a document
boundary and the state restarts at each document's first token (ops/rwkv.py).

Decode cache: {"shift": dtype[b, d] (the previous token's mixer input, a 1-token conv state),
"S": f32[b, h, n, e]}, constant in the context length.

Names follow fla's ``RWKV7Attention`` (fla-hub HF checkpoints) where they are flat, and
BlinkDL's RWKV-LM ``RWKV_Tmix_x070`` otherwise; ``[1, 1, d]`` vectors are flattened to [d]:

    ours                   fla (attn.)                  BlinkDL (att.)
    x_r .. x_g, k_k, k_a   x_r .. x_g, k_k, k_a          x_r .. x_g, k_k, k_a
    r_k [h, n]             r_k                           r_k
    r_proj/kernel          r_proj.weight^T               receptance.weight^T
    k_proj, v_proj         k_proj, v_proj (^T)           key, value (^T)
    o_proj/kernel          o_proj.weight^T               output.weight^T
    w_lora_down/kernel     w_lora.lora.0.weight^T        w1
    w_lora_up/kernel       w_lora.lora.2.weight^T        w2
    w_bias                 w_lora.lora.2.bias            w0
    a_lora_down, a_lora_up, a_bias   a_lora.lora.{0,2}   a1, a2, a0
    g_lora_down, g_lora_up           g_lora.lora.{0,2}   g1, g2
    g_norm/scale, g_norm/bias        g_norm.weight/bias  ln_x.weight/bias

The GroupNorm eps is head_size * model.norm_eps (fla's ``head_dim * norm_eps``, BlinkDL's 64e-5
at head size 64 and 1e-5). Init follows BlinkDL's for layer 0 of the stack (the mixer does not
know its depth): token-shift lerps 1 - (i / d)^p, decay bias w0 from -6 to 0 plus a zig-zag
within heads, a0 = -0.19 + ..., k_k ~ 0.71, k_a = 1.02, r_k = -0.04, LoRA down-projections zero
and up-projections orthogonal with gain 0.1; r, k, v, o use ``init_std`` and the scaled residual
init like the other mixers.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.mixers.contract import module_fields
from slm_jax.modules.linear import Linear, linear_params, scaled_init
from slm_jax.ops.rwkv import rwkv7_chunked, rwkv7_flops_per_token, rwkv7_step
from slm_jax.ops.segments import check_parallel_only, lagged_in_segment

_f32 = jnp.float32
_DECAY_SCALE = float(np.exp(-0.5))  # log w >= -e^{-1/2}: w >= 0.545 per step
_SHIFT_POWERS = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}  # mu_c = 1 - (i / d)^p


def _channel_profiles(d: int, head_size: int) -> tuple[np.ndarray, np.ndarray]:
    """BlinkDL's init profiles over the d channels: ``linear`` in [-0.5, 0.5] and ``zigzag`` in [-1, 1] within each
    head."""
    i = np.arange(d)
    linear = i / max(d - 1, 1) - 0.5
    zigzag = ((i % head_size) - (head_size - 1) / 2) / max((head_size - 1) / 2, 1)
    return linear, zigzag * np.abs(zigzag)


def _const_init(values: np.ndarray):
    """An initializer returning fixed values (shape-checked)."""

    def init(key, shape, dtype=_f32):
        del key
        assert tuple(shape) == values.shape, (shape, values.shape)
        return jnp.asarray(values, dtype)

    return init


class HeadGroupNorm(nn.Module):
    """GroupNorm with one group per head: y [..., h, e] -> dtype[..., h e], float32 statistics, scale and bias per
    channel."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y: Array) -> Array:
        *lead, h, e = y.shape
        scale = self.param("scale", nn.initializers.ones, (h * e,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (h * e,), self.param_dtype)
        y32 = y.astype(_f32)
        centred = y32 - jnp.mean(y32, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (normed.reshape(*lead, h * e) * scale.astype(_f32) + bias.astype(_f32)).astype(self.dtype)


@dataclass(frozen=True)
class RWKV7Options:
    """RWKV-7 time-mix options (Peng et al. 2025, arXiv:2503.14456); LoRA ranks about half the paper's 0.1B sizes."""

    n_heads: int = 0  # 0 -> model.n_heads; head size d_model / n_heads (64 in the paper)
    decay_low_rank: int = 32  # w LoRA rank
    a_low_rank: int = 32  # in-context learning rate (alpha) LoRA rank
    gate_low_rank: int = 64  # output gate LoRA rank
    chunk_size: int = 16  # forward + backward at [2, 1024, 4 heads of 64] on CPU: 0.49 s at 16, 1.25 s at 32


class RWKV7(nn.Module):
    """RWKV-7 time mixing: f32[b, t, d] -> f32[b, t, d] with h heads of size n = e = d / h."""

    Options = RWKV7Options
    param_axes = {
        **{name: ("embed",) for name in _SHIFT_POWERS},  # token-shift lerps over the input (d_model) channels
        "k_k": ("inner",),
        "k_a": ("inner",),
        "r_k": ("inner", None),
        "r_proj/kernel": ("embed", "inner"),
        "k_proj/kernel": ("embed", "inner"),
        "v_proj/kernel": ("embed", "inner"),
        "o_proj/kernel": ("inner", "embed"),
        "w_lora_down/kernel": ("embed", None),
        "w_lora_up/kernel": (None, "inner"),
        "w_bias": ("inner",),
        "a_lora_down/kernel": ("embed", None),
        "a_lora_up/kernel": (None, "inner"),
        "a_bias": ("inner",),
        "g_lora_down/kernel": ("embed", None),
        "g_lora_up/kernel": (None, "inner"),
        "g_norm/scale": ("norm",),
        "g_norm/bias": ("norm",),
    }
    lora_targets = ("r_proj", "k_proj", "v_proj", "o_proj")
    kv_leaves = ()
    test_variants = ({"chunk_size": 5}, {"chunk_size": 64})
    test_options = {"chunk_size": 8, "decay_low_rank": 6, "a_low_rank": 5, "gate_low_rank": 7}  # heads of 8

    width: int  # d
    num_heads: int  # h
    decay_low_rank: int = 32
    a_low_rank: int = 32
    gate_low_rank: int = 64
    chunk_size: int = 16
    norm_eps: float = 1e-5  # per channel: the GroupNorm's eps is head_size * norm_eps
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    n_layers: int = 1  # only for the output projection's init scale

    @property
    def head_size(self) -> int:
        return self.width // self.num_heads

    @classmethod
    def from_config(cls, cfg, options: RWKV7Options) -> "RWKV7":
        m = options
        h = m.n_heads or cfg.n_heads
        if h <= 0 or cfg.d_model % h:
            raise ConfigError(
                f"model.mixers.rwkv7.n_heads ({h}, 0 -> model.n_heads) must be a positive divisor of model.d_model "
                f"({cfg.d_model}); the paper uses heads of 64 channels."
            )
        for key in ("decay_low_rank", "a_low_rank", "gate_low_rank", "chunk_size"):
            if getattr(m, key) <= 0:
                raise ConfigError(f"model.mixers.rwkv7.{key} must be positive, got {getattr(m, key)}.")
        return cls(
            width=cfg.d_model,
            num_heads=h,
            decay_low_rank=m.decay_low_rank,
            a_low_rank=m.a_low_rank,
            gate_low_rank=m.gate_low_rank,
            chunk_size=m.chunk_size,
            norm_eps=cfg.norm_eps,
            **module_fields(cfg),
        )

    def _linear(self, features: int, name: str, init) -> Linear:
        return Linear(features, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init, name=name)

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, cache: PyTree = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d] (positions are unused: the state carries order) -> (f32[b, t, d], cache); segment_ids
        i32[b, t] (no cache) packs documents: shift and state restart at each one."""
        del positions
        check_parallel_only(segment_ids, cache)
        bsz, t, d = x.shape
        h, n = self.num_heads, self.head_size
        linear, zigzag = _channel_profiles(d, n)
        lora_up = nn.initializers.orthogonal(0.1)

        x32 = x.astype(_f32)
        if segment_ids is None:
            prev = jnp.zeros((bsz, 1, d), _f32) if cache is None else cache["shift"][:, None].astype(_f32)
            shifted = jnp.concatenate([prev, x32[:, :-1]], axis=1) - x32  # x_{t-1} - x_t
        else:  # x_{t-1} is zero at a document's first token
            shifted = lagged_in_segment(x32, segment_ids, 1) - x32
        mixed = {}
        for name, power in _SHIFT_POWERS.items():
            mu = self.param(name, _const_init(1.0 - (np.arange(d) / d) ** power), (d,), self.param_dtype)
            mixed[name] = (x32 + shifted * mu.astype(_f32)).astype(self.dtype)

        r = self._linear(d, "r_proj", nn.initializers.normal(self.init_std))(mixed["x_r"])
        k = self._linear(d, "k_proj", nn.initializers.normal(self.init_std))(mixed["x_k"]).astype(_f32)
        v = self._linear(d, "v_proj", nn.initializers.normal(self.init_std))(mixed["x_v"])
        w_bias = self.param(
            "w_bias", _const_init(-6.0 + 6.0 * (linear + 0.5) + 0.5 + 2.5 * zigzag), (d,), self.param_dtype
        )
        w_low = jnp.tanh(self._linear(self.decay_low_rank, "w_lora_down", nn.initializers.zeros)(mixed["x_w"]))
        w_pre = self._linear(d, "w_lora_up", lora_up)(w_low).astype(_f32) + w_bias.astype(_f32)
        log_w = -_DECAY_SCALE * jax.nn.sigmoid(w_pre)
        a_bias = self.param("a_bias", _const_init(-0.19 + 0.3 * zigzag + 0.4 * linear), (d,), self.param_dtype)
        a_low = self._linear(self.a_low_rank, "a_lora_down", nn.initializers.zeros)(mixed["x_a"])
        alpha = jax.nn.sigmoid(self._linear(d, "a_lora_up", lora_up)(a_low).astype(_f32) + a_bias.astype(_f32))
        g_low = jax.nn.sigmoid(self._linear(self.gate_low_rank, "g_lora_down", nn.initializers.zeros)(mixed["x_g"]))
        g = self._linear(d, "g_lora_up", lora_up)(g_low).astype(_f32)

        k_k = self.param("k_k", _const_init(0.71 - 0.1 * linear), (d,), self.param_dtype).astype(_f32)
        k_a = self.param("k_a", nn.initializers.constant(1.02), (d,), self.param_dtype).astype(_f32)
        r_k = self.param("r_k", nn.initializers.constant(-0.04), (h, n), self.param_dtype).astype(_f32)
        heads = lambda z: z.reshape(bsz, t, h, n)
        kappa = heads(k * k_k)
        kappa = kappa / jnp.maximum(jnp.linalg.norm(kappa, axis=-1, keepdims=True), 1e-12)  # torch F.normalize
        k = heads(k * (1.0 + (alpha - 1.0) * k_a))
        r, v, log_w, alpha = heads(r), heads(v), heads(log_w), heads(alpha)

        args = (r, log_w, k, v, -kappa, kappa * alpha)
        if cache is None:
            y, last = rwkv7_chunked(*args, self.chunk_size, segment_ids=segment_ids)
        elif t == 1:  # one decode step
            y, last = rwkv7_step(*(z[:, 0] for z in args), cache["S"])
            y = y[:, None]
        else:  # prefill continuing the cached state
            y, last = rwkv7_chunked(*args, self.chunk_size, state=cache["S"])
        y = HeadGroupNorm(n * self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="g_norm")(y)
        bonus = jnp.sum(r.astype(_f32) * k * r_k, axis=-1, keepdims=True) * v.astype(_f32)  # [b, t, h, e]
        y = (y.astype(_f32) + bonus.reshape(bsz, t, d)) * g
        out = Linear(
            d,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=scaled_init(self.init_std, self.n_layers),
            name="o_proj",
        )(y.astype(self.dtype))
        new_cache = None if cache is None else {"shift": x[:, -1].astype(cache["shift"].dtype), "S": last}
        return out, new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """{"shift": dtype[b, d], "S": f32[b, h, n, e]}: zeros, independent of ``max_len``."""
        del max_len
        n = self.head_size
        return {"shift": jnp.zeros((batch, self.width), dtype), "S": jnp.zeros((batch, self.num_heads, n, n), _f32)}

    def _lora_params(self) -> int:
        d = self.width
        ranks = (self.decay_low_rank, self.a_low_rank, self.gate_low_rank)
        return sum(linear_params(d, rank) + linear_params(rank, d) for rank in ranks)

    def num_params(self) -> int:
        d = self.width
        return (
            4 * linear_params(d, d)  # r, k, v, o projections
            + self._lora_params()
            + len(_SHIFT_POWERS) * d
            + 2 * d  # token-shift lerps, w_bias and a_bias
            + 2 * d
            + d  # k_k, k_a, r_k
            + 2 * d  # group norm scale and bias
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 per matmul weight (projections and LoRAs), the chunked state
        evolution (``rwkv7_flops_per_token``, chunk = min(chunk_size, seq_len)), and elementwise
        ops at 1 FLOP each, about 45 per channel: token shift and six lerps (13), decay, alpha and
        gate nonlinearities (~10), kappa and its norm, the k update (~8), group norm (~8), the
        bonus term and the gate (~6)."""
        d, h = self.width, self.num_heads
        matmul = 4 * linear_params(d, d) + self._lora_params()
        chunk = min(self.chunk_size, seq_len)
        return 2 * matmul + rwkv7_flops_per_token(h, self.head_size, self.head_size, chunk) + 45 * d

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """RWKV-7 time mixing with the paper's state S [e, n] updated by a Python loop over time.

        Returns (y [b, t, d], {"shift": [b, d], "S": [b, h, n, e]}) (S transposed to the cache's layout).
        """
        del positions
        p = variables["params"]
        bsz, t, d = x.shape
        h, n = self.num_heads, self.head_size
        xx = jnp.pad(x, ((0, 0), (1, 0), (0, 0)))[:, :-1] - x
        xr, xw, xk, xv, xa, xg = (x + xx * p[name] for name in _SHIFT_POWERS)
        r = (xr @ p["r_proj"]["kernel"]).reshape(bsz, t, h, n)
        k = xk @ p["k_proj"]["kernel"]
        v = (xv @ p["v_proj"]["kernel"]).reshape(bsz, t, h, n)
        w_lora = jnp.tanh(xw @ p["w_lora_down"]["kernel"]) @ p["w_lora_up"]["kernel"]
        w = jnp.exp(-jnp.exp(-0.5) * jax.nn.sigmoid(p["w_bias"] + w_lora))  # decay in (0.545, 1)
        alpha = jax.nn.sigmoid(p["a_bias"] + xa @ p["a_lora_down"]["kernel"] @ p["a_lora_up"]["kernel"])
        g = jax.nn.sigmoid(xg @ p["g_lora_down"]["kernel"]) @ p["g_lora_up"]["kernel"]
        kappa = (k * p["k_k"]).reshape(bsz, t, h, n)
        kappa = kappa / jnp.maximum(jnp.sqrt(jnp.sum(kappa**2, -1, keepdims=True)), 1e-12)
        k = (k * (1 + (alpha - 1) * p["k_a"])).reshape(bsz, t, h, n)
        w, alpha = w.reshape(bsz, t, h, n), alpha.reshape(bsz, t, h, n)
        s = jnp.zeros((bsz, h, n, n))  # [b, h, e, n]: the paper's wkv state
        ys = []
        for i in range(t):
            # diag(w_t) + a_t^T b_t with a = -kappa, b = kappa o alpha: [b, h, n, n]
            ab = kappa[:, i, :, :, None] * (alpha[:, i] * kappa[:, i])[:, :, None, :]
            transition = jax.vmap(jax.vmap(jnp.diag))(w[:, i]) - ab
            s = s @ transition + v[:, i, :, :, None] * k[:, i, :, None, :]
            ys.append(jnp.einsum("bhen,bhn->bhe", s, r[:, i]))
        y = jnp.stack(ys, axis=1)  # [b, t, h, e]
        y = y - y.mean(-1, keepdims=True)
        y = y / jnp.sqrt((y**2).mean(-1, keepdims=True) + n * self.norm_eps)
        y = y.reshape(bsz, t, d) * p["g_norm"]["scale"] + p["g_norm"]["bias"]
        y = y + (jnp.sum(r * k * p["r_k"], -1, keepdims=True) * v).reshape(bsz, t, d)
        return (y * g) @ p["o_proj"]["kernel"], {"shift": x[:, -1], "S": jnp.swapaxes(s, -1, -2)}
