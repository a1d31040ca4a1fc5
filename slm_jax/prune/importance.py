"""Importance on calibration tokens: per-channel activation statistics (width) and per-layer scores (depth).

Width (Minitron, Muralidharan et al. 2024, Sec. 2.2): a channel's importance is the mean squared (or absolute)
activation it carries over the calibration tokens. One compiled forward pass per batch intercepts every ``Linear``
(its input: MLP hidden channels at ``mlp/down``, attention heads at ``mixer/o``, recurrent channels at
``mixer/out_proj``) and every ``RMSNorm`` / ``LayerNorm`` (its output: the embedding channels the blocks and the head
read).

Depth: a candidate (one layer, or one period of the layer pattern) scores either 1 - cos(input, output) of the
blocks it spans, averaged over tokens (Men et al. 2024, ShortGPT; Gromov et al. 2024), or the calibration loss of the
model with it skipped minus the full model's loss (Minitron's removal loss). Low scores are dropped first.

An encoder (``model.causal: false``) is calibrated the way it is trained: on MLM-masked windows (``mlm_batches``,
training/mlm.py's masks, seeded as its validation), read in both directions, and its loss is the masked-LM loss at
the masked positions, not a next-token loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import ModelConfig, TrainConfig
from slm_jax.models.block import Block
from slm_jax.models.lm import CausalLM
from slm_jax.modules.linear import Linear
from slm_jax.modules.norms import LayerNorm, RMSNorm
from slm_jax.training.mlm import mask_batch

_f32 = jnp.float32
Batch = np.ndarray | dict  # i32[b, t] tokens, or an encoder's masked batch {"inputs", "label_positions", "labels"}


def mlm_batches(batches: Sequence[np.ndarray], tc: TrainConfig, vocab_size: int) -> list[dict]:
    """i32[b, t] calibration rows (t = ``tc.seq_len``) -> an encoder's masked-LM batches, masked as training/mlm.py
    masks its training and validation windows under ``tc``."""
    return [mask_batch(rows, tc, vocab_size) for rows in batches]


def _inputs(batch: Batch) -> np.ndarray:
    """The model input i32[b, t] of a calibration batch."""
    return batch["inputs"] if isinstance(batch, dict) else batch


def _sums(a: Array) -> dict[str, Array]:
    a = a.reshape(-1, a.shape[-1]).astype(_f32)
    return {"abs": jnp.sum(jnp.abs(a), axis=0), "sq": jnp.sum(a * a, axis=0)}


def _batch_activations(model: CausalLM, params: PyTree, tokens: Array) -> dict[str, dict[str, Array]]:
    """{"path/of/module": {"abs", "sq"}: f32[c]} summed over the batch's tokens (Linear inputs, norm outputs)."""
    found: dict[str, dict[str, Array]] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, (Linear, RMSNorm, LayerNorm)):
            return next_fun(*args, **kwargs)
        key = "/".join(module.path)
        if isinstance(module, Linear) and key not in found:  # a Linear subclass calling super(): count once
            found[key] = _sums(args[0])
        out = next_fun(*args, **kwargs)
        if isinstance(module, (RMSNorm, LayerNorm)):
            found[key] = _sums(out)
        return out

    with nn.intercept_methods(record):
        model.apply(params, tokens)
    return found


def activation_stats(cfg: ModelConfig, params: PyTree, batches: Sequence[Batch], kind: str) -> dict[str, np.ndarray]:
    """{"module/path": f32[c]} mean squared (``kind="mean_sq"``) or mean absolute (``"mean_abs"``) activation per
    channel over the calibration ``batches``, for per-layer (unstacked) ``params`` of ``cfg`` (scan_layers off)."""
    model = CausalLM(cfg)
    step = jax.jit(lambda p, t: _batch_activations(model, p, t))
    field = {"mean_sq": "sq", "mean_abs": "abs"}[kind]
    totals: dict[str, np.ndarray] = {}
    count = 0
    for batch in batches:
        tokens = _inputs(batch)
        stats = jax.device_get(step(params, jnp.asarray(tokens, jnp.int32)))
        count += int(np.prod(np.shape(tokens)))
        for key, s in stats.items():
            totals[key] = totals.get(key, 0.0) + np.asarray(s[field], np.float64)
    return {key: v / count for key, v in totals.items()}


def _calibration_loss(model: CausalLM, params: PyTree, batch: Batch, skip: frozenset[str]) -> Array:
    """Mean cross-entropy of a calibration ``batch`` (next-token, or an encoder's masked-LM loss at its masked
    positions) with the blocks named in ``skip`` replaced by identity."""

    def bypass(next_fun, args, kwargs, context):
        if isinstance(context.module, Block) and context.method_name == "__call__" and context.module.name in skip:
            return args[0], None
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(bypass):
        if isinstance(batch, dict):
            logits, _ = model.apply(params, batch["inputs"], logit_positions=batch["label_positions"])
            labels = batch["labels"]
        else:
            logits, _ = model.apply(params, batch[:, :-1])
            labels = batch[:, 1:]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _block_io(model: CausalLM, params: PyTree, tokens: Array) -> dict[str, tuple[Array, Array]]:
    """{block name: (input, output)} f32[b, t, d] of every block in one forward pass."""
    found: dict[str, tuple[Array, Array]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Block) and context.method_name == "__call__":
            found[context.module.name] = (args[0].astype(_f32), out[0].astype(_f32))
        return out

    with nn.intercept_methods(record):
        model.apply(params, tokens)
    return found


def depth_scores(
    cfg: ModelConfig, params: PyTree, batches: Sequence[Batch], groups: Sequence[Sequence[int]], metric: str
) -> np.ndarray:
    """f64[len(groups)]: the importance of each group of consecutive layer indices (higher = keep).

    ``cosine``: 1 - mean cosine similarity between the first block's input and the last block's output.
    ``loss``: calibration loss with the group skipped minus the full model's loss (needs t >= 2).
    """
    model = CausalLM(cfg)
    names = [[f"layers_{i}" for i in g] for g in groups]
    if metric == "cosine":

        def batch_score(p, batch):
            tokens = _inputs(batch)
            io = _block_io(model, p, tokens)
            out = []
            for g in names:
                a, b = io[g[0]][0], io[g[-1]][1]
                cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-12)
                out.append(jnp.sum(1.0 - cos))
            return jnp.stack(out), tokens.size

    else:

        def batch_score(p, batch):
            base = _calibration_loss(model, p, batch, frozenset())
            drops = [_calibration_loss(model, p, batch, frozenset(g)) - base for g in names]
            return jnp.stack(drops) * _inputs(batch).shape[0], _inputs(batch).shape[0]

    step = jax.jit(batch_score)
    total, count = np.zeros(len(groups)), 0
    for batch in batches:
        score, n = step(params, jax.tree.map(lambda a: jnp.asarray(a, jnp.int32), batch))
        total, count = total + np.asarray(score, np.float64), count + int(n)
    return total / count
