"""Generated sequence tasks for comparing architectures on recall and copying, and grain pipelines for them.

Every example is ``{"inputs": i32[t], "targets": i32[t]}``: ``targets[i]`` is the token the
model must predict after reading ``inputs[: i + 1]``, and ``-1`` where position ``i`` is not
scored. An example is a pure function of ``(seed, split, index)``: it is drawn from
``np.random.default_rng([seed, split_id, index])``, so the same call always returns the same
arrays and the train and val splits come from disjoint random streams.

Tasks (token 0 is filler / noise in all of them):

- ``mqar``: Multi-Query Associative Recall, Zoology (Arora et al. 2023, https://arxiv.org/abs/2312.04927).
- ``selective_copying``: Mamba (Gu & Dao 2023, https://arxiv.org/abs/2312.00752), Sec. 4.1.1.
- ``induction_heads``: Mamba, Sec. 4.1.2; the same generator at a larger ``seq_len`` gives the
  length-extrapolation test sets.
"""

from __future__ import annotations

import inspect
from typing import Callable

import grain
import numpy as np

from slm_jax.data.pipeline import READ_OPTIONS  # the same measured no-prefetch setting as text batches
from slm_jax.errors import ConfigError, DataError

SPLITS = {"train": 0, "val": 1}
Example = dict[str, np.ndarray]


def _example(inputs: np.ndarray, targets: np.ndarray) -> Example:
    return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32)}


def mqar(
    rng: np.random.Generator,
    seq_len: int,
    vocab_size: int,
    n_pairs: int,
    alpha: float = 0.01,
    random_filler: bool = False,
) -> Example:
    """Multi-Query Associative Recall (Zoology, Sec. 3 and App. E).

    Layout, with ``D = n_pairs``: positions ``[0, 2D)`` hold the pairs ``k1 v1 k2 v2 ... kD vD``,
    distinct keys from ``[1, vocab_size // 2)`` and distinct values from ``[vocab_size // 2, vocab_size)``.
    The rest is cut into ``(seq_len - 2D) // 2`` two-token slots; each key is queried once, in its
    own slot ``s`` (0-based), as ``key value`` at positions ``p = 2D + 2s`` and ``p + 1``. Slots are
    drawn without replacement with weights ``(s + 1) ** (alpha - 1)``, Zoology's power law on the
    gap from the context, so most queries come soon after it. The only scored positions are the
    query keys: ``targets[p] = value``. Unused positions are 0, or with ``random_filler`` random
    tokens from the whole vocabulary except this example's keys, so every key occurs exactly
    twice (in its pair and in its query) and the answer at ``p`` is never ambiguous.

    Zoology's generator leaves ``p + 1`` as filler; writing the value there shows the model the
    answer only after it was scored, so it changes nothing causally.

    Returns:
        ``{"inputs": i32[t], "targets": i32[t]}`` with exactly ``n_pairs`` scored positions.
    """
    if n_pairs < 1:
        raise ConfigError(f"MQAR needs at least one key-value pair, got n_pairs={n_pairs}; set data.task.n_pairs >= 1.")
    if seq_len < 4 * n_pairs:
        raise ConfigError(
            f"MQAR with {n_pairs} pairs needs seq_len >= 4 * n_pairs = {4 * n_pairs} "
            f"(pairs plus one two-token query each), got {seq_len}; raise train.seq_len or lower data.task.n_pairs."
        )
    if vocab_size < 2 * n_pairs + 2:
        raise ConfigError(
            f"MQAR with {n_pairs} distinct keys in [1, vocab_size // 2) "
            f"needs vocab_size >= 2 * n_pairs + 2 = {2 * n_pairs + 2}, "
            f"got {vocab_size}; raise model.vocab_size or lower data.task.n_pairs."
        )
    if not alpha > 0:
        raise ConfigError(
            f"The MQAR gap power law needs alpha > 0, got {alpha}; set data.task.alpha (Zoology uses 0.01)."
        )
    half = vocab_size // 2
    keys = 1 + rng.choice(half - 1, size=n_pairs, replace=False)  # (D,) in [1, half)
    values = half + rng.choice(vocab_size - half, size=n_pairs, replace=False)  # (D,) in [half, vocab)
    n_slots = (seq_len - 2 * n_pairs) // 2
    weights = np.arange(1, n_slots + 1, dtype=np.float64) ** (alpha - 1)
    # Weighted draw without replacement as the D smallest Exp(1) / weight keys (Efraimidis & Spirakis
    # 2006): the same distribution as successive weighted draws, ~10x faster than rng.choice with p.
    slots = np.argsort(rng.exponential(size=n_slots) / weights)[:n_pairs]  # (D,) slot of each key's query
    if random_filler:
        allowed = np.delete(np.arange(vocab_size), keys)  # a filler key could pose as a second query or pair
        inputs = allowed[rng.integers(len(allowed), size=seq_len)]
    else:
        inputs = np.zeros(seq_len, np.int64)
    targets = np.full(seq_len, -1, np.int64)
    inputs[0 : 2 * n_pairs : 2], inputs[1 : 2 * n_pairs : 2] = keys, values
    query = 2 * n_pairs + 2 * slots  # (D,) positions of the query keys
    inputs[query], inputs[query + 1] = keys, values
    targets[query] = values
    return _example(inputs, targets)


