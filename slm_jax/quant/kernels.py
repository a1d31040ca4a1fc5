"""Symmetric quantization of one projection kernel W [d_in, f] (or stacked: [..., d_in, f]).

The input axis is split into groups of ``g`` rows, with one float32 scale per group and
output column: ``W ~= q * scale``, ``scale = max|W_group| / qmax``, ``q = round(W / scale)``.
A requested group size that does not divide ``d_in`` becomes ``n = ceil(d_in / size)`` groups of
``g = ceil(d_in / n)`` rows, the last one shorter (e.g. 352 inputs at 128 -> 118, 118, 116): at most the
requested rows per scale, as many scales as a ragged split, and ``g`` recoverable from the stored shapes.
int8 (qmax 127) defaults to one group spanning the whole input, i.e. a scale per output
channel (LLM.int8's vector-wise weights, Dettmers et al. 2022, arXiv:2208.07339, without the
outlier split); int4 (qmax 7) uses groups of 64 by default, as GPTQ/AWQ checkpoints do
(Frantar et al. 2022, arXiv:2210.17323; Lin et al. 2023, arXiv:2306.00978) but with plain
round-to-nearest. Stored leaves, which replace ``kernel`` in a ``Linear``'s params:

  int8: ``kernel_int8`` i8[..., d_in, f],           ``kernel_scale`` f32[..., d_in / g, f]
  int4: ``kernel_int4`` u8[..., ceil(d_in / 2), f], ``kernel_scale`` f32[..., d_in / g, f]

AWQ (quant/awq.py) adds ``kernel_in_scale`` f32[..., d_in]: the integers quantize ``diag(s) W`` and the kernel is
``dequantized / s`` per input row.
"""

import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.errors import ConfigError
from slm_jax.quant.packing import pack_int4, unpack_int4

QMAX = {8: 127, 4: 7}
LEAVES = {8: "kernel_int8", 4: "kernel_int4"}
SCALE = "kernel_scale"
IN_SCALE = "kernel_in_scale"
DEFAULT_INT4_GROUP = 64


def group_for(d_in: int, bits: int, group_size: int) -> int:
    """Rows per scale for a kernel with ``d_in`` inputs (module docstring); ``group_size`` 0 picks the default.

    Default: int8 -> ``d_in`` (per output channel); int4 -> at most 64 rows per scale.
    """
    if group_size < 0:
        raise ConfigError(f"--group-size must be positive (or omitted for the default), got {group_size}.")
    return even_group(d_in, group_size or (d_in if bits == 8 else DEFAULT_INT4_GROUP))


def even_group(d_in: int, size: int) -> int:
    """Rows per group when at most ``size`` rows share a scale: ``ceil(d_in / ceil(d_in / size))``."""
    return rows_per_group(d_in, -(-d_in // min(size, d_in)))


def rows_per_group(d_in: int, n_groups: int) -> int:
    """``ceil(d_in / n_groups)``: the rows of every group but a shorter last one."""
    return -(-d_in // n_groups)


def _pad_rows(x: Array, rows: int) -> Array:
    """Zero rows appended to the second-to-last axis up to ``rows``."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, rows - x.shape[-2]), (0, 0)])


def quantize_kernel(w: Array, bits: int, group: int) -> dict[str, Array]:
    """f[..., d_in, f] -> {LEAVES[bits]: ints, SCALE: f32[..., ceil(d_in / group), f]} (module docstring)."""
    *lead, d_in, f = w.shape
    group = even_group(d_in, group)
    n_groups = -(-d_in // group)
    wg = _pad_rows(w.astype(jnp.float32), n_groups * group).reshape(
        *lead, n_groups, group, f
    )  # zeros: no effect on max
    scale = jnp.max(jnp.abs(wg), axis=-2) / QMAX[bits]  # [..., G, f]
    scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero group: any scale reproduces it
    q = jnp.clip(jnp.round(wg / scale[..., None, :]), -QMAX[bits], QMAX[bits]).astype(jnp.int8)
    q = q.reshape(*lead, n_groups * group, f)[..., :d_in, :]
    return {LEAVES[bits]: pack_int4(q) if bits == 4 else q, SCALE: scale}


def dequantize_kernel(leaves: dict[str, Array], d_in: int) -> Array:
    """The stored leaves of a quantized kernel -> f32[..., d_in, f] (inverse of ``quantize_kernel`` up to rounding)."""
    scale = leaves[SCALE]  # [..., G, f]
    q = leaves[LEAVES[8]] if LEAVES[8] in leaves else unpack_int4(leaves[LEAVES[4]], d_in)
    *lead, n_groups, f = scale.shape
    group = rows_per_group(d_in, n_groups)
    qg = _pad_rows(q.astype(jnp.float32), n_groups * group).reshape(*lead, n_groups, group, f)
    w = (qg * scale[..., None, :]).reshape(*lead, n_groups * group, f)[..., :d_in, :]
    return w / leaves[IN_SCALE][..., None] if IN_SCALE in leaves else w


def quantized_leaf_names() -> tuple[str, ...]:
    """Names a quantized ``Linear`` holds instead of ``kernel``."""
    return (*LEAVES.values(), SCALE, IN_SCALE)
