"""One ONNX translation per JAX primitive: ``RULES[name](graph, eqn, inputs) -> output name(s)``.

The set covers what slm_jax's prefill and decode steps trace to on real values (every preset, float and
weight-quantized, int8 caches, scanned or unrolled layers, every ``ScanImpl``; complex values and ``fft``,
which h3, hyena and baseconv use, are onnx_complex.py's) and keeps JAX's semantics
where ONNX differs: ``rem`` truncates (``Mod`` with fmod=1), ``dynamic_slice`` and
``dynamic_update_slice`` clamp their start indices, ``dot_general`` becomes a batched
``MatMul`` after transposes, ``scatter`` becomes ``ScatterND`` over the full index of every
updated element (the attention cache writes distinct slots; ``ScatterND`` leaves duplicates
undefined), ``log1p`` and ``expm1`` use Kahan's cancellation-free forms (plain ``Log(1 + x)`` and
``Exp(x) - 1`` lose RG-LRU's precision). ONNX Runtime has no int8/int16 arithmetic kernels, so
such operands are widened to int32 and narrowed back. Index tables (``iota``, the element indices of
``scatter`` and ``dynamic_update_slice``) are computed by Range/Expand nodes that onnxruntime folds at load, not
stored: stored, they were most of a chunked prefill graph (400 KB of DeltaNet's 570 KB). Operator reference:
https://onnx.ai/onnx/operators/ (opset 18).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import TensorProto, helper

_INT64_MIN = np.iinfo(np.int64).min
_NARROW_INTS = {np.dtype(t) for t in ("int8", "uint8", "int16", "uint16")}


class UnsupportedPrimitive(Exception):
    """A jaxpr holds a primitive (or a form of one) that has no ONNX translation here."""


def onnx_dtype(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _in(eqn, i: int = 0):
    return eqn.invars[i].aval


def _out(eqn, i: int = 0):
    return eqn.outvars[i].aval


def _reshape(g, x: str, src: tuple, dst: tuple) -> str:
    return x if tuple(src) == tuple(dst) else g.op("Reshape", [x, g.int64(list(dst))])


def _transpose(g, x: str, perm: list[int]) -> str:
    return x if perm == sorted(perm) else g.op("Transpose", [x], perm=perm)


# Elementwise -------------------------------------------------------------------------------


def _elementwise(op_type: str, **attrs) -> Callable:
    """A rule applying ``op_type`` to all inputs, widening int8/int16 operands to int32 first."""

    def rule(g, eqn, ins):
        in_dtype, out_dtype = np.dtype(_in(eqn).dtype), np.dtype(_out(eqn).dtype)
        if in_dtype not in _NARROW_INTS:
            return g.op(op_type, ins, **attrs)
        y = g.op(op_type, [g.op("Cast", [x], to=TensorProto.INT32) for x in ins], **attrs)
        return y if out_dtype == np.bool_ else g.op("Cast", [y], to=onnx_dtype(out_dtype))

    return rule


def _logical(bool_op: str, int_op: str) -> Callable:
    return lambda g, eqn, ins: g.op(bool_op if _in(eqn).dtype == np.bool_ else int_op, ins)


def _shift(direction: str) -> Callable:
    """BitShift exists for unsigned types only: signed operands are shifted as their unsigned bits."""

    def rule(g, eqn, ins):
        dtype = np.dtype(_in(eqn).dtype)
        if dtype.kind == "u":
            return g.op("BitShift", ins, direction=direction)
        unsigned = onnx_dtype(f"u{dtype.itemsize}")
        y = g.op("BitShift", [g.op("Cast", [x], to=unsigned) for x in ins], direction=direction)
        return g.op("Cast", [y], to=onnx_dtype(dtype))

    return rule


def _integer_pow(g, eqn, ins):
    y, x = eqn.params["y"], ins[0]
    if y == 0:
        return g.const(np.ones(_out(eqn).shape, _out(eqn).dtype))
    out = x
    for _ in range(abs(y) - 1):
        out = g.op("Mul", [out, x])
    return g.op("Reciprocal", [out]) if y < 0 else out


def _scalar_like(g, eqn, value) -> str:
    return g.const(np.asarray(value, _in(eqn).dtype))


def _log1p(g, eqn, ins):
    """log(1 + x) without the cancellation of Log(1 + x) for small x (Kahan: log(u) * x / (u - 1), u = 1 + x)."""
    x, one = ins[0], _scalar_like(g, eqn, 1)
    u = g.op("Add", [x, one])
    ratio = g.op("Div", [g.op("Mul", [g.op("Log", [u]), x]), g.op("Sub", [u, one])])
    ratio = g.op("Where", [g.op("IsInf", [u]), u, ratio])
    return g.op("Where", [g.op("Equal", [u, one]), x, ratio])


def _expm1(g, eqn, ins):
    """exp(x) - 1 without cancellation for small x (Kahan: (u - 1) * x / log(u), u = exp(x))."""
    x, one = ins[0], _scalar_like(g, eqn, 1)
    u = g.op("Exp", [x])
    um1 = g.op("Sub", [u, one])
    ratio = g.op("Div", [g.op("Mul", [um1, x]), g.op("Log", [u])])
    ratio = g.op("Where", [g.op("Or", [g.op("IsInf", [u]), g.op("Equal", [u, _scalar_like(g, eqn, 0)])]), um1, ratio])
    return g.op("Where", [g.op("Equal", [u, one]), x, ratio])


def _round(g, eqn, ins):
    """ONNX Round is half-to-even (jnp.round); lax.round's default rounds halves away from zero."""
    if int(eqn.params["rounding_method"]) == 1:  # RoundingMethod.TO_NEAREST_EVEN
        return g.op("Round", ins)
    x = ins[0]
    return g.op("Mul", [g.op("Sign", [x]), g.op("Floor", [g.op("Add", [g.op("Abs", [x]), _scalar_like(g, eqn, 0.5)])])])


