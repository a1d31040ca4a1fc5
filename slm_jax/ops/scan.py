"""Diagonal linear recurrence h_t = a_t * h_{t-1} + b_t: a slow reference and three fast paths.

This is the core of every gated linear RNN and diagonal state-space model in slm_jax (RG-LRU,
https://arxiv.org/abs/2402.19427; Mamba, https://arxiv.org/abs/2312.00752; the chunk-level
recurrence of SSD, https://arxiv.org/abs/2405.21060). The recurrence is elementwise, so every
dimension after time is treated as width: a state may be [b, w] or [b, w, n].

Implementations (``ScanImpl``), all computing in float32 and all tested against REFERENCE:

  REFERENCE    a Python loop over time of ``scan_step``: obviously correct, for tests only.
  LINEAR       ``lax.scan`` over time: O(t) sequential steps, O(t w) work.
  ASSOCIATIVE  ``lax.associative_scan`` with the composition of affine maps
               (Blelloch 1990, https://www.cs.cmu.edu/~guyb/papers/Ble93.pdf): O(log t) depth.
  CHUNKED      associative scan inside chunks of c steps (all chunks in parallel), then a
               ``lax.scan`` over the t / c chunk boundaries, then one elementwise fix-up.
  AUTO         resolved per platform by ``resolve_impl`` from measurements (benchmarks/scan.py).

Gradients: LINEAR and REFERENCE use plain autodiff. ASSOCIATIVE and CHUNKED share one custom
VJP: the backward pass of a linear recurrence is the same recurrence run backwards in time
(dh_t = g_t + a_{t+1} dh_{t+1}), so it reuses the forward implementation instead of
differentiating through (and storing) its O(log t) levels of intermediates. Measured on CPU,
fwd+bwd of a random weighted sum, float32, median ms, autodiff -> custom VJP, interleaved runs:
  [8, 1024, 512]:     linear 31 -> 35, associative 96 -> 91,  chunked 126 -> 74
  [4, 256, 512, 16]:  linear 98 -> 123, associative 198 -> 116, chunked 175 -> 112
so LINEAR keeps autodiff (XLA's scan transpose beats the extra time flips). The custom VJP
supports reverse mode only (no jvp); the tests check it against REFERENCE's autodiff.

Packed rows (``segment_ids``, ops/segments.py): a_t = 0 at every document's first token, so the
state restarts from zero there on every implementation (and the backward pass stops there too).
"""

import enum
import functools

import jax
import jax.numpy as jnp
from jax import lax

from slm_jax.array_typing import Array
from slm_jax.errors import ConfigError
from slm_jax.ops.segments import segment_starts

_f32 = jnp.float32


class ScanImpl(enum.Enum):
    """How ``linear_scan`` evaluates the recurrence; see the module docstring."""

    REFERENCE = "reference"
    LINEAR = "linear"
    ASSOCIATIVE = "associative"
    CHUNKED = "chunked"
    AUTO = "auto"


def scan_impl_named(name: str, key: str) -> ScanImpl:
    """The ``ScanImpl`` a config string names (``key`` is the config key, for the error)."""
    names = [i.value for i in ScanImpl]
    if name not in names:
        raise ConfigError(f"{key} must be one of {', '.join(names)}, got {name!r}.")
    return ScanImpl(name)


# AUTO on CPU: LINEAR, fastest at every size measured and compiling 5-10x faster. Median ms
# under jit, float32, 2-core Zen 4 (benchmarks/scan.py --repeats 7, 2026-11-23), fwd / fwd+bwd:
#   size [b, t, w(, n)]   linear         associative    chunked (c = 64)
#   8 x 256 x 256         0.34 / 0.68    0.56 / 1.43    0.70 / 2.33
#   8 x 1024 x 512        12.4 / 26.8    20.9 / 50.8    20.4 / 45.8
#   16 x 256 x 1024       12.0 / 26.4    23.7 / 51.5    21.0 / 44.6
#   4 x 256 x 512 x 16    28.6 / 75.0    57.3 / 109     53.0 / 110
# compile s (fwd+bwd):    0.14-0.21      0.75-0.97      0.90-1.29
# The scan is memory-bound on CPU: one pass over the data beats the ~2x traffic of the parallel
# forms. Inside a whole model the compile-time balance can differ (NOTES-jax.md), so mixers
# expose ``scan_impl`` to override AUTO.
_CPU_IMPL = ScanImpl.LINEAR
# GPU/TPU: O(log t) depth keeps the accelerator busy where a length-t sequential loop of
# tiny elementwise steps would not, and recurrentgemma measured associative compiling much
# faster than lax.scan inside a full Griffin step (see ../shared/NOTES-jax.md).
_ACCELERATOR_IMPL = ScanImpl.ASSOCIATIVE


