"""A jaxpr as an ONNX graph: the walk over equations, calls, ``lax.scan`` and the model proto.

``jaxpr_to_onnx(closed_jaxpr, input_names, output_names)`` writes one ONNX model (opset 18,
https://onnx.ai/onnx/operators/) whose inputs and outputs are the jaxpr's, in order, under the
given names. Every shape in the jaxpr is static, so shapes and indices become constants.
Primitives map one by one through ``onnx_ops.RULES``, or ``onnx_complex`` where an equation reads or writes
complex values (each is a real graph value with a trailing (real, imaginary) axis of 2, as ONNX's ``DFT`` takes
them; FFTs become ``DFT`` nodes). Here are the primitives that hold a jaxpr:

  jit, custom_jvp_call, custom_vjp_call, remat, closed_call   inlined (the primal computation)
  scan                                                        an ONNX ``Scan`` node whose body is the
                                                              scan's jaxpr; its constants are read
                                                              from the outer graph by name

So Flax ``nn.scan`` over layers and ``lax.scan`` over time stay loops (the graph does not grow
with depth or chunk length). Anything else raises ``UnsupportedPrimitive``.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from jax.extend import core
from onnx import helper, numpy_helper

from slm_jax.export.onnx_complex import PAIR, as_pair, complex_rule, is_complex, part_dtype, touches_complex
from slm_jax.export.onnx_ops import RULES, UnsupportedPrimitive, onnx_dtype

OPSET = 18
IR_VERSION = 8  # the IR version that came with opset 18 (onnx 1.13): readable by older runtimes
_INLINED = ("jit", "pjit", "custom_jvp_call", "custom_vjp_call", "remat2", "checkpoint", "closed_call", "core_call")


def value_info(name: str, aval) -> onnx.ValueInfoProto:
    """A typed graph input or output; ``aval`` is anything with ``dtype`` and ``shape`` (complex: [*shape, 2])."""
    if is_complex(aval):
        return helper.make_tensor_value_info(name, onnx_dtype(part_dtype(aval.dtype)), [*aval.shape, PAIR])
    return helper.make_tensor_value_info(name, onnx_dtype(aval.dtype), list(aval.shape))


class Graph:
    """The nodes of one ONNX graph (the model's or a loop body); names are unique across all graphs."""

    def __init__(self, names: itertools.count):
        self.names = names
        self.nodes: list[onnx.NodeProto] = []
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str = "v") -> str:
        return f"{hint}_{next(self.names)}"

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        """Append a node with one output; returns the output's name."""
        return self.op_n(op_type, inputs, 1, **attrs)[0]

    def op_n(self, op_type: str, inputs: list[str], n_out: int, **attrs) -> list[str]:
        """Append a node with ``n_out`` outputs; returns their names."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

    def const(self, value, dtype=None) -> str:
        """A Constant node holding ``value`` (complex: its [..., 2] real form), one per distinct value and graph."""
        a = np.array(value, dtype, order="C")  # (np.ascontiguousarray would make a scalar 1-D)
        if np.iscomplexobj(a):
            a = as_pair(a)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._consts:
            self._consts[key] = self.fresh("const")
            self.nodes.append(
                helper.make_node(
                    "Constant", [], [self._consts[key]], value=numpy_helper.from_array(a, self._consts[key])
                )
            )
        return self._consts[key]

    def int64(self, values) -> str:
        return self.const(np.asarray(values, np.int64))


def emit_jaxpr(g: Graph, jaxpr, args: list[str]) -> list[str]:
    """Append the equations of ``jaxpr`` (Jaxpr or ClosedJaxpr) applied to value names ``args``; returns its outputs."""
    if isinstance(jaxpr, core.ClosedJaxpr):
        consts = [g.const(np.asarray(c)) for c in jaxpr.consts]
        jaxpr = jaxpr.jaxpr
    else:
        consts = []
    env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))

    def read(a) -> str:
        return g.const(a.val, a.aval.dtype) if isinstance(a, core.Literal) else env[a]

    for eqn in jaxpr.eqns:
        outs = emit_eqn(g, eqn, [read(a) for a in eqn.invars])
        env.update((v, n) for v, n in zip(eqn.outvars, outs) if not isinstance(v, core.DropVar))
    return [read(a) for a in jaxpr.outvars]


def emit_eqn(g: Graph, eqn, ins: list[str]) -> list[str]:
    name = eqn.primitive.name
    if name in _INLINED:
        sub = next(eqn.params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in eqn.params)
        return emit_jaxpr(g, sub, ins)
    if name == "scan":
        return _scan(g, eqn, ins)
    if touches_complex(eqn):
        rule = complex_rule(eqn)
    elif name in RULES:
        rule = RULES[name]
    else:
        raise UnsupportedPrimitive(name)
    outs = rule(g, eqn, ins)
    return outs if isinstance(outs, list) else [outs]


def _scan(g: Graph, eqn, ins: list[str]) -> list[str]:
    """``lax.scan`` -> ONNX ``Scan``: carries are its state, xs its scan inputs, ys its scan outputs."""
    p = eqn.params
    body_jaxpr, n_consts, n_carry = p["jaxpr"], p["num_consts"], p["num_carry"]
    consts, init, xs = ins[:n_consts], ins[n_consts : n_consts + n_carry], ins[n_consts + n_carry :]
    body = Graph(g.names)
    in_avals = [v.aval for v in body_jaxpr.jaxpr.invars[n_consts:]]  # carries, then one slice of each xs
    body_in = [body.fresh("scan_in") for _ in in_avals]
    outs = [body.op("Identity", [o]) for o in emit_jaxpr(body, body_jaxpr, consts + body_in)]
    if not xs:  # ONNX Scan counts its iterations from a scan input: give it one to ignore
        xs = [g.op("Range", [g.int64(0), g.int64(p["length"]), g.int64(1)])]
        body_in.append(body.fresh("scan_unused"))
        in_avals.append(np.zeros((), np.int64))
    graph = helper.make_graph(
        body.nodes,
        g.fresh("scan_body"),
        [value_info(n, a) for n, a in zip(body_in, in_avals)],
        [value_info(n, v.aval) for n, v in zip(outs, body_jaxpr.jaxpr.outvars)],
    )
    direction, n_ys = int(p["reverse"]), len(outs) - n_carry
    directions = {"scan_output_directions": [direction] * n_ys} if n_ys else {}  # (onnx cannot type an empty list)
    return g.op_n(
        "Scan",
        init + xs,
        len(outs),
        body=graph,
        num_scan_inputs=len(xs),
        scan_input_directions=[direction] * len(xs),
        **directions,
    )


def _rename(nodes, old: str, new: str) -> None:
    """Rename value ``old`` to ``new`` in ``nodes`` and in the loop bodies inside them (which read outer values)."""
    for node in nodes:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename(attr.g.node, old, new)


def jaxpr_to_onnx(closed, input_names: list[str], output_names: list[str], name: str = "slm_jax") -> onnx.ModelProto:
    """An ONNX model computing ``closed`` (a ClosedJaxpr over flat arrays); raises UnsupportedPrimitive."""
    g = Graph(itertools.count())
    outs = emit_jaxpr(g, closed, list(input_names))
    produced, renamed = {o for node in g.nodes for o in node.output}, {}
    for out, final in zip(outs, output_names):
        if out in produced and out not in renamed:  # name the value itself: an Identity would copy it (a whole cache)
            _rename(g.nodes, out, final)
            renamed[out] = final
        else:  # a graph input or an output repeated
            g.nodes.append(helper.make_node("Identity", [renamed.get(out, out)], [final]))
    graph = helper.make_graph(
        g.nodes,
        name,
        [value_info(n, v.aval) for n, v in zip(input_names, closed.jaxpr.invars)],
        [value_info(n, v.aval) for n, v in zip(output_names, closed.jaxpr.outvars)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="slm_jax")
    model.ir_version = IR_VERSION
    return model