def _select_n(g, eqn, ins):
    """select_n(pred, *cases) as nested Where; bool and int8/int16 cases (no ORT Where kernel) go via a wider type."""
    pred, *cases = ins
    if len(cases) == 1:
        return cases[0]
    dtype = np.dtype(_out(eqn).dtype)
    wide = {np.dtype(np.bool_): TensorProto.UINT8}.get(
        dtype, TensorProto.INT32 if dtype in _NARROW_INTS - {np.dtype("uint8")} else None
    )
    if wide is not None:
        cases = [g.op("Cast", [c], to=wide) for c in cases]
    if _in(eqn).dtype == np.bool_:
        out = g.op("Where", [pred, cases[1], cases[0]])
    else:
        out = cases[0]
        for i, case in enumerate(cases[1:], 1):
            out = g.op("Where", [g.op("Equal", [pred, _scalar_like(g, eqn, i)]), case, out])
    return out if wide is None else g.op("Cast", [out], to=onnx_dtype(dtype))


def _convert(g, eqn, ins):
    if np.dtype(_in(eqn).dtype) == np.dtype(eqn.params["new_dtype"]):
        return ins[0]
    return g.op("Cast", ins, to=onnx_dtype(eqn.params["new_dtype"]))


# Shapes ------------------------------------------------------------------------------------


def _broadcast_in_dim(g, eqn, ins):
    shape, dims, src = list(eqn.params["shape"]), eqn.params["broadcast_dimensions"], _in(eqn).shape
    ranked = [1] * len(shape)
    for i, d in enumerate(dims):
        ranked[d] = src[i]
    x = _reshape(g, ins[0], src, ranked)
    return x if ranked == shape else g.op("Expand", [x, g.int64(shape)])


def _to_out_shape(g, eqn, ins):
    return _reshape(g, ins[0], _in(eqn).shape, _out(eqn).shape)


def _stack(g, eqn, ins):
    shape, axis = list(_in(eqn).shape), eqn.params["axis"]
    one = shape[:axis] + [1] + shape[axis:]
    return g.op("Concat", [_reshape(g, x, shape, one) for x in ins], axis=axis)


def arange_along(g, shape, axis: int, dtype=np.int64) -> str:
    """[0, 1, ..., shape[axis] - 1] along ``axis``, broadcast to ``shape``: Range, Reshape, Expand nodes rather than
    a stored table (onnxruntime folds them at load; a stored [64, 64] mask was 16 KB of graph per layer)."""
    shape = [int(s) for s in shape]
    line = g.op("Range", [g.int64(0), g.int64(shape[axis]), g.int64(1)])
    if np.dtype(dtype) != np.int64:
        line = g.op("Cast", [line], to=onnx_dtype(dtype))
    ranked = [shape[axis] if i == axis else 1 for i in range(len(shape))]
    line = _reshape(g, line, [shape[axis]], ranked)
    return line if ranked == shape else g.op("Expand", [line, g.int64(shape)])


