"""Complex values and FFTs in ONNX: a complex array is a real one with a trailing axis of 2 (real, imaginary).

That is the layout of ONNX's ``DFT`` (opset 17, https://onnx.ai/onnx/operators/onnx__DFT.html), and onnxruntime
has no kernels for complex tensors otherwise, so every complex jaxpr value ``c64[*s]`` is an ``f32[*s, 2]`` graph
value. H3's diagonal SSM (complex64 decay and state) and the FFT convolutions of Hyena and BaseConv need it.

``complex_rule(eqn)`` gives the translation of an equation that reads or writes complex values:

  complex, real, imag, convert_element_type     build or take apart the pair
  mul, div, exp, expm1                          the complex formulas on (re, im)
  add, sub, neg, slice, rev, concatenate, ...   the real rule as it is (the pair axis is one more trailing axis)
  reshape, squeeze, broadcast_in_dim, transpose the real rule's shapes with the pair axis appended
  pad, select_n, gather                         the real rule on the real and the imaginary parts apart
  fft                                           ONNX ``DFT``; see below

``fft`` (one axis; FFT, IFFT, RFFT, IRFFT). onnxruntime's DFT kernel is accurate for power-of-2 lengths only
(relative error 8e-7 at n = 4096, 3e-4 at n = 4350, which Hyena's prefill uses, and slower there), so a
power-of-2 length runs as one ``DFT`` and any other as Bluestein's chirp-z transform (Bluestein 1970; Rabiner,
Schafer & Rader 1969): with c_j = exp(s i pi j^2 / n),

    sum_{j < n_in} x_j exp(s 2 pi i j k / n) = c_k sum_j (x_j c_j) conj(c_{k-j})     for k < n_out,

a convolution done with power-of-2 DFTs of length m >= n_in + n_out - 1. The chirp is computed from
(j^2 mod 2n) in int64 and double (exact phases) by graph nodes that depend on no input, so onnxruntime folds
them (and the DFT of the conjugate chirp) at load and the graph stores no table. An inverse real FFT reads
only the n // 2 + 1 stored bins: x_j = Re(sum_k w_k X_k exp(2 pi i j k / n)) / n with w_k = 2 for the bins
that stand for a conjugate pair and 1 for the constant and Nyquist bins, which drops their imaginary parts
as JAX does.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import jax
import numpy as np
from onnx import TensorProto

from slm_jax.export.onnx_ops import RULES, UnsupportedPrimitive, onnx_dtype

PAIR = 2  # the trailing axis of a complex value: real part, imaginary part
_FFT, _IFFT, _RFFT, _IRFFT = (int(t) for t in jax.lax.FftType)


def is_complex(aval) -> bool:
    return np.issubdtype(np.dtype(aval.dtype), np.complexfloating)


def part_dtype(dtype) -> np.dtype:
    """The real dtype of each part: float32 for complex64."""
    return np.finfo(np.dtype(dtype)).dtype


def as_pair(value) -> np.ndarray:
    """A complex array as its real [..., 2] form (a constant in the graph)."""
    a = np.asarray(value)
    return np.stack([a.real, a.imag], axis=-1).astype(part_dtype(a.dtype))


def _real_aval(aval):
    return jax.ShapeDtypeStruct(aval.shape, part_dtype(aval.dtype)) if is_complex(aval) else aval


def _real_view(eqn):
    """``eqn`` with its complex avals made real (same shapes): what the real rules read."""
    var = lambda v: SimpleNamespace(aval=_real_aval(v.aval))
    return SimpleNamespace(
        primitive=eqn.primitive,
        params=eqn.params,
        invars=[var(v) for v in eqn.invars],
        outvars=[var(v) for v in eqn.outvars],
    )


def _part(g, x: str, i: int) -> str:
    return g.op("Gather", [x, g.int64(i)], axis=-1)


def parts(g, x: str) -> tuple[str, str]:
    return _part(g, x, 0), _part(g, x, 1)


def pair(g, re: str, im: str) -> str:
    axis = g.int64([-1])
    return g.op("Concat", [g.op("Unsqueeze", [re, axis]), g.op("Unsqueeze", [im, axis])], axis=-1)


def _mul_pairs(g, a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    (ar, ai), (br, bi) = a, b
    mul = lambda x, y: g.op("Mul", [x, y])
    return g.op("Sub", [mul(ar, br), mul(ai, bi)]), g.op("Add", [mul(ar, bi), mul(ai, br)])


def _cmul(g, x: str, y: str) -> str:
    return pair(g, *_mul_pairs(g, parts(g, x), parts(g, y)))


def _cdiv(g, eqn, ins):
    """(a / b) = a conj(b) / |b|^2."""
    (br, bi) = parts(g, ins[1])
    re, im = _mul_pairs(g, parts(g, ins[0]), (br, g.op("Neg", [bi])))
    norm = g.op("Add", [g.op("Mul", [br, br]), g.op("Mul", [bi, bi])])
    return pair(g, g.op("Div", [re, norm]), g.op("Div", [im, norm]))


def _cexp(g, eqn, ins):
    """exp(x + iy) = exp(x) (cos y + i sin y)."""
    x, y = parts(g, ins[0])
    e = g.op("Exp", [x])
    return pair(g, g.op("Mul", [e, g.op("Cos", [y])]), g.op("Mul", [e, g.op("Sin", [y])]))


def _cexpm1(g, eqn, ins):
    """exp(x + iy) - 1 without cancellation: re = expm1(x) cos y - 2 sin^2(y / 2), im = exp(x) sin y."""
    x, y = parts(g, ins[0])
    dtype = part_dtype(eqn.invars[0].aval.dtype)
    em1 = RULES["expm1"](g, _real_view(eqn), [x])
    half = g.op("Sin", [g.op("Mul", [y, g.const(np.asarray(0.5, dtype))])])
    re = g.op(
        "Sub",
        [g.op("Mul", [em1, g.op("Cos", [y])]), g.op("Mul", [g.const(np.asarray(2, dtype)), g.op("Mul", [half, half])])],
    )
    return pair(g, re, g.op("Mul", [g.op("Exp", [x]), g.op("Sin", [y])]))


def _complex(g, eqn, ins):
    return pair(g, ins[0], ins[1])


def _convert(g, eqn, ins):
    """To complex: the value as the real part and an exact 0 as the imaginary part; from complex to real: the real
    part (as lax does)."""
    src, dst = eqn.invars[0].aval, eqn.outvars[0].aval
    target = part_dtype(dst.dtype) if is_complex(dst) else np.dtype(dst.dtype)
    x = _part(g, ins[0], 0) if is_complex(src) and not is_complex(dst) else ins[0]
    if np.dtype(_real_aval(src).dtype) != target:
        x = g.op("Cast", [x], to=onnx_dtype(target))
    if is_complex(src) or not is_complex(dst):
        return x
    rank = len(src.shape) + 1
    pads = g.int64([0] * (2 * rank - 1) + [1])  # one 0 after the value along the new pair axis
    return g.op("Pad", [g.op("Unsqueeze", [x, g.int64([-1])]), pads])


def _with_pair_axis(rule: Callable) -> Callable:
    """A shape rule (reshape, squeeze, broadcast_in_dim) on [*shape, 2]: the output shape gets the pair axis too."""

    def complex_rule(g, eqn, ins):
        view = _real_view(eqn)
        view.invars[0].aval = jax.ShapeDtypeStruct((*view.invars[0].aval.shape, PAIR), view.invars[0].aval.dtype)
        out = view.outvars[0].aval
        view.outvars[0].aval = jax.ShapeDtypeStruct((*out.shape, PAIR), out.dtype)
        if eqn.primitive.name == "broadcast_in_dim":
            rank = len(out.shape)
            view.params = {
                **eqn.params,
                "shape": (*out.shape, PAIR),
                "broadcast_dimensions": (*eqn.params["broadcast_dimensions"], rank),
            }
        return rule(g, view, ins)

    return complex_rule


def _transpose(g, eqn, ins):
    perm = list(eqn.params["permutation"])
    return RULES["transpose"](g, SimpleNamespace(params={"permutation": (*perm, len(perm))}), ins)


def _as_is(rule: Callable) -> Callable:
    """A rule whose ONNX ops act on leading axes only: the trailing pair axis rides along."""
    return lambda g, eqn, ins: rule(g, _real_view(eqn), ins)


def _partwise(rule: Callable) -> Callable:
    """A rule linear in its complex operands (pad, select_n, gather): run on the real parts, then on the imaginary
    parts (real operands such as predicates and indices go to both), and pair the results."""

    def complex_rule(g, eqn, ins):
        view = _real_view(eqn)
        runs = []
        for i in range(PAIR):
            args = [_part(g, x, i) if is_complex(v.aval) else x for v, x in zip(eqn.invars, ins)]
            out = rule(g, view, args)
            runs.append(out if isinstance(out, list) else [out])
        return [pair(g, re, im) for re, im in zip(*runs)]

    return complex_rule


# Fourier transforms --------------------------------------------------------------------------


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _dft_node(g, x: str, axis: int, length: int, inverse: bool, onesided: bool = False) -> str:
    """ONNX DFT of ``x`` ([..., L, 1] real or [..., L, 2] complex) along ``axis``, zero-padded or cut to ``length``."""
    return g.op("DFT", [x, g.int64(length)], axis=axis, inverse=int(inverse), onesided=int(onesided))


def _chirp(g, count: int, n: int, sign: int, dtype) -> str:
    """c_j = exp(sign i pi j^2 / n) for j < count: [count, 2], computed from (j^2 mod 2n) (exact) in double."""
    j = g.op("Range", [g.int64(0), g.int64(count), g.int64(1)])
    phase = g.op("Mod", [g.op("Mul", [j, j]), g.int64(2 * n)])
    angle = g.op("Mul", [g.op("Cast", [phase], to=TensorProto.DOUBLE), g.const(np.asarray(sign * np.pi / n))])
    cast = lambda v: g.op("Cast", [v], to=onnx_dtype(dtype))
    return pair(g, cast(g.op("Cos", [angle])), cast(g.op("Sin", [angle])))


def _conj(g, x: str) -> str:
    re, im = parts(g, x)
    return pair(g, re, g.op("Neg", [im]))


def _slice_axis(g, x: str, axis: int, start: int, stop: int, step: int = 1) -> str:
    return g.op("Slice", [x, g.int64([start]), g.int64([stop]), g.int64([axis]), g.int64([step])])


def dft(g, x: str, rank: int, n_in: int, n_out: int, n: int, inverse: bool, real: bool, dtype) -> str:
    """y_k = sum_{j < n_in} x_j exp(s 2 pi i j k / n) for k < n_out (s = +1 inverse, with a 1/n factor; -1 forward),
    along axis ``rank - 2`` of x ([..., n_in, 1] if ``real`` else [..., n_in, 2], ``rank`` axes) -> [..., n_out, 2].
    One DFT node for a power-of-2 ``n``, else Bluestein's chirp-z transform with power-of-2 DFTs."""
    axis = rank - 2
    if _is_pow2(n):
        onesided = real and n_out <= n // 2 + 1
        y = _dft_node(g, x, axis, n, inverse, onesided)
        full = n // 2 + 1 if onesided else n
        return y if n_out == full else _slice_axis(g, y, axis, 0, n_out)
    sign = 1 if inverse else -1
    m = 1 << (n_in + n_out - 2).bit_length()  # the smallest power of 2 >= n_in + n_out - 1
    chirp = _chirp(g, max(n_in, n_out), n, sign, dtype)  # [L, 2]
    c_in, c_out = (_slice_axis(g, chirp, 0, 0, k) for k in (n_in, n_out))
    if real:  # x [..., n_in, 1] times a complex chirp: the product's parts are x re(c) and x im(c)
        a = g.op("Mul", [x, c_in])
    else:
        a = _cmul(g, x, c_in)
    # conj(c_l) at circular position l for -(n_in - 1) <= l < n_out, zeros between
    kernel = [_conj(g, c_out)]
    if m - n_out - (n_in - 1) > 0:
        kernel.append(g.op("Expand", [g.const(np.zeros((1, PAIR), dtype)), g.int64([m - n_out - (n_in - 1), PAIR])]))
    if n_in > 1:
        kernel.append(_conj(g, _slice_axis(g, chirp, 0, n_in - 1, 0, -1)))
    kernel = _dft_node(g, g.op("Concat", kernel, axis=0), 0, m, inverse=False)  # [m, 2], folded at load
    conv = _dft_node(g, _cmul(g, _dft_node(g, a, axis, m, inverse=False), kernel), axis, m, inverse=True)
    y = _cmul(g, _slice_axis(g, conv, axis, 0, n_out), c_out)
    return g.op("Div", [y, g.const(np.asarray(n, dtype))]) if inverse else y