def resolve_impl(impl: ScanImpl, platform: str | None = None) -> ScanImpl:
    """Replace AUTO by the fastest implementation measured on ``platform``; others pass through.

    Args:
      impl: the requested implementation.
      platform: a JAX backend name ("cpu", "gpu", "cuda", "rocm", "tpu"); None means
        ``jax.default_backend()``.
    """
    if impl is not ScanImpl.AUTO:
        return impl
    platform = platform or jax.default_backend()
    return _CPU_IMPL if platform == "cpu" else _ACCELERATOR_IMPL


def scan_step(a_t: Array, b_t: Array, h: Array) -> Array:
    """One step of the recurrence (the decode form): a_t [b, w...], b_t [b, w...], h [b, w...].

    Returns the new state f32[b, w...]. The state is kept in float32 whatever the input dtype
    so that a long decode does not lose the small per-step increments to rounding.
    """
    return a_t.astype(_f32) * h.astype(_f32) + b_t.astype(_f32)


def _compose(first: tuple[Array, Array], second: tuple[Array, Array]) -> tuple[Array, Array]:
    """Compose two affine maps h -> a h + b, ``first`` applied first: (a1, b1) then (a2, b2).

    a2 (a1 h + b1) + b2 = (a1 a2) h + (a2 b1 + b2). Associative, which is all
    ``lax.associative_scan`` needs.
    """
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


def _reference(a: Array, b: Array, h0: Array) -> Array:
    """f32[b, t, w...] by stepping through time in Python (unrolled under jit: short t only)."""
    h, states = h0, []
    for i in range(a.shape[1]):
        h = scan_step(a[:, i], b[:, i], h)
        states.append(h)
    return jnp.stack(states, axis=1)


def _linear(a: Array, b: Array, h0: Array) -> Array:
    """f32[b, t, w...] with ``lax.scan`` over time (time-major inside, as scan requires)."""

    def step(h, ab):
        h = scan_step(*ab, h)
        return h, h

    _, states = lax.scan(step, h0, (jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0)))
    return jnp.moveaxis(states, 0, 1)


def _associative(a: Array, b: Array, h0: Array) -> Array:
    """f32[b, t, w...] with ``lax.associative_scan`` over time.

    The initial state is folded into the first input (b_0 <- a_0 h0 + b_0), so the prefix
    compositions applied to a zero state give the states directly.
    """
    b = b.at[:, 0].add(a[:, 0] * h0)
    return lax.associative_scan(_compose, (a, b), axis=1)[1]