def index_grid(g, shape) -> str:
    """int64[*shape, rank]: the index of every element of an array of ``shape``, computed (see ``arange_along``)."""
    shape = [int(s) for s in shape]
    return g.op("Concat", [arange_along(g, [*shape, 1], axis) for axis in range(len(shape))], axis=-1)


def _iota(g, eqn, ins):
    return arange_along(g, eqn.params["shape"], eqn.params["dimension"], eqn.params["dtype"])


def _slice(g, eqn, ins):
    shape = _in(eqn).shape
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    steps = eqn.params["strides"] or (1,) * len(shape)
    axes = [i for i in range(len(shape)) if (starts[i], limits[i], steps[i]) != (0, shape[i], 1)]
    if not axes:
        return ins[0]
    pick = lambda seq: g.int64([seq[i] for i in axes])
    return g.op("Slice", [ins[0], pick(starts), pick(limits), g.int64(axes), pick(steps)])


def _rev(g, eqn, ins):
    axes = list(eqn.params["dimensions"])
    if not axes:
        return ins[0]
    n = len(axes)
    return g.op("Slice", [ins[0], g.int64([-1] * n), g.int64([_INT64_MIN] * n), g.int64(axes), g.int64([-1] * n)])


def _pad(g, eqn, ins):
    """lax.pad: interior padding by interleaving, then Pad for the positive edges and Slice for negative ones."""
    x, value = ins
    shape = list(_in(eqn).shape)
    config = eqn.params["padding_config"]
    for axis, (_, _, interior) in enumerate(config):
        if interior and shape[axis] > 1:
            n = shape[axis]
            split = shape[: axis + 1] + [1] + shape[axis + 1 :]
            filler = g.op("Expand", [value, g.int64(shape[: axis + 1] + [interior] + shape[axis + 1 :])])
            x = g.op("Concat", [_reshape(g, x, shape, split), filler], axis=axis + 1)
            x = g.op("Reshape", [x, g.int64(shape[:axis] + [n * (1 + interior)] + shape[axis + 1 :])])
            shape[axis] = n + (n - 1) * interior
            x = g.op("Slice", [x, g.int64([0]), g.int64([shape[axis]]), g.int64([axis])])
    lo, hi = [c[0] for c in config], [c[1] for c in config]
    if any(p > 0 for p in lo + hi):
        x = g.op("Pad", [x, g.int64([max(p, 0) for p in lo + hi]), value])
        shape = [s + max(a, 0) + max(b, 0) for s, a, b in zip(shape, lo, hi)]
    cut = [i for i in range(len(shape)) if lo[i] < 0 or hi[i] < 0]
    if cut:
        x = g.op(
            "Slice",
            [x, g.int64([-min(lo[i], 0) for i in cut]), g.int64([shape[i] + min(hi[i], 0) for i in cut]), g.int64(cut)],
        )
    return x


def _split(g, eqn, ins):
    sizes = [int(s) for s in eqn.params["sizes"]]
    return g.op_n("Split", [ins[0], g.int64(sizes)], len(sizes), axis=eqn.params["axis"])


def _reduce(op_type: str) -> Callable:
    def rule(g, eqn, ins):
        axes = list(eqn.params["axes"])
        return g.op(op_type, [ins[0], g.int64(axes)], keepdims=0) if axes else ins[0]

    return rule


def _arg(op_type: str) -> Callable:
    def rule(g, eqn, ins):
        (axis,) = eqn.params["axes"]
        return g.op("Cast", [g.op(op_type, ins, axis=axis, keepdims=0)], to=onnx_dtype(eqn.params["index_dtype"]))

    return rule


def _top_k(g, eqn, ins):
    """``lax.top_k``: the k largest along ``axis`` (default the last), sorted; ONNX's int64 indices cast to JAX's
    int32. Exactly tied values may come in another order than XLA's. The MoE router (modules/moe.py) uses it."""
    axis = eqn.params.get("axis", len(_in(eqn).shape) - 1)
    values, indices = g.op_n("TopK", [ins[0], g.int64([eqn.params["k"]])], 2, axis=axis, largest=1, sorted=1)
    return [values, g.op("Cast", [indices], to=onnx_dtype(_out(eqn, 1).dtype))]


def _cumsum(g, eqn, ins):
    return g.op("CumSum", [ins[0], g.int64(eqn.params["axis"])], reverse=int(eqn.params["reverse"]))


# Contractions and indexing -----------------------------------------------------------------


