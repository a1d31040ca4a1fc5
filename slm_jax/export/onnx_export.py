"""``slm export --format onnx``: the prefill and decode steps as two ONNX models, from their jaxprs.

The same step function as the StableHLO export (``stablehlo.make_step``), traced with
``jax.make_jaxpr`` at the two fixed shapes and translated by ``onnx_graph`` (opset 18). Not
jax2onnx (measured in benchmarks/jax2onnx_eval.py, docs/deploy.md): it pins an orbax-checkpoint
older than slm_jax's, fails on rwkv7's prefill and on layers under ``nn.scan``, and exports 5-200x slower.
Exporting needs only the ``onnx`` package; running, only ``onnxruntime`` and numpy.

Graph signature of both models (names are the flat parameter and cache paths):

  weights: initializers named by parameter path ("params/embed/embedding", ...) in ONNX's standard
           external-data format: raw little-endian bytes in ``WEIGHTS_FILE`` next to the graphs, one file
           that both graphs point into (location, offset, length), so ``onnxruntime.InferenceSession("decode.onnx")``
           and other ONNX tools open either graph alone. As constants rather than graph inputs, onnxruntime
           folds what depends on them alone (int8 and int4 dequantization, transposes) once at load and
           pre-packs MatMul weights.
  inputs:  "tokens" i32[1, t], "start" i32[] (position of tokens[:, 0])
           the cache in cache.npz order, named "cache/<path>"
  outputs: "logits" f32[1, v] at the last token, then the new cache, named "new_cache/<path>"
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from slm_jax.errors import ConfigError

WEIGHTS_FILE = "weights.onnx.data"  # the external data of both graphs' initializers
ALIGN = 64  # bytes: every tensor's offset in WEIGHTS_FILE is a multiple of it (cache lines, SIMD loads)


def _dtypes(jaxpr) -> set:
    """Every dtype a jaxpr (and the jaxprs inside it) computes with."""
    found = {v.aval.dtype for v in jaxpr.invars} | {v.aval.dtype for e in jaxpr.eqns for v in e.outvars}
    for sub in core.subjaxprs(jaxpr):
        found |= _dtypes(sub)
    return found


def _weights_file(weights: list) -> tuple[bytes, list[tuple[int, int]]]:
    """The contents of ``WEIGHTS_FILE`` (every weight's raw little-endian bytes, ``ALIGN``-aligned, zero padding
    between) and each weight's (offset, length) in it."""
    chunks, spans, end = [], [], 0
    for w in weights:
        data = np.ascontiguousarray(w, dtype=np.dtype(w.dtype).newbyteorder("<")).tobytes()
        pad = -end % ALIGN
        chunks += [bytes(pad), data]
        spans.append((end + pad, len(data)))
        end += pad + len(data)
    return b"".join(chunks), spans


def _weights_to_initializers(model, weights: list, names: list[str], spans: list[tuple[int, int]]) -> None:
    """Turn the first ``len(names)`` graph inputs into initializers whose data is at ``spans`` of ``WEIGHTS_FILE``."""
    from onnx import TensorProto
    from onnx.helper import np_dtype_to_tensor_dtype

    graph = model.graph
    kept = list(graph.input[len(names) :])
    del graph.input[:]
    graph.input.extend(kept)
    for name, w, (offset, length) in zip(names, weights, spans):
        t = TensorProto(name=name, data_type=np_dtype_to_tensor_dtype(np.dtype(w.dtype)), dims=list(w.shape))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", length)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        graph.initializer.append(t)


def _onnx_modules():
    """(onnx, jaxpr_to_onnx, UnsupportedPrimitive), or the one sentence naming the missing extra."""
    try:
        import onnx

        from slm_jax.export.onnx_graph import jaxpr_to_onnx
        from slm_jax.export.onnx_ops import UnsupportedPrimitive
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs the onnx package ({e}); "
            "install it with `pip install -e '.[onnx]'`, or use --format stablehlo."
        ) from None
    return onnx, jaxpr_to_onnx, UnsupportedPrimitive


def onnx_function(
    fn: Callable,
    args: tuple,
    weights: list,
    weight_names: list[str],
    spans: list[tuple[int, int]],
    inputs: list[str],
    outputs: list[str],
    name: str,
):
    """The checked ONNX model of ``fn(weights, *args)`` (``args``: ShapeDtypeStructs), whose weights are initializers
    at ``spans`` of ``WEIGHTS_FILE`` and whose other inputs and outputs are named ``inputs`` and ``outputs``."""
    onnx, jaxpr_to_onnx, UnsupportedPrimitive = _onnx_modules()
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    closed = jax.make_jaxpr(fn)([spec(a) for a in weights], *args)
    other = sorted(str(d) for d in _dtypes(closed.jaxpr) if jnp.issubdtype(d, jnp.floating) and d != jnp.float32)
    if other:
        raise ConfigError(
            f"ONNX export supports float32 models only, and this run computes or stores {other[0]} "
            "(model.dtype / model.param_dtype); export it with --format stablehlo."
        )
    try:
        model = jaxpr_to_onnx(closed, [*weight_names, *inputs], outputs, name=name)
    except UnsupportedPrimitive as e:
        raise ConfigError(
            f"ONNX export cannot translate the JAX operation {e} that this model uses; "
            "export it with --format stablehlo."
        ) from None
    onnx.checker.check_model(model)  # before the weights become external data the checker would look for
    _weights_to_initializers(model, weights, weight_names, spans)
    return model


def onnx_steps(
    step: Callable, weights: list, cache: list, prefill_chunk: int, weight_names: list[str], cache_names: list[str]
) -> dict[str, bytes]:
    """{"prefill.onnx", "decode.onnx": checked ONNX models of ``step`` at ``prefill_chunk`` and 1 tokens,
    ``WEIGHTS_FILE``: their initializers' data}, each file's bytes."""
    _onnx_modules()  # a missing extra fails before the weights are copied
    inputs = ["tokens", "start", *(f"cache/{n}" for n in cache_names)]
    outputs = ["logits", *(f"new_cache/{n}" for n in cache_names)]
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    data, spans = _weights_file(weights)
    files = {WEIGHTS_FILE: data}
    for name, t in (("prefill", prefill_chunk), ("decode", 1)):
        args = (jax.ShapeDtypeStruct((1, t), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32), [spec(a) for a in cache])
        model = onnx_function(step, args, weights, weight_names, spans, inputs, outputs, f"slm_jax_{name}")
        files[f"{name}.onnx"] = model.SerializeToString()
    return files