def _chunked(a: Array, b: Array, h0: Array, chunk_size: int) -> Array:
    """f32[b, t, w...] in chunks of c = ``chunk_size`` steps.

    Within every chunk (in parallel) an associative scan from a zero state gives the local
    states and the cumulative decay from the chunk start. The state entering each chunk then
    needs only a recurrence over the t / c chunk ends, which is the same linear recurrence on
    (chunk decay, chunk-end local state) and runs as a short ``lax.scan``. Finally
    h = local + cumulative decay * entering state.
    """
    bsz, t, *width = a.shape
    c = min(chunk_size, t)
    z = -(-t // c)  # number of chunks
    pad = [(0, 0), (0, z * c - t)] + [(0, 0)] * len(width)
    # a = 1, b = 0 is the identity step: padded steps leave the state unchanged.
    a = jnp.pad(a, pad, constant_values=1.0).reshape(bsz, z, c, *width)  # [b, z, c, w...]
    b = jnp.pad(b, pad).reshape(bsz, z, c, *width)
    decay, local = lax.associative_scan(_compose, (a, b), axis=2)  # [b, z, c, w...] each
    ends = _linear(decay[:, :, -1], local[:, :, -1], h0)  # [b, z, w...]: state after chunk z
    entering = jnp.concatenate([h0[:, None], ends[:, :-1]], axis=1)  # [b, z, w...]
    states = local + decay * entering[:, :, None]
    return states.reshape(bsz, z * c, *width)[:, :t]


def _parallel(a: Array, b: Array, h0: Array, impl: ScanImpl, chunk_size: int) -> Array:
    """ASSOCIATIVE or CHUNKED: f32 a, b [b, t, w...], h0 [b, w...] -> f32 states [b, t, w...]."""
    if impl is ScanImpl.ASSOCIATIVE:
        return _associative(a, b, h0)
    return _chunked(a, b, h0, chunk_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _recurrence(a: Array, b: Array, h0: Array, impl: ScanImpl, chunk_size: int) -> Array:
    """``_parallel`` with the backward pass below (see the module docstring for why and how fast)."""
    return _parallel(a, b, h0, impl, chunk_size)


def _recurrence_fwd(a, b, h0, impl, chunk_size):
    states = _parallel(a, b, h0, impl, chunk_size)
    return states, (a, states, h0)


def _recurrence_bwd(impl, chunk_size, residuals, g):
    """Cotangents of (a, b, h0) from g = dL/dh_t [b, t, w...].

    dh_t, the total gradient reaching h_t, obeys dh_t = g_t + a_{t+1} dh_{t+1} (dh after the
    last step is zero): the forward recurrence on time-reversed inputs. Then, from
    h_t = a_t h_{t-1} + b_t: dL/db_t = dh_t, dL/da_t = dh_t h_{t-1}, dL/dh0 = a_0 dh_0.
    """
    a, states, h0 = residuals
    a_next = jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)  # a_{t+1}, 0 past the end
    flip = functools.partial(jnp.flip, axis=1)
    dh = flip(_parallel(flip(a_next), flip(g), jnp.zeros_like(h0), impl, chunk_size))
    previous = jnp.concatenate([h0[:, None], states[:, :-1]], axis=1)  # h_{t-1}
    return dh * previous, dh, a[:, 0] * dh[:, 0]


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def linear_scan(
    a: Array,
    b: Array,
    h0: Array | None = None,
    impl: ScanImpl = ScanImpl.AUTO,
    chunk_size: int = 64,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """All states of h_t = a_t * h_{t-1} + b_t, with h_{-1} = h0.

    Args:
      a: decay [b, t, w...] (any number of trailing width dims, e.g. [b, t, w, n] for SSMs).
      b: input [b, t, w...], same shape as ``a``.
      h0: initial state [b, w...] (anything broadcastable to it); None means zeros.
      impl: which implementation; AUTO picks by platform (``resolve_impl``).
      chunk_size: c, the chunk length of CHUNKED (ignored by the others); need not divide t.
      segment_ids: optional i32[b, t] documents of packed rows: the state restarts from zero at
        each document's first token (a_t = 0 there; t = 0 included, so h0 is then unused).

    Returns:
      (h_all, h_last): every state [b, t, w...] in the inputs' dtype, and the final state
      f32[b, w...]. Accumulation is float32 whatever the input dtype, so bfloat16 inputs do not
      drift over long sequences; h_last stays float32 to carry into the next call or a decode.
    """
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(
            f"linear_scan needs a and b of the same shape [b, t, w...]; got a {a.shape} and b {b.shape}: "
            "broadcast them to one shape first."
        )
    if chunk_size < 1:
        raise ValueError(f"linear_scan chunk_size must be at least 1, got {chunk_size}.")
    dtype = jnp.result_type(a, b)
    state_shape = a.shape[:1] + a.shape[2:]
    h0 = jnp.zeros(state_shape, _f32) if h0 is None else jnp.broadcast_to(h0.astype(_f32), state_shape)
    if a.shape[1] == 0:  # nothing to scan: the state passes through
        return b.astype(dtype), h0
    a, b = a.astype(_f32), b.astype(_f32)
    if segment_ids is not None:
        starts = segment_starts(segment_ids).reshape(segment_ids.shape + (1,) * (a.ndim - 2))
        a = jnp.where(starts, 0.0, a)
    impl = resolve_impl(impl)
    if impl is ScanImpl.REFERENCE:
        states = _reference(a, b, h0)
    elif impl is ScanImpl.LINEAR:
        states = _linear(a, b, h0)
    else:
        states = _recurrence(a, b, h0, impl, chunk_size)
    return states.astype(dtype), states[:, -1]
