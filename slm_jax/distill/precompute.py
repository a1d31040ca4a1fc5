"""The teacher's side of distillation: vocabulary checks and precomputed top-k logits on disk.

``slm distill precompute --teacher RUN_DIR --out DIR`` runs the teacher once over the training
split and stores, for every token position p, its k largest next-token logits (for predicting
token p + 1) and their ids. A student run then reads the rows of its training windows instead
of running the teacher: window ``tokens[o : o + t + 1]`` uses rows ``o .. o + t - 1``. This is
for teachers too big or slow to run alongside the student; it costs ``n_tokens * k * 6`` bytes.

Layout of DIR (no pickle):
  ``values.npy``  f16 or f32[n, k], raw logits (not divided by T, so any temperature can use them),
                  sorted descending within each row;
  ``indices.npy`` i32[n, k], their token ids;
  ``meta.json``   teacher run and step, k, context, vocabulary, and the split's length and sha256,
                  which training checks against its own data.

Context: the teacher reads windows of ``context`` tokens every ``stride`` tokens (default
``context // 2``); each position takes its logits from the window where it has at least
``context - stride`` tokens before it (the first window's positions keep theirs). So a
position's teacher context is not the student window's: usually longer, which only makes the
targets better. The teacher runs over ``n * context / stride`` tokens in all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.config import replace
from slm_jax.data.pipeline import RandomWindowBatches
from slm_jax.data.source import load_dataset
from slm_jax.errors import ConfigError, DataError
from slm_jax.inference.run import LoadedRun, load_run

META = "meta.json"


def tokenizer_identity(tok) -> object:
    """What makes two tokenizers the same (JSON-able): an imported HF tokenizer's JSON text, else our description."""
    return None if tok is None else getattr(tok, "json_text", None) or tok.to_dict()


def check_same_vocabulary(
    teacher: str, teacher_tokenizer: object, teacher_vocab: int, tokenizer, vocab_size: int
) -> None:
    """Refuse a teacher (named ``teacher`` in the message) whose tokenizer or vocabulary differs from the student's.

    ``teacher_tokenizer`` is the teacher's ``tokenizer_identity``; ``tokenizer`` the student data's tokenizer.
    """
    if teacher_tokenizer is None or teacher_tokenizer != tokenizer_identity(tokenizer):
        raise DataError(
            f"The teacher {teacher} was trained with another tokenizer than the student's data "
            "(their tokenizer.json differ), "
            "so their token ids do not match; distill only between runs on the same data.path and data.tokenizer."
        )
    if teacher_vocab != vocab_size:
        raise ConfigError(
            f"The teacher {teacher} has model.vocab_size {teacher_vocab} but the student {vocab_size}; "
            "set the student's model.vocab_size to the teacher's (or 0 to take it from the data)."
        )


def tokens_digest(tokens: np.ndarray) -> str:
    """sha256 of a split's token ids (as little-endian int64, so the file dtype does not matter)."""
    return hashlib.sha256(np.asarray(tokens, dtype="<i8").tobytes()).hexdigest()