def _fft(g, eqn, ins):
    """lax.fft over the last axis (FFT, IFFT, RFFT, IRFFT; lengths as JAX gives them: the operand already padded)."""
    lengths, kind = eqn.params["fft_lengths"], int(eqn.params["fft_type"])
    if len(lengths) != 1:
        raise UnsupportedPrimitive("fft over more than one axis")
    n, x, shape = int(lengths[0]), ins[0], eqn.invars[0].aval.shape
    dtype = part_dtype(eqn.outvars[0].aval.dtype if kind != _IRFFT else eqn.invars[0].aval.dtype)
    rank = len(shape) + 1  # with the pair (or real) axis
    if kind == _RFFT:
        x = g.op("Unsqueeze", [x, g.int64([-1])])
        return dft(g, x, rank, n, n // 2 + 1, n, inverse=False, real=True, dtype=dtype)
    if kind in (_FFT, _IFFT):
        return dft(g, x, rank, n, n, n, inverse=kind == _IFFT, real=False, dtype=dtype)
    half = n // 2 + 1
    weight = lambda w, count: g.op("Expand", [g.const(np.full((1, 1), w, dtype)), g.int64([count, 1])])
    n_pairs = half - 1 - (n % 2 == 0)  # bins that stand for a conjugate pair: weight 2
    pieces = [weight(1, 1), *([weight(2, n_pairs)] if n_pairs else []), *([weight(1, 1)] if n % 2 == 0 else [])]
    weights = g.op("Concat", pieces, axis=0) if len(pieces) > 1 else pieces[0]  # [half, 1]
    y = dft(g, g.op("Mul", [x, weights]), rank, half, n, n, inverse=True, real=False, dtype=dtype)
    return _part(g, y, 0)


# Dispatch ------------------------------------------------------------------------------------

_COMPLEX_RULES: dict[str, Callable] = {
    "complex": _complex,
    "real": lambda g, eqn, ins: _part(g, ins[0], 0),
    "imag": lambda g, eqn, ins: _part(g, ins[0], 1),
    "convert_element_type": _convert,
    "mul": lambda g, eqn, ins: _cmul(g, *ins),
    "div": _cdiv,
    "exp": _cexp,
    "expm1": _cexpm1,
    "fft": _fft,
    "transpose": _transpose,
    **{p: _with_pair_axis(RULES[p]) for p in ("reshape", "squeeze", "broadcast_in_dim")},
    **{
        p: _as_is(RULES[p])
        for p in (
            "add",
            "sub",
            "neg",
            "slice",
            "rev",
            "concatenate",
            "split",
            "dynamic_slice",
            "dynamic_update_slice",
            "reduce_sum",
            "cumsum",
            "copy",
            "stop_gradient",
            "optimization_barrier",
        )
    },
    **{p: _partwise(RULES[p]) for p in ("pad", "select_n", "gather")},
}


def touches_complex(eqn) -> bool:
    return any(is_complex(v.aval) for v in (*eqn.invars, *eqn.outvars))


def complex_rule(eqn) -> Callable:
    """The translation of ``eqn``, which reads or writes complex values; raises UnsupportedPrimitive if none."""
    name = eqn.primitive.name
    if name not in _COMPLEX_RULES:
        raise UnsupportedPrimitive(f"{name} (on complex values)")
    return _COMPLEX_RULES[name]
