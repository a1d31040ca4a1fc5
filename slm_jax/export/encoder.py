"""``slm export`` of an encoder or a classifier: one graph, no cache.

An encoder run (``model.causal: false``, docs/encoders.md) and any ``slm finetune --task classify``
output (encoder or decoder backbone; the CLI loads it and calls :func:`export_classifier`) read a
whole right-padded batch at once, so they export as one function ``fn(weights, tokens, lengths) -> logits``:

  tokens   i32[b, t]   t fixed (--max-len, default the run's train.seq_len), right-padded with 0
  lengths  i32[b]      valid tokens of each row, in [1, t]
  logits   f32[b, t, v]  masked-LM logits of an encoder run ("kind": "mlm")
           f32[b, c]     class logits of a sequence classifier ("sequence", modules/heads.py SequenceHead)
           f32[b, t, c]  per-token class logits of a token classifier ("token", TokenHead)

The batch is symbolic in the StableHLO export (``jax.export`` shape polymorphism: any b) and
fixed at --batch in the ONNX one (the jaxpr translator, onnx_graph.py, writes every shape as a
constant); runner.py ``EncoderArtifact`` pads a smaller group of rows up to it. Files: the graph
(``encoder.jax_export`` or ``encoder.onnx``), the weights (``weights.npz``, or ``weights.onnx.data``
as ONNX initializers), ``manifest.json`` and the tokenizer. Quantized (int8/int4) weights export
unchanged and are dequantized inside the graph, as in the decoder export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.models.lm import CausalLM
from slm_jax.modules.heads import SequenceHead, TokenHead, final_hidden
from slm_jax.tree_paths import path_str

GRAPH = {"stablehlo": "encoder.jax_export", "onnx": "encoder.onnx"}


def head_kind(head: nn.Module | None) -> str:
    """ "mlm" (no head: the tied vocabulary logits), "sequence" or "token"."""
    if head is None:
        return "mlm"
    return {SequenceHead: "sequence", TokenHead: "token"}[type(head)]


def encoder_fn(model: CausalLM, head: nn.Module | None, params_def) -> Callable:
    """The exported function over flat weights: (weights, tokens i32[b, t], lengths i32[b]) -> logits.

    With a head the params are ``{"backbone", "head"}`` (finetune/classify.py); without, the model's own.
    """

    def fn(weights: list, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        params = jax.tree.unflatten(params_def, weights)
        if head is None:
            return model.apply(params, tokens, lengths=lengths)[0]
        first = jnp.zeros((tokens.shape[0], 1), jnp.int32)  # the vocabulary head is not needed: one position
        _, hidden = final_hidden(model, params["backbone"], tokens, lengths, first)
        if isinstance(head, SequenceHead):
            return head.apply(params["head"], hidden, lengths)
        return head.apply(params["head"], hidden)

    return fn


def _graph(fn: Callable, weights: list, names: list[str], fmt: str, seq_len: int, batch: int) -> dict[str, bytes]:
    """{graph file: bytes} (and ``weights.onnx.data`` for onnx) of ``fn`` at ``seq_len`` tokens per row."""
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    if fmt == "onnx":
        from slm_jax.export.onnx_export import WEIGHTS_FILE, _weights_file, onnx_function

        data, spans = _weights_file(weights)
        args = (jax.ShapeDtypeStruct((batch, seq_len), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.int32))
        model = onnx_function(fn, args, weights, names, spans, ["tokens", "lengths"], ["logits"], "slm_jax_encoder")
        return {GRAPH[fmt]: model.SerializeToString(), WEIGHTS_FILE: data}
    (b,) = jax.export.symbolic_shape("b")
    args = (
        [spec(a) for a in weights],
        jax.ShapeDtypeStruct((b, seq_len), jnp.int32),
        jax.ShapeDtypeStruct((b,), jnp.int32),
    )
    return {GRAPH[fmt]: jax.export.export(jax.jit(fn), platforms=("cpu",))(*args).serialize()}


def write_encoder_export(
    out_dir: str | Path,
    model: CausalLM,
    params: PyTree,
    head: nn.Module | None,
    fmt: str,
    seq_len: int,
    batch: int = 1,
    info: dict | None = None,
) -> dict:
    """Export ``model`` (+ ``head``) with ``params`` to the new directory ``out_dir``; returns the manifest.

    ``info`` (run_dir, step, labels, pooling, tokenizer kind, ...) is stored in the manifest as is.
    """
    from slm_jax.export.stablehlo import _save_flat

    if seq_len <= 0 or batch <= 0:
        raise ConfigError(f"--max-len and --batch must be positive, got {seq_len} and {batch}.")
    out_dir = Path(out_dir)
    leaves, params_def = jax.tree_util.tree_flatten_with_path(params)
    weights, names = [w for _, w in leaves], [path_str(p) for p, _ in leaves]
    files = _graph(encoder_fn(model, head, params_def), weights, names, fmt, seq_len, batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    dtypes = (
        [np.asarray(w).dtype.name for w in weights] if fmt == "onnx" else _save_flat(out_dir / "weights.npz", weights)
    )
    m = model.cfg
    manifest = {
        "format": f"slm_jax.encoder.{fmt}/1",
        "kind": head_kind(head),
        "seq_len": seq_len,
        "batch": batch if fmt == "onnx" else None,  # None: any batch (symbolic in the StableHLO export)
        "layer_pattern": list(m.layers),
        "causal": m.causal,
        "vocab_size": m.vocab_size,
        "mask_id": None if m.causal else m.vocab_size,
        "quant_bits": m.quant.bits,
        **(info or {}),
        "weights": {"paths": names, "dtypes": dtypes},
        "jax_version": jax.__version__,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {k: v for k, v in manifest.items() if k != "weights"} | {"out_dir": str(out_dir)}


def is_encoder_run(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` is an encoder (``model.causal: false``), which exports as one graph."""
    from slm_jax.config import config_from_dict
    from slm_jax.rundir.checkpoint import read_run_config

    return not config_from_dict(read_run_config(run_dir)).model.causal


