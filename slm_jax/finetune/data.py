"""Prompt/completion JSONL for fine-tuning, tokenized with a run's tokenizer.

Each line is ``{"prompt": str, "completion": str}``. An example becomes the tokens
``prompt + completion``; the model reads all but the last and is scored only where the next
token belongs to the completion (the task-batch form of training/step.py: target -1 where a
position is not scored). Examples are right-padded to the longest one with token 0 and
target -1; causal attention and recurrences never let a padded position affect an earlier one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from slm_jax.errors import DataError


def jsonl_objects(path: str | Path, kind: str, shape: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a JSONL file; ``kind`` and ``shape`` ("{...}") name it in
    the one-sentence errors for a missing file and a line that is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{kind} {str(path)!r} does not exist; pass a JSONL file of {shape} lines.")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"Line {n} of {path} is not valid JSON; write one {shape} object per line.") from None


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """The examples of a prompt/completion JSONL file, checked line by line."""
    path = Path(path)
    examples = []
    for n, row in jsonl_objects(path, "Fine-tuning data", '{"prompt": ..., "completion": ...}'):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not isinstance(row.get("completion"), str)
        ):
            raise DataError(
                f'Line {n} of {path} lacks a string "prompt" or "completion" field; give both on every line.'
            )
        if not row["prompt"] or not row["completion"]:
            raise DataError(f"Line {n} of {path} has an empty prompt or completion; every example needs text in both.")
        examples.append({"prompt": row["prompt"], "completion": row["completion"]})
    if not examples:
        raise DataError(f'{path} holds no examples; add {{"prompt": ..., "completion": ...}} lines.')
    return examples


def encode_examples(examples: list[dict[str, str]], tokenizer: Any, max_len: int = 0) -> dict[str, np.ndarray]:
    """Examples -> {"inputs": i32[n, t], "targets": i32[n, t]} with target -1 outside completions.

    ``t`` is the longest example's token count minus one; ``max_len`` > 0 refuses longer ones.
    """
    if tokenizer is None:
        raise DataError(
            "This run has no tokenizer (it was trained on a generated task), so text cannot be encoded; "
            "fine-tune a text run."
        )
    rows = []
    for i, ex in enumerate(examples):
        try:
            prompt, completion = tokenizer.encode(ex["prompt"]), tokenizer.encode(ex["completion"])
        except DataError as e:
            raise DataError(f"Example {i + 1} cannot be encoded with the run's tokenizer: {e}") from None
        rows.append((np.asarray(prompt, np.int32), np.asarray(completion, np.int32)))
    t = max(len(p) + len(c) for p, c in rows) - 1
    if max_len and t > max_len:
        raise DataError(
            f"The longest example has {t + 1} tokens, more than --max-len {max_len}; shorten it or raise --max-len."
        )
    inputs = np.zeros((len(rows), t), np.int32)
    targets = np.full((len(rows), t), -1, np.int32)
    for i, (p, c) in enumerate(rows):
        ids = np.concatenate([p, c])
        inputs[i, : len(ids) - 1] = ids[:-1]
        # Position j predicts ids[j + 1]; the completion starts at ids[len(p)], predicted from j = len(p) - 1.
        targets[i, len(p) - 1 : len(ids) - 1] = c
    return {"inputs": inputs, "targets": targets}


def batches(data: dict[str, np.ndarray], batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches of ``batch_size`` examples (reshuffled every epoch; the last partial batch wraps)."""
    n = len(data["inputs"])
    rng = np.random.default_rng(seed)
    order = np.empty(0, np.int64)
    while True:
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        take, order = order[:batch_size], order[batch_size:]
        yield {k: v[take] for k, v in data.items()}
