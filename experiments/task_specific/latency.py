"""Latency per example at batch 1: what each model computes to answer one test example, timed after a warm-up.

- classifier (fine-tuned): one forward pass of the passage and the head (``slm predict``'s work);
- prompted classification: one forward pass of the demonstrations + passage + each label (3 rows);
- QA: greedy decoding at batch 1 (prefill + cached decode, ``slm generate``'s loop) in chunks of
  ``CHUNK`` tokens until the end marker (a newline, or ``:`` for the corpus layout) appears.

Each example is run twice and the second run is timed, so compilation (one per prompt length) is
never counted; the number reported is the median over the examples.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from fewshot import encode_pairs, pad_rows, score_rows

from slm_jax.finetune.classify import class_logits, pad
from slm_jax.inference.generate import generate

CHUNK = 4  # decode tokens per compiled loop between end-marker checks
MAX_NEW = 24  # longer than any speaker's name


def median_ms(fn, inputs: list) -> float:
    """Median wall-clock milliseconds of ``fn(x)`` over ``inputs``, each timed on its second call."""
    times = []
    for x in inputs:
        fn(x)
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def classifier_ms(clf, texts: list[str]) -> float:
    """A fine-tuned classifier (``finetune.classify.load_classifier``) on one passage at a time."""
    fn = jax.jit(lambda p, b: class_logits(clf.model, clf.head, p, b).argmax(-1))

    def one(text):
        batch = pad([np.asarray(clf.tokenizer.encode(text), np.int32)])
        return jax.block_until_ready(fn(clf.params, {k: jnp.asarray(v) for k, v in batch.items()}))

    return median_ms(one, texts)


def scoring_ms(run, queries: list[str], labels: tuple[str, ...]) -> float:
    """A prompted model scoring every label after one prompt (one batch of ``len(labels)`` rows)."""

    def one(query):
        pairs = [(query, f" {label}") for label in labels]
        rows = pad_rows(encode_pairs(run.tokenizer, pairs, run.cfg.train.seq_len))
        out = score_rows(run.model, run.params, *(jnp.asarray(rows[k]) for k in ("inputs", "targets", "mask")))
        return jax.block_until_ready(out)

    return median_ms(one, queries)


def generation_ms(run, prompts: list[str], end: str) -> float:
    """Greedy decoding after each prompt at batch 1 until ``end`` is generated (at most ``MAX_NEW`` tokens)."""

    def one(prompt):
        ids = np.asarray([run.tokenizer.encode(prompt)[-(run.cfg.train.seq_len - MAX_NEW) :]], np.int32)
        text = ""
        for tokens in generate(run.model, run.params, ids, MAX_NEW, temperature=0.0, chunk=CHUNK):
            text += run.tokenizer.decode(tokens[0])
            if end in text:
                break
        return text

    return median_ms(one, prompts)
