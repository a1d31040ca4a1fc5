"""``slm finetune --task classify``: a sequence-classification head on any run, full or LoRA (docs/encoders.md).

Data: JSONL lines ``{"text": str, "label": str | int}`` (field names configurable). The label
names of the training file, sorted, become class ids 0..c-1. Each text is tokenized with the
run's tokenizer, right-padded with token 0 to the longest, and carries its length, so an
encoder masks the padding and the pooling (modules/heads.py) reads only valid tokens.

The step differentiates the cross-entropy of ``SequenceHead(final_hidden(backbone))`` with
respect to ``{"backbone": params or LoRA adapters, "head": head params}`` through the same
trainer pieces as prompt/completion fine-tuning (finetune/train.py). Output directory:

  full:  an ordinary run directory with the tuned backbone, plus the files below;
  LoRA:  ``adapter.safetensors`` + ``adapter.json`` (finetune/train.py), plus the files below;
  both:  ``head.safetensors`` (the head's kernel and bias), ``classify.json`` (label names,
         pooling, field names) and ``finetune.json`` (the summary).

``slm eval OUT --data val.jsonl`` reports accuracy and macro-F1; ``slm predict OUT --text``
the label and its probabilities.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.errors import DataError
from slm_jax.finetune import data as ft_data
from slm_jax.finetune import lora
from slm_jax.finetune import train as ft
from slm_jax.inference.run import load_run
from slm_jax.interop.safetensors_io import read_safetensors, write_safetensors
from slm_jax.modules.heads import SequenceHead, check_pooling, default_pooling, final_hidden
from slm_jax.rundir.files import new_run_dir
from slm_jax.training.loss import cross_entropy

META = "classify.json"
HEAD_FILE = "head.safetensors"


@dataclass(frozen=True)
class ClassifyOptions:
    """Field names of the JSONL lines, and the pooling ("" picks ``last`` for a decoder, ``mean`` for an encoder)."""

    text_field: str = "text"
    label_field: str = "label"
    pooling: str = ""


@dataclass(frozen=True)
class Example:
    text: str
    label: str | int
    line: int


def read_labelled(path: str | Path, text_field: str, label_field: str) -> list[Example]:
    """The examples of a labelled JSONL file, each line checked (errors name the file and line)."""
    path = Path(path)
    examples = []
    shape = f'{{"{text_field}": ..., "{label_field}": ...}}'
    for n, row in ft_data.jsonl_objects(path, "Classification data", shape):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str) or not row[text_field]:
            raise DataError(
                f'Line {n} of {path} has no non-empty string "{text_field}" field; '
                "give the text on every line, or name its field with --text-field."
            )
        label = row.get(label_field)
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(
                f'Line {n} of {path} has no string or integer "{label_field}" field; '
                "give a label on every line, or name its field with --label-field."
            )
        examples.append(Example(row[text_field], label, n))
    if not examples:
        raise DataError(f"{path} holds no examples; add labelled JSON lines.")
    return examples


def label_names(examples: list[Example], path: str | Path) -> list[str | int]:
    """The sorted distinct labels (class i is ``names[i]``); at least two, and all strings or all integers."""
    names = sorted({e.label for e in examples}, key=lambda x: (isinstance(x, str), x))
    if len({type(x) for x in names}) > 1:
        raise DataError(f"{path} mixes string and integer labels; write every label the same way.")
    if len(names) < 2:
        raise DataError(f"{path} has a single label {names[0]!r}; classification needs at least two.")
    return names


def encode(
    examples: list[Example], tokenizer: Any, names: list, path: str | Path, max_len: int = 0
) -> dict[str, np.ndarray]:
    """Examples -> {"inputs": i32[n, t] right-padded with 0, "lengths": i32[n], "labels": i32[n]}."""
    if tokenizer is None:
        raise DataError(
            "This run has no tokenizer (it was trained on a generated task), so text cannot be encoded; "
            "fine-tune a text run."
        )
    ids = {name: i for i, name in enumerate(names)}
    rows, labels = [], []
    for e in examples:
        if e.label not in ids:
            raise DataError(
                f"Line {e.line} of {path} has the label {e.label!r}, which the training data never uses; "
                f"use one of {names} or add it to the training file."
            )
        try:
            tokens = np.asarray(tokenizer.encode(e.text), np.int32)
        except DataError as err:
            raise DataError(f"Line {e.line} of {path} cannot be encoded with the run's tokenizer: {err}") from None
        if max_len and len(tokens) > max_len:
            raise DataError(
                f"Line {e.line} of {path} has {len(tokens)} tokens, more than --max-len {max_len}; "
                "shorten it or raise --max-len."
            )
        rows.append(tokens)
        labels.append(ids[e.label])
    return pad(rows) | {"labels": np.asarray(labels, np.int32)}


def pad(rows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Token rows -> {"inputs": i32[n, t] right-padded with 0, "lengths": i32[n]}."""
    lengths = np.asarray([len(r) for r in rows], np.int32)
    inputs = np.zeros((len(rows), int(lengths.max())), np.int32)
    for i, r in enumerate(rows):
        inputs[i, : len(r)] = r
    return {"inputs": inputs, "lengths": lengths}