def window_starts(n: int, context: int, stride: int = 0) -> np.ndarray:
    """Start of the teacher window each position p in [0, n) takes its logits from: i64[n], non-decreasing.

    Windows start at multiples of ``stride`` (default ``context // 2``; plus ``n - context`` for the
    tail); p uses the last one starting at or before ``p - m``, ``m = context - stride``, so it has
    ``m`` to ``context - 1`` tokens of context (fewer only inside the first window).
    """
    stride = min(stride or max(context // 2, 1), context)
    p = np.arange(n)
    return np.minimum(np.maximum(0, (p - (context - stride)) // stride * stride), n - context)


def teacher_topk(
    teacher: LoadedRun,
    tokens: np.ndarray,
    k: int,
    context: int,
    stride: int = 0,
    batch_size: int = 32,
    dtype: str = "float16",
):
    """Top-k teacher logits for every position of ``tokens`` (n,): (values [n, k], indices i32[n, k])."""
    n = len(tokens)
    context = min(context, n)
    starts = window_starts(n, context, stride)
    unique = np.unique(starts)
    values, indices = np.zeros((n, k), dtype), np.zeros((n, k), np.int32)

    @jax.jit
    def forward(params, windows):  # i32[w, context] -> top-k over the vocabulary, [w, context, k] each
        logits, _ = teacher.model.apply(params, windows)
        return jax.lax.top_k(logits.astype(jnp.float32), k)

    for i in range(0, len(unique), batch_size):
        chunk = unique[i : i + batch_size]
        windows = np.stack([tokens[s : s + context] for s in chunk]).astype(np.int32)
        pad = batch_size - len(chunk)  # one compiled shape: pad the last batch with copies
        v, ix = jax.device_get(
            forward(teacher.params, np.concatenate([windows, windows[:1].repeat(pad, 0)]) if pad else windows)
        )
        for j, s in enumerate(chunk):
            rows = _rows_of(starts, s)
            values[rows] = v[j, rows - s]
            indices[rows] = ix[j, rows - s]
    return values, indices


def _rows_of(starts: np.ndarray, s: int) -> np.ndarray:
    """Positions whose window starts at ``s`` (a contiguous run, since ``starts`` is non-decreasing)."""
    lo, hi = np.searchsorted(starts, s, "left"), np.searchsorted(starts, s, "right")
    return np.arange(lo, hi)


def precompute(
    teacher_dir: str | Path,
    out_dir: str | Path,
    k: int,
    data: str | None = None,
    context: int = 0,
    stride: int = 0,
    batch_size: int = 32,
    dtype: str = "float16",
    best: bool = False,
) -> dict:
    """Write the teacher's top-k logits over the training split of ``data`` (default: the teacher's) to ``out_dir``."""
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"--dtype must be float16 or float32, got {dtype!r}.")
    teacher = load_run(teacher_dir, best=best)
    if teacher.cfg.data.task.name:
        raise DataError(
            f"The teacher {teacher_dir} was trained on a generated task, which has no text to distill on; "
            "pass a teacher trained on text (data.path)."
        )
    dataset = load_dataset(replace(teacher.cfg, **{"data.path": data}).data if data else teacher.cfg.data)
    vocab = teacher.cfg.model.vocab_size
    check_same_vocabulary(str(teacher_dir), tokenizer_identity(teacher.tokenizer), vocab, dataset.tokenizer, vocab)
    if not 0 < k <= vocab:
        raise ConfigError(f"--top-k must be in [1, {vocab}] (the teacher's vocabulary), got {k}.")
    context = context or teacher.cfg.train.seq_len
    tokens = np.asarray(dataset.train)
    context = min(context, len(tokens))
    stride = min(stride or max(context // 2, 1), context)
    values, indices = teacher_topk(teacher, tokens, k, context, stride, batch_size, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "values.npy", values)
    np.save(out / "indices.npy", indices)
    meta = {
        "teacher": str(Path(teacher_dir).resolve()),
        "teacher_step": teacher.step,
        "top_k": k,
        "context": context,
        "stride": stride,
        "vocab_size": vocab,
        "dtype": dtype,
        "n_tokens": len(tokens),
        "tokens_sha256": tokens_digest(tokens),
        "data_dir": str(dataset.data_dir),
        "tokenizer": tokenizer_identity(teacher.tokenizer),
    }
    (out / META).write_text(json.dumps(meta, indent=1) + "\n")  # last: a directory with meta.json is complete
    return {"out": str(out), **meta, "bytes": int(values.nbytes + indices.nbytes)}


@dataclass(frozen=True)
class TopkStore:
    """An opened precompute directory: ``values`` [n, k] and ``indices`` i32[n, k] memory-mapped, and its meta."""

    values: np.ndarray
    indices: np.ndarray
    meta: dict


def open_store(
    path: str | Path, train_tokens: np.ndarray, tokenizer, vocab_size: int, teacher_dir: str | Path | None = None
) -> TopkStore:
    """Open ``path``; check it holds exactly ``train_tokens`` in the student's vocabulary, made by ``teacher_dir``."""
    path = Path(path)
    if not (path / META).is_file():
        raise DataError(
            f"{path} is not a precomputed-logits directory (no {META}); write one with `slm distill precompute`."
        )
    meta = json.loads((path / META).read_text())
    check_same_vocabulary(
        f"{meta['teacher']} (logits in {path})", meta["tokenizer"], meta["vocab_size"], tokenizer, vocab_size
    )
    if meta["n_tokens"] != len(train_tokens) or meta["tokens_sha256"] != tokens_digest(train_tokens):
        raise DataError(
            f"The teacher logits in {path} were computed on other training tokens than the student's data; "
            "re-run `slm distill precompute` with the student's data.path."
        )
    if teacher_dir and Path(teacher_dir).resolve() != Path(meta["teacher"]):
        raise ConfigError(
            f"The teacher logits in {path} come from {meta['teacher']}, not {teacher_dir}; "
            "pass that teacher or re-run the precompute."
        )
    values, indices = np.load(path / "values.npy", mmap_mode="r"), np.load(path / "indices.npy", mmap_mode="r")
    return TopkStore(values, indices, meta)


class TopkWindowBatches:
    """A grain source: training batch ``i`` of ``windows`` with the teacher's stored rows for the same windows.

    Item ``i`` is ``{"tokens": i32[b, t + 1], "values": [b, t, k], "indices": i32[b, t, k]}``:
    the window starting at offset o reads store rows ``o .. o + t - 1`` (the logits for predicting
    its tokens 1 .. t). Batch ``i`` stays a pure function of ``(seed, i)``, so resume is exact.
    """

    def __init__(self, windows: RandomWindowBatches, store: TopkStore):
        self.windows, self.store = windows, store

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        w = self.windows
        first = w.process_index * w.local_batch
        offsets = w.offsets(int(index))[first : first + w.local_batch]
        rows = offsets[:, None] + np.arange(w.seq_len)  # [b, t]
        return {
            "tokens": w[index],
            "values": np.asarray(self.store.values[rows]),
            "indices": np.asarray(self.store.indices[rows]),
        }

    def __repr__(self) -> str:  # stable: grain checkpoints validate sources by repr
        meta = self.store.meta
        return f"TopkWindowBatches({self.windows!r}, store={meta['tokens_sha256'][:12]}:k={meta['top_k']})"