def selective_copying(rng: np.random.Generator, seq_len: int, vocab_size: int, n_tokens: int) -> Example:
    """Selective Copying (Mamba, Sec. 4.1.1 and App. E.1, Table 1), at any scale.

    Layout, with ``L = seq_len - n_tokens``: positions ``[0, L)`` are noise (0) except ``n_tokens``
    data tokens from ``[2, vocab_size)`` at random increasing positions; positions ``[L, seq_len)``
    are copy markers (1). After reading marker ``j`` the model must output data token ``j``:
    ``targets[L + j] = data[j]``, all other targets -1. Scoring at the markers, as in the S4/Mamba
    generators, uses every marker and means the answer comes after the cue to copy.

    Returns:
        ``{"inputs": i32[t], "targets": i32[t]}`` with the last ``n_tokens`` positions scored.
    """
    if n_tokens < 1:
        raise ConfigError(
            f"Selective copying needs at least one data token, got n_tokens={n_tokens}; set data.task.n_tokens >= 1."
        )
    if seq_len < 2 * n_tokens:
        raise ConfigError(
            f"Selective copying of {n_tokens} tokens needs seq_len >= 2 * n_tokens = {2 * n_tokens} (the tokens, "
            f"then as many markers), got {seq_len}; raise train.seq_len or lower data.task.n_tokens."
        )
    if vocab_size < 3:
        raise ConfigError(
            "Selective copying reserves tokens 0 (noise) and 1 (marker), "
            f"so vocab_size must be >= 3, got {vocab_size}; raise model.vocab_size."
        )
    region = seq_len - n_tokens
    data = rng.integers(2, vocab_size, size=n_tokens)  # (n_tokens,)
    positions = np.sort(rng.choice(region, size=n_tokens, replace=False))  # (n_tokens,) increasing
    inputs = np.zeros(seq_len, np.int64)
    inputs[positions] = data
    inputs[region:] = 1
    targets = np.full(seq_len, -1, np.int64)
    targets[region:] = data
    return _example(inputs, targets)


def induction_heads(rng: np.random.Generator, seq_len: int, vocab_size: int) -> Example:
    """Induction Heads (Mamba, Sec. 4.1.2 and App. E.1, Table 2).

    Layout: random tokens from ``[2, vocab_size)``; the special token 1 at one random position
    ``s < seq_len // 2``, followed by a random token ``X`` at ``s + 1``; the special token again at
    the last position, which is the only scored one: ``targets[-1] = X``. Token 1 occurs nowhere else.

    Returns:
        ``{"inputs": i32[t], "targets": i32[t]}`` with one scored position, the last.
    """
    if seq_len < 3:
        raise ConfigError(
            f"Induction heads needs seq_len >= 3 (special token, its successor, special token), got {seq_len}; "
            "raise train.seq_len."
        )
    if vocab_size < 3:
        raise ConfigError(
            f"Induction heads reserves tokens 0 and 1 (special), so vocab_size must be >= 3, got {vocab_size}; "
            "raise model.vocab_size."
        )
    inputs = rng.integers(2, vocab_size, size=seq_len)  # X at s + 1 is one of these
    special = rng.integers(seq_len // 2)  # s + 1 <= seq_len - 2: X never overwrites the final special token
    inputs[special] = inputs[-1] = 1
    targets = np.full(seq_len, -1, np.int64)
    targets[-1] = inputs[special + 1]
    return _example(inputs, targets)


TASKS: dict[str, Callable[..., Example]] = {
    "mqar": mqar,
    "selective_copying": selective_copying,
    "induction_heads": induction_heads,
}


def _task(name: str) -> Callable[..., Example]:
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}; set data.task.name to one of: {', '.join(TASKS)}.")
    return TASKS[name]


