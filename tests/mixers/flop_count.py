"""An independent FLOP count: walk a function's jaxpr and add up what each primitive computes.

dot_general: 2 x output size x contracted size; elementwise arithmetic and transcendental ops: 1
per output element; reductions: 1 per input element; data movement (reshape, slice, transpose,
broadcast, convert, gather, ...) is free. Scans multiply their body by their length, and
nested jaxprs (pjit, custom_jvp/vjp, remat) are walked. Used to hold each mixer's closed-form
``flops_per_token`` to what its parallel path really runs (tests/mixers/test_contract.py).
"""

import math

import jax

FREE = {
    "reshape",
    "broadcast_in_dim",
    "transpose",
    "slice",
    "dynamic_slice",
    "dynamic_update_slice",
    "concatenate",
    "squeeze",
    "expand_dims",
    "convert_element_type",
    "gather",
    "scatter",
    "select_n",
    "iota",
    "pad",
    "rev",
    "copy",
    "copy_p",
    "stop_gradient",
    "split",
    "sort",
    "argmax",
    "argmin",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "clamp",
    "random_bits",
    "random_wrap",
    "random_unwrap",
    "random_seed",
    "shift_right_logical",
    "threefry2x32",
    "bitcast_convert_type",
    "sharding_constraint",
    "device_put",
}
REDUCE = {
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "cumsum",
    "cumprod",
    "cummax",
    "cumlogsumexp",
    "argsort",
}


def _size(aval) -> int:
    return math.prod(getattr(aval, "shape", ()))


def jaxpr_flops(jaxpr) -> float:
    """FLOPs of a (closed) jaxpr under the conventions above."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        inner = [v for k, v in eqn.params.items() if k in ("jaxpr", "call_jaxpr", "fun_jaxpr", "body_jaxpr")]
        if name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "while":
            raise ValueError("a while loop has no static trip count; count a variant without one")
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        elif inner:
            total += sum(jaxpr_flops(j) for j in inner if hasattr(j, "eqns") or hasattr(j, "jaxpr"))
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            contracted = math.prod(eqn.invars[0].aval.shape[d] for d in lhs_contract)
            total += 2 * _size(eqn.outvars[0].aval) * contracted
        elif name in REDUCE:
            total += _size(eqn.invars[0].aval)
        elif name not in FREE:
            total += _size(eqn.outvars[0].aval)
    return total


def count_flops(fn, *args) -> float:
    """FLOPs of ``fn(*args)`` as traced."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))
