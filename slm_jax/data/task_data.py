"""The trainer's view of a generated task (``data.task``): sources per split and eval length, and
label-compacted batches for the gather-before-head loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slm_jax.config import Config
from slm_jax.data.synthetic import Example, TaskSource, task_eval_batches, task_options
from slm_jax.errors import ConfigError, DataError


@dataclass(frozen=True)
class TaskData:
    """Attributes:
    train: the training examples, at ``train.seq_len``.
    evals: metric-name suffix -> validation source: ``""`` at ``train.seq_len``, ``"@L"`` at each
        other length L of ``data.task.eval_lengths`` (so ``val_accuracy@1024``).
    """

    train: TaskSource
    evals: dict[str, TaskSource]


def load_task(cfg: Config) -> TaskData:
    """The sources ``cfg.data.task`` describes; examples are drawn from ``train.seed``."""
    t, vocab, seq_len = cfg.data.task, cfg.model.vocab_size, cfg.train.seq_len
    if cfg.data.path or cfg.data.synthetic:
        raise ConfigError("data.task.name and data.path / data.synthetic are alternatives; set only one of them.")
    if vocab <= 0:
        raise ConfigError(
            "A generated task has no tokenizer to take the vocabulary from; "
            f"set model.vocab_size (e.g. 8192 for MQAR), got {vocab}."
        )
    options = {name: getattr(t, name) for name in task_options(t.name) if hasattr(t, name)}

    def source(split: str, n: int, length: int, min_len: int = 0) -> TaskSource:
        return TaskSource(t.name, cfg.train.seed, split, n, length, vocab, min_len, **options)

    evals = {"": source("val", t.val_examples, seq_len)}  # validation is always full length
    evals.update({f"@{n}": source("val", t.val_examples, n) for n in t.eval_lengths if n != seq_len})
    return TaskData(source("train", t.train_examples, seq_len, t.min_train_len), evals)


def n_labels(source: TaskSource) -> int:
    """Scored positions per example (a fixed number for every task in data/synthetic.py)."""
    return int((source[0]["targets"] >= 0).sum())


def compact_labels(batch: Example, n: int) -> dict[str, np.ndarray]:
    """``{"inputs", "targets"}`` -> ``{"inputs", "label_positions": i32[b, n], "labels": i32[b, n]}``.

    The scored positions of each row in increasing order; a row with fewer than ``n`` is padded
    with label -1 (not scored) at position 0. The model then computes logits at ``n`` positions
    per row instead of all ``t`` (for MQAR at vocab 8192 the output head dominates the step).
    """
    scored = batch["targets"] >= 0
    if int(scored.sum(axis=1).max()) > n:
        raise DataError(
            f"A task example has more than {n} scored positions; every example of a task must score the same number."
        )
    positions = np.argsort(~scored, axis=1, kind="stable")[:, :n]  # scored first, in position order
    labels = np.take_along_axis(batch["targets"], positions, axis=1)
    positions = np.where(labels >= 0, positions, 0)
    return {"inputs": batch["inputs"], "label_positions": positions.astype(np.int32), "labels": labels.astype(np.int32)}


def val_sets(task: TaskData, batch_size: int, n_batches: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Metric suffix -> the first ``n_batches`` label-compacted validation batches at that length."""
    return {
        suffix: [compact_labels(b, n_labels(source)) for b in task_eval_batches(source, batch_size, n_batches)]
        for suffix, source in task.evals.items()
    }


def head_fraction(cfg: Config) -> float:
    """Share of positions whose logits a training step computes: 1 for text, scored / seq_len for a task
    (what ``accounting.summary`` needs to count the output head's FLOPs)."""
    if not cfg.data.task.name:
        return 1.0
    return n_labels(load_task(cfg).train) / cfg.train.seq_len