def _dot_general(g, eqn, ins):
    """Transpose to (batch, free, contracted) x (batch, contracted, free), MatMul, reshape to JAX's order."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs, out = _in(eqn, 0).shape, _in(eqn, 1).shape, _out(eqn)
    lf = [d for d in range(len(ls)) if d not in lc and d not in lb]
    rf = [d for d in range(len(rs)) if d not in rc and d not in rb]
    size = lambda shape, dims: int(np.prod([shape[d] for d in dims], dtype=np.int64))
    lead = [size(ls, lb)] if lb else []
    lhs = _transpose(g, ins[0], [*lb, *lf, *lc])
    rhs = _transpose(g, ins[1], [*rb, *rc, *rf])
    lhs = _reshape(g, lhs, [ls[d] for d in (*lb, *lf, *lc)], lead + [size(ls, lf), size(ls, lc)])
    rhs = _reshape(g, rhs, [rs[d] for d in (*rb, *rc, *rf)], lead + [size(rs, rc), size(rs, rf)])
    if np.dtype(_in(eqn).dtype) != np.dtype(out.dtype):  # preferred_element_type
        lhs, rhs = (g.op("Cast", [x], to=onnx_dtype(out.dtype)) for x in (lhs, rhs))
    y = g.op("MatMul", [lhs, rhs])
    return _reshape(g, y, lead + [size(ls, lf), size(rs, rf)], out.shape)


def _start_vector(g, indices: list[str], shape: tuple, sizes: tuple) -> str:
    """int64[rank] start indices clamped to [0, dim - size], as lax.dynamic_slice does."""
    one = lambda i: g.op("Reshape", [g.op("Cast", [i], to=TensorProto.INT64), g.int64([1])])
    starts = g.op("Concat", [one(i) for i in indices], axis=0)
    upper = g.int64(np.subtract(shape, sizes))
    return g.op("Max", [g.op("Min", [starts, upper]), g.int64(np.zeros(len(shape)))])


def _dynamic_slice(g, eqn, ins):
    sizes = eqn.params["slice_sizes"]
    starts = _start_vector(g, ins[1:], _in(eqn).shape, sizes)
    return g.op("Slice", [ins[0], starts, g.op("Add", [starts, g.int64(sizes)])])


def _dynamic_update_slice(g, eqn, ins):
    shape, upd = _in(eqn, 0).shape, _in(eqn, 1).shape
    starts = _start_vector(g, ins[2:], shape, upd)
    index = g.op("Add", [g.op("Reshape", [starts, g.int64([1] * len(upd) + [len(shape)])]), index_grid(g, upd)])
    return g.op("ScatterND", [ins[0], index, ins[1]])


def _gather(g, eqn, ins):
    """Whole-slice lookups along some axes (embedding rows, take, diagonals, take_along_axis): GatherND, then JAX's
    dimension order. Batching dimensions (take_along_axis: one index row per batch row) must lead the indices; they
    become GatherND's ``batch_dims``."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    src, idx = _in(eqn, 0).shape, _in(eqn, 1).shape
    axes, batching = list(dn.start_index_map), list(dn.operand_batching_dims)
    rest = [d for d in range(len(src)) if d not in axes + batching]
    if (
        sorted(dn.collapsed_slice_dims) != sorted(axes)
        or tuple(dn.start_indices_batching_dims) != tuple(range(len(batching)))
        or idx[-1] != len(axes)
        or any(sizes[d] != src[d] for d in rest)
    ):
        raise UnsupportedPrimitive("gather (only whole slices along the indexed axes are translated)")
    data = _transpose(g, ins[0], batching + axes + rest)
    index = g.op("Cast", [ins[1]], to=TensorProto.INT64)
    y = g.op("GatherND", [data, index], batch_dims=len(batching))  # [*batch, *rest]
    n_batch = len(idx) - 1
    onnx_order = [("batch", i) for i in range(n_batch)] + [("slice", d) for d in rest]
    jax_order, batch = [None] * len(onnx_order), iter(range(n_batch))
    for pos, d in zip(dn.offset_dims, rest):
        jax_order[pos] = ("slice", d)
    jax_order = [label or ("batch", next(batch)) for label in jax_order]
    return _transpose(g, y, [onnx_order.index(label) for label in jax_order])