def export_encoder_run(
    run_dir: str | Path, out_dir: str | Path, fmt: str, max_len: int | None, batch: int, best: bool
) -> dict:
    """``slm export`` of an encoder run: its masked-LM logits (``max_len`` None: its train.seq_len); the manifest."""
    from slm_jax.inference.run import load_run

    run = load_run(run_dir, best=best)
    seq_len = run.cfg.train.seq_len if max_len is None else max_len
    info = {"run_dir": str(run_dir), "step": run.step}
    return _export(out_dir, run.model, run.params, None, run.tokenizer, fmt, seq_len, batch, info)


def export_classifier(
    clf, run_dir: str | Path, config_dir: str | Path, out_dir: str | Path, fmt: str, max_len: int | None, batch: int
) -> dict:
    """``slm export`` of a loaded classifier (finetune/classify.py ``Classifier``) from ``run_dir``; the manifest.

    ``max_len`` None: the train.seq_len of the run in ``config_dir`` (a LoRA classifier's base run).
    """
    from slm_jax.config import config_from_dict
    from slm_jax.rundir.checkpoint import read_run_config

    seq_len = config_from_dict(read_run_config(config_dir)).train.seq_len if max_len is None else max_len
    info = {"run_dir": str(run_dir), "labels": clf.labels, "pooling": clf.meta["pooling"]}
    return _export(out_dir, clf.model, clf.params, clf.head, clf.tokenizer, fmt, seq_len, batch, info)


def _export(out_dir, model, params, head, tokenizer, fmt: str, seq_len: int, batch: int, info: dict) -> dict:
    """Check the options, write the export and the tokenizer; the manifest."""
    from slm_jax.data.tokenizers import save_tokenizer

    out_dir = Path(out_dir)
    if fmt not in GRAPH:
        raise ConfigError(f"Export format {fmt!r} is not supported; use --format stablehlo or --format onnx.")
    if (out_dir / "manifest.json").exists():
        raise CheckpointError(f"{out_dir} already holds an export (manifest.json); pass a new output directory.")
    info["tokenizer"] = None if tokenizer is None else tokenizer.to_dict().get("type", "hf")
    manifest = write_encoder_export(out_dir, model, params, head, fmt, seq_len, batch, info)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir)
    return manifest