def task_options(task: str) -> dict[str, object]:
    """The options ``task`` takes beyond ``(rng, seq_len, vocab_size)``, with defaults.

    A required option's default is ``inspect.Parameter.empty``.
    """
    params = list(inspect.signature(_task(task)).parameters.values())[3:]
    return {p.name: p.default for p in params}


def _generate(
    task: str, rng: np.random.Generator, seq_len: int, vocab_size: int, min_len: int, options: dict
) -> Example:
    """One example of ``task`` from ``rng``; with ``0 < min_len < seq_len`` a shorter one, left-padded.

    The example's own length ``n`` is drawn log-uniformly from ``[min_len, seq_len]``; positions
    ``[0, seq_len - n)`` get input 0 (the tasks' filler token) and target -1, so the same scored
    positions sit at the end of every row. Mixing short examples into training is a length
    curriculum: short ones carry the learning signal an attention model cannot find at first in
    long ones, while the batch shape stays ``seq_len``.
    """
    if not 0 < min_len < seq_len:
        return TASKS[task](rng, seq_len, vocab_size, **options)
    n = int(round(np.exp(rng.uniform(np.log(min_len), np.log(seq_len)))))
    short = TASKS[task](rng, n, vocab_size, **options)
    pad = seq_len - n
    return _example(np.pad(short["inputs"], (pad, 0)), np.pad(short["targets"], (pad, 0), constant_values=-1))


def make_example(
    task: str, seed: int, split: str, index: int, seq_len: int, vocab_size: int, min_len: int = 0, **options
) -> Example:
    """Example ``index`` of ``split`` (``"train"`` or ``"val"``) of ``task``: a pure function of its arguments.

    ``min_len`` > 0 mixes lengths (``_generate``); 0 makes every example ``seq_len`` long.

    Returns:
        ``{"inputs": i32[t], "targets": i32[t]}``, ``t = seq_len``, target -1 where not scored.
    """
    valid = task_options(task)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"Task {task!r} has no option {unknown[0]!r}; its options are: {', '.join(valid) or 'none'}.")
    missing = [name for name, default in valid.items() if default is inspect.Parameter.empty and name not in options]
    if missing:
        raise ConfigError(f"Task {task!r} needs option {missing[0]!r}; pass it (data.task.{missing[0]}).")
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; use one of: {', '.join(SPLITS)}.")
    if seed < 0 or index < 0:
        raise DataError(
            f"Task examples need a non-negative seed and index, got seed={seed}, index={index}; set train.seed >= 0."
        )
    if min_len < 0 or min_len > seq_len:
        raise ConfigError(
            f"data.task.min_train_len must be in [0, {seq_len}] (train.seq_len), got {min_len}; "
            "use 0 for full-length examples only."
        )
    if 0 < min_len < seq_len:
        try:
            TASKS[task](np.random.default_rng(0), min_len, vocab_size, **options)
        except ConfigError as e:
            raise ConfigError(
                f"data.task.min_train_len={min_len} is too short for this task ({e}); raise it."
            ) from None
    rng = np.random.default_rng([seed, SPLITS[split], index])
    return _generate(task, rng, seq_len, vocab_size, min_len, options)