def _scatter(reduction: str) -> Callable:
    """lax.scatter(-add) -> ScatterND with the full operand index of every element of ``updates``: per operand
    dimension, its scattered start (0 where none is given) plus the position along its update window dimension."""

    def rule(g, eqn, ins):
        dn = eqn.params["dimension_numbers"]
        if dn.operand_batching_dims:
            raise UnsupportedPrimitive(f"{eqn.primitive.name} with batching dimensions")
        rank, upd = len(_in(eqn, 0).shape), list(_in(eqn, 2).shape)
        window = list(dn.update_window_dims)
        batch_ranked = [1 if u in window else upd[u] for u in range(len(upd))] + [1]  # an index row per batch position
        index = g.op("Cast", [ins[1]], to=TensorProto.INT64)
        window_dim = dict(zip([d for d in range(rank) if d not in dn.inserted_window_dims], window))
        cols = []
        for d in range(rank):
            col = g.int64(0)
            if d in dn.scatter_dims_to_operand_dims:
                j = list(dn.scatter_dims_to_operand_dims).index(d)
                start = g.op("Slice", [index, g.int64([j]), g.int64([j + 1]), g.int64([-1])])  # [*batch, 1]
                col = g.op("Reshape", [start, g.int64(batch_ranked)])
            if d in window_dim:
                col = g.op("Add", [col, arange_along(g, [*upd, 1], window_dim[d])])
            cols.append(g.op("Expand", [col, g.int64([*upd, 1])]))
        return g.op("ScatterND", [ins[0], g.op("Concat", cols, axis=-1), ins[2]], reduction=reduction)

    return rule


def _identity(g, eqn, ins):
    return list(ins)


RULES: dict[str, Callable] = {
    **{
        p: _elementwise(o)
        for p, o in {
            "neg": "Neg",
            "exp": "Exp",
            "log": "Log",
            "tanh": "Tanh",
            "logistic": "Sigmoid",
            "sqrt": "Sqrt",
            "abs": "Abs",
            "sin": "Sin",
            "cos": "Cos",
            "tan": "Tan",
            "erf": "Erf",
            "floor": "Floor",
            "ceil": "Ceil",
            "sign": "Sign",
            "add": "Add",
            "sub": "Sub",
            "mul": "Mul",
            "div": "Div",
            "max": "Max",
            "min": "Min",
            "pow": "Pow",
            "eq": "Equal",
            "lt": "Less",
            "le": "LessOrEqual",
            "gt": "Greater",
            "ge": "GreaterOrEqual",
        }.items()
    },
    "rem": _elementwise("Mod", fmod=1),  # fmod=1: the sign of the dividend, as lax.rem
    "ne": lambda g, eqn, ins: g.op("Not", [_elementwise("Equal")(g, eqn, ins)]),
    "and": _logical("And", "BitwiseAnd"),
    "or": _logical("Or", "BitwiseOr"),
    "xor": _logical("Xor", "BitwiseXor"),
    "not": _logical("Not", "BitwiseNot"),
    "shift_right_logical": _shift("RIGHT"),
    "shift_left": _shift("LEFT"),
    "rsqrt": lambda g, eqn, ins: g.op("Reciprocal", [g.op("Sqrt", ins)]),
    "log1p": _log1p,
    "expm1": _expm1,
    "exp2": lambda g, eqn, ins: g.op("Pow", [_scalar_like(g, eqn, 2), ins[0]]),
    "square": lambda g, eqn, ins: g.op("Mul", [ins[0], ins[0]]),
    "integer_pow": _integer_pow,
    "round": _round,
    "clamp": lambda g, eqn, ins: g.op("Min", [g.op("Max", [ins[1], ins[0]]), ins[2]]),
    "select_n": _select_n,
    "convert_element_type": _convert,
    "stop_gradient": _identity,
    "copy": _identity,
    "optimization_barrier": _identity,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _to_out_shape,
    "squeeze": _to_out_shape,
    "transpose": lambda g, eqn, ins: _transpose(g, ins[0], list(eqn.params["permutation"])),
    "concatenate": lambda g, eqn, ins: g.op("Concat", ins, axis=eqn.params["dimension"]),
    "stack": _stack,
    "iota": _iota,
    "slice": _slice,
    "rev": _rev,
    "pad": _pad,
    "split": _split,
    "reduce_sum": _reduce("ReduceSum"),
    "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"),
    "reduce_prod": _reduce("ReduceProd"),
    "argmax": _arg("ArgMax"),
    "argmin": _arg("ArgMin"),
    "cumsum": _cumsum,
    "top_k": _top_k,
    "dot_general": _dot_general,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "gather": _gather,
    "scatter": _scatter("none"),
    "scatter-add": _scatter("add"),
}