def class_logits(model, head: SequenceHead, params: PyTree, batch: dict) -> jax.Array:
    """params {"backbone", "head"}, batch {"inputs", "lengths"} -> f32[b, c]."""
    first = jnp.zeros((batch["inputs"].shape[0], 1), jnp.int32)  # the vocabulary head is not needed: one position
    _, hidden = final_hidden(model, params["backbone"], batch["inputs"], batch["lengths"], first)
    return head.apply(params["head"], hidden, batch["lengths"])


def make_loss_fn(model, head: SequenceHead):
    """``loss_fn(params, batch) -> (loss, metrics)``: the mean cross-entropy over the batch's labels."""

    def loss_fn(params, batch):
        logits = class_logits(model, head, params, batch)
        return cross_entropy(logits[:, None], batch["labels"][:, None])

    return loss_fn


def probabilities(model, head: SequenceHead, params: PyTree, data: dict, batch_size: int = 64) -> np.ndarray:
    """Class probabilities f32[n, c] of every example in ``data``."""
    fn = jax.jit(lambda p, b: jax.nn.softmax(class_logits(model, head, p, b), axis=-1))
    out = [
        np.asarray(fn(params, {k: jnp.asarray(data[k][i : i + batch_size]) for k in ("inputs", "lengths")}))
        for i in range(0, len(data["inputs"]), batch_size)
    ]
    return np.concatenate(out)