class TaskSource:
    """A grain random-access source of ``num_examples`` task examples: item ``i`` is ``make_example(..., index=i)``.

    The arguments are those of ``make_example``; an invalid combination fails here, not mid-run.
    """

    def __init__(
        self,
        task: str,
        seed: int,
        split: str,
        num_examples: int,
        seq_len: int,
        vocab_size: int,
        min_len: int = 0,
        **options,
    ):
        make_example(task, seed, split, 0, seq_len, vocab_size, min_len, **options)
        if num_examples < 1:
            raise ConfigError(
                f"A task split needs at least one example, got {num_examples}; set data.task.{split}_examples >= 1."
            )
        self.task, self.seed, self.split, self.num_examples = task, seed, split, num_examples
        self.seq_len, self.vocab_size, self.min_len, self.options = seq_len, vocab_size, min_len, options

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"Example {index} is out of range for a source of {self.num_examples} examples.")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])  # as make_example, validated once
        return _generate(self.task, rng, self.seq_len, self.vocab_size, self.min_len, self.options)

    def __repr__(self) -> str:
        # Stable across runs (no object address): grain checkpoints validate sources by repr.
        options = "".join(f", {k}={v!r}" for k, v in sorted(self.options.items()))
        options += f", min_len={self.min_len}" if self.min_len else ""
        return (
            f"TaskSource({self.task!r}, seed={self.seed}, split={self.split!r}, num_examples={self.num_examples}, "
            f"seq_len={self.seq_len}, vocab_size={self.vocab_size}{options})"
        )


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}; fix train.batch_size.")


def task_batches(
    source: TaskSource, batch_size: int, seed: int, shuffle: bool = True, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """An endless iterator of training batches: epochs over ``source``, reshuffled every epoch.

    Batches may straddle epoch boundaries, so every batch is full even when ``batch_size``
    does not divide ``len(source)``. With several processes each keeps its contiguous
    ``batch_size / process_count`` rows of every global batch, whose order does not depend on
    the process count; the union over processes is the single-process batch.

    Returns:
        A grain ``DatasetIterator`` of ``{"inputs": i32[b, t], "targets": i32[b, t]}``.
        ``it.get_state()`` is a JSON-serialisable dict; ``set_state`` on a fresh iterator built with
        the same arguments continues with exactly the batches the first one would have given.
    """
    _check_batch_size(batch_size)
    if not 0 <= seed < 2**32:
        raise DataError(f"The shuffle seed must be in [0, 2**32), got {seed}; set train.seed in that range.")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # before repeat: grain reseeds the shuffle every epoch
    ds = ds.repeat().batch(batch_size, drop_remainder=True)
    if process_count > 1:
        if batch_size % process_count or not 0 <= process_index < process_count:
            raise DataError(
                f"train.batch_size ({batch_size}) is not divisible by the number of processes ({process_count}); "
                f"set it to a multiple of {process_count}."
            )
        rows = slice(process_index * (batch_size // process_count), (process_index + 1) * (batch_size // process_count))
        ds = ds.map(lambda batch: {k: v[rows] for k, v in batch.items()})
    return iter(ds.to_iter_dataset(READ_OPTIONS))


def task_eval_batches(source: TaskSource, batch_size: int, n_batches: int) -> list[Example]:
    """The first ``n_batches * batch_size`` examples of ``source`` in order, as a list of batches.

    Fewer batches are returned when ``source`` holds fewer examples; a partial batch is dropped.

    Returns:
        A list of ``{"inputs": i32[b, t], "targets": i32[b, t]}``.
    """
    _check_batch_size(batch_size)
    if n_batches < 1:
        raise DataError(f"The number of eval batches must be positive, got {n_batches}; set eval.batches >= 1.")
    if len(source) < batch_size:
        raise DataError(
            f"An eval batch of {batch_size} examples does not fit in {len(source)} examples; "
            "raise data.task.val_examples or lower the batch size."
        )
    n = min(n_batches, len(source) // batch_size)
    examples = [source[i] for i in range(n * batch_size)]
    return [
        {
            key: np.stack([ex[key] for ex in examples[i * batch_size : (i + 1) * batch_size]])
            for key in ("inputs", "targets")
        }
        for i in range(n)
    ]


def scored_accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of scored positions (``targets >= 0``) where ``predictions == targets``.

    Args:
        predictions: i32[b, t] predicted tokens (e.g. the argmax of the logits).
        targets: i32[b, t], -1 where not scored.
    """
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    scored = targets >= 0
    if not scored.any():
        raise DataError("No scored positions (all targets are -1); pass task targets, not text windows.")
    return float((predictions == targets)[scored].mean())


def exact_match(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per example, whether every scored position is right: bool[b] (True for an example with none scored).

    Args:
        predictions: i32[b, t] predicted tokens.
        targets: i32[b, t], -1 where not scored.
    """
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    return np.all((predictions == targets) | (targets < 0), axis=-1)