def scores(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    """Accuracy and macro-F1: the mean F1 over the classes that occur in ``gold`` or ``pred``."""
    f1s = []
    for c in range(n_labels):
        tp = np.sum((pred == c) & (gold == c))
        support = np.sum(gold == c) + np.sum(pred == c)
        if support:
            f1s.append(2.0 * tp / support)
    return {"accuracy": float(np.mean(pred == gold)), "macro_f1": float(np.mean(f1s)), "examples": len(gold)}


def finetune_classify(
    run_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    options: ft.FinetuneOptions,
    task: ClassifyOptions,
    eval_data: str | Path | None = None,
    log=print,
) -> dict:
    """Train a classification head (and the backbone or its LoRA adapters) into the new ``out_dir``; the summary."""
    out_dir = Path(out_dir)
    return ft.in_new_out_dir(
        out_dir, lambda: _finetune_classify_locked(run_dir, data_path, out_dir, options, task, eval_data, log)
    )


def _finetune_classify_locked(run_dir, data_path, out_dir: Path, options, task: ClassifyOptions, eval_data, log):
    """The body of :func:`finetune_classify`, run while holding the lock of ``out_dir``."""
    run = ft.load_base(run_dir, options.best)
    pooling = task.pooling or default_pooling(run.cfg.model.causal)
    check_pooling(pooling, run.cfg.model.causal)
    examples = read_labelled(data_path, task.text_field, task.label_field)
    names = label_names(examples, data_path)
    train_set = encode(examples, run.tokenizer, names, data_path, options.max_len)
    eval_set = None
    if eval_data:
        eval_set = encode(read_labelled(eval_data, task.text_field, task.label_field), run.tokenizer, names, eval_data)

    head = SequenceHead(len(names), pooling)
    d = run.cfg.model.d_model
    head_params = head.init(jax.random.key(options.seed + 2), jnp.zeros((1, 1, d)), jnp.ones((1,), jnp.int32))
    paths, backbone, combine_backbone = ft.trainable_part(run, options.lora, options.seed)
    trainable = {"backbone": backbone, "head": head_params}

    def combine(base, t, key):
        return {"backbone": combine_backbone(base, t["backbone"], key), "head": t["head"]}

    optimizer = ft.finetune_optimizer(run, options, trainable)
    step_fn = jax.jit(ft.make_step(run.model, optimizer, combine, make_loss_fn(run.model, head)), donate_argnums=0)
    state = {"params": trainable, "opt_state": optimizer.init(trainable)}
    n_trainable, n_base = lora.count_params(trainable), lora.count_params(run.params)
    summary = {
        "base_run": str(Path(run_dir).absolute()),
        "base_step": run.step,
        "task": "classify",
        "method": "lora" if options.lora else "full",
        "pooling": pooling,
        "labels": names,
        "trainable_params": n_trainable,
        "base_params": n_base,
        "trainable_fraction": n_trainable / n_base,
        "train_examples": len(train_set["inputs"]),
        "steps": options.steps,
    }
    if options.lora is not None:
        summary["lora"] = {**dataclasses.asdict(options.lora), "target_paths": paths}
    batches = ft_data.batches(train_set, options.batch_size, options.seed)
    state, metrics, summary["train_seconds"] = ft.run_steps(
        step_fn, state, run.params, batches, options, log, "classification"
    )
    summary["final_loss"] = float(metrics["loss"])
    tuned = combine(run.params, state["params"], None)
    if eval_set is not None:
        pred = probabilities(run.model, head, tuned, eval_set).argmax(-1)
        summary["eval"] = scores(pred, eval_set["labels"], len(names))

    with new_run_dir(out_dir) as tmp:
        if options.lora is not None:
            ft.save_adapters(tmp, state["params"]["backbone"], options.lora, summary)
        else:
            ft.write_run_dir(tmp, run.cfg, tuned["backbone"], run.step, Path(run_dir))
        meta = {"labels": names, "pooling": pooling, "text_field": task.text_field, "label_field": task.label_field}
        save_head(tmp, tuned["head"], meta)
        (tmp / "finetune.json").write_text(json.dumps(summary, indent=1))
    return {"out_dir": str(out_dir), **summary}


def save_head(out_dir: Path, head_params: PyTree, meta: dict) -> None:
    """``head.safetensors`` (float32 kernel [d, c] and bias [c]) and ``classify.json``."""
    out = head_params["params"]["out"]
    tensors = {f"out/{k}": np.asarray(v, np.float32) for k, v in out.items()}
    write_safetensors(out_dir / HEAD_FILE, tensors, {"format": "slm_jax-classify-head"})
    (out_dir / META).write_text(json.dumps(meta, indent=1))


def is_classifier(path: str | Path) -> bool:
    """Whether ``path`` is the output of ``slm finetune --task classify``."""
    return (Path(path) / META).is_file()


@dataclass(frozen=True)
class Classifier:
    """A loaded classifier: backbone model, head, params {"backbone", "head"}, tokenizer, label names, meta."""

    model: Any
    head: SequenceHead
    params: PyTree
    tokenizer: Any
    labels: list
    meta: dict


def load_classifier(out_dir: str | Path) -> Classifier:
    """The classifier in ``out_dir`` (full: its own run directory; LoRA: the base run with the adapters merged)."""
    out_dir = Path(out_dir)
    if not is_classifier(out_dir):
        raise DataError(f"{out_dir} has no {META}; pass the --out directory of `slm finetune --task classify`.")
    meta = json.loads((out_dir / META).read_text())
    if (out_dir / ft.ADAPTER_META).is_file():
        adapters, spec, adapter_meta = ft.load_adapters(out_dir)
        run = load_run(adapter_meta["base_run"], step=adapter_meta["base_step"])
        backbone = lora.merge(run.params, adapters, spec)
    else:
        run = load_run(out_dir)
        backbone = run.params
    tensors = read_safetensors(out_dir / HEAD_FILE)
    head_params = {"params": {"out": {k.split("/", 1)[1]: jnp.asarray(v) for k, v in tensors.items()}}}
    head = SequenceHead(len(meta["labels"]), meta["pooling"])
    return Classifier(run.model, head, {"backbone": backbone, "head": head_params}, run.tokenizer, meta["labels"], meta)


def evaluate_file(out_dir: str | Path, data_path: str | Path) -> dict:
    """Accuracy and macro-F1 of the classifier in ``out_dir`` on a labelled JSONL file."""
    clf = load_classifier(out_dir)
    examples = read_labelled(data_path, clf.meta["text_field"], clf.meta["label_field"])
    data = encode(examples, clf.tokenizer, clf.labels, data_path)
    pred = probabilities(clf.model, clf.head, clf.params, data).argmax(-1)
    return {"out_dir": str(out_dir), "task": "classify", **scores(pred, data["labels"], len(clf.labels))}


def predict_text(out_dir: str | Path, text: str) -> dict:
    """{"label": the most probable label, "probabilities": {label: p}} for one text."""
    if not text:
        raise DataError("--text is empty; give the text to classify.")
    clf = load_classifier(out_dir)
    if clf.tokenizer is None:
        raise DataError(f"{out_dir} has no tokenizer to read --text; classify with a run trained on text.")
    data = pad([np.asarray(clf.tokenizer.encode(text), np.int32)])
    probs = probabilities(clf.model, clf.head, clf.params, data)[0]
    return {
        "label": clf.labels[int(probs.argmax())],
        "probabilities": {str(name): float(p) for name, p in zip(clf.labels, probs)},
    }
