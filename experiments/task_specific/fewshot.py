"""Scoring a causal char model on the two tasks without training it: few-shot prompts and continuation scores.

Every score is teacher-forced from one forward pass per batch, the way lm-evaluation-harness
scores a request: a prompt and a continuation are tokenized together, left-truncated to the
model's context, and the continuation's log-probabilities are summed. Exact match is whether
every continuation token is the argmax, which is what greedy decoding would emit token by token
(up to ties), so it is greedy exact match computed in one pass.

- Classification (Brown et al. 2020, in-context learning): the label whose continuation
  `` negative`` / `` neutral`` / `` positive`` has the highest log-likelihood after the prompt,
  raw or contextually calibrated (Zhao et al. 2021, "Calibrate Before Use", arXiv:2102.09690:
  subtract the label log-probabilities the same prompt gives a content-free empty text; the paper's
  ``N/A`` has a character the Shakespeare vocabulary lacks).
- QA: exact match of ``NAME`` + end marker after a prompt in the fine-tuned models' ``qa``
  layout (``Q: ...\\nA: ``), with demonstrations before it, or in the corpus's own layout
  (the two speeches, a blank line, then ``NAME:`` as the next heading).
"""

from __future__ import annotations

import random
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.finetune.template import BUILTIN

QA_TEMPLATE = BUILTIN["qa"]  # the layout the QA fine-tunes are trained with: "Q: {prompt}\nA: " + "{completion}\n"
CONTENT_FREE = ""


def sentiment_block(text: str, label: str | None = None) -> str:
    """One demonstration (with its label) or the query (without): ``text\\nSentiment: label``."""
    return f"{text}\nSentiment:" + (f" {label}\n\n" if label is not None else "")


def sentiment_demos(train: list[dict], labels: tuple[str, ...], seed: int) -> str:
    """One seeded training example of every label, in a seeded order, as a demonstration prefix."""
    rng = random.Random(seed)
    picks = [rng.choice([r for r in train if r["label"] == label]) for label in labels]
    rng.shuffle(picks)
    return "".join(sentiment_block(r["text"], r["label"]) for r in picks)


def qa_demos(train: list[dict], k: int, seed: int) -> str:
    """``k`` seeded training examples in the ``qa`` layout, each with its answer, end marker and a blank line."""
    picks = random.Random(seed).sample(train, k)
    return "".join(qa_pair(r)[0] + qa_pair(r)[1] + "\n" for r in picks)


def qa_pair(row: dict) -> tuple[str, str]:
    """(prompt, answer + end marker) of a QA row in the ``qa`` layout."""
    return QA_TEMPLATE.format_prompt(row["prompt"]), QA_TEMPLATE.format_completion(row["completion"])


def corpus_layout(prompt: str, answer: str = "") -> tuple[str, str]:
    """A QA row as the corpus writes a dialogue: (the two speeches and a blank line, the next heading ``NAME:``)."""
    return prompt.rsplit("\n\n", 1)[0] + "\n\n", answer + ":"


@partial(jax.jit, static_argnums=0)
def score_rows(model, params, inputs, targets, mask):
    """inputs, targets i32[b, t], mask bool[b, t] -> (summed log p of masked targets f32[b], all argmax bool[b])."""
    logits, _ = model.apply(params, inputs)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(jnp.where(mask, picked, 0.0), axis=-1), jnp.all(greedy | ~mask, axis=-1)


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], context: int) -> list[tuple[np.ndarray, int]]:
    """(prompt, continuation) pairs -> (token ids of both, left-truncated to ``context`` + 1; continuation length)."""
    return [
        (np.asarray(tokenizer.encode(p + c)[-(context + 1) :], np.int32), len(tokenizer.encode(c))) for p, c in pairs
    ]


def pad_rows(rows: list[tuple[np.ndarray, int]], multiple: int = 1) -> dict[str, np.ndarray]:
    """Encoded pairs -> {"inputs", "targets" i32[n, t], "mask" bool[n, t]}, right-padded to a multiple of
    ``multiple``; the mask marks the positions that predict the continuation."""
    t = -(-(max(len(ids) for ids, _ in rows) - 1) // multiple) * multiple
    out = {"inputs": np.zeros((len(rows), t), np.int32), "targets": np.zeros((len(rows), t), np.int32)}
    out["mask"] = np.zeros((len(rows), t), bool)
    for i, (ids, n_cont) in enumerate(rows):
        out["inputs"][i, : len(ids) - 1] = ids[:-1]
        out["targets"][i, : len(ids) - 1] = ids[1:]
        out["mask"][i, len(ids) - 1 - n_cont : len(ids) - 1] = True
    return out


def continuation_scores(run, pairs: list[tuple[str, str]], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(summed continuation log-probability f32[n], continuation is the greedy output bool[n]) of a loaded run.

    Pairs are batched in order of length and padded to a multiple of 64 tokens, so few shapes compile.
    """
    rows = encode_pairs(run.tokenizer, pairs, run.cfg.train.seq_len)
    order = np.argsort([len(ids) for ids, _ in rows], kind="stable")
    logp, exact = np.zeros(len(rows), np.float32), np.zeros(len(rows), bool)
    for i in range(0, len(rows), batch_size):
        idx = order[i : i + batch_size]
        batch = {k: jnp.asarray(v) for k, v in pad_rows([rows[j] for j in idx], 64).items()}
        lp, ok = score_rows(run.model, run.params, batch["inputs"], batch["targets"], batch["mask"])
        logp[idx], exact[idx] = np.asarray(lp), np.asarray(ok)
    return logp, exact


def classify_fewshot(run, demos: str, texts: list[str], labels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{"raw", "calibrated"}: the predicted label index i32[n] of every text after the demonstrations."""
    queries = [demos + sentiment_block(t) for t in texts + [CONTENT_FREE]]
    logp, _ = continuation_scores(run, [(q, f" {label}") for q in queries for label in labels])
    logp = logp.reshape(len(queries), len(labels))
    logp = logp - jax.nn.logsumexp(logp, axis=1, keepdims=True)  # log p(label | prompt) among the labels
    return {"raw": np.asarray(logp[:-1].argmax(1)), "calibrated": np.asarray((logp[:-1] - logp[-1]).argmax(1))}


def qa_exact_match(run, prefix: str, rows: list[dict], layout: str = "qa") -> np.ndarray:
    """bool[n]: whether greedy decoding after ``prefix`` + each prompt gives the answer and its end marker."""
    pairs = []
    for r in rows:
        prompt, answer = qa_pair(r) if layout == "qa" else corpus_layout(r["prompt"], r["completion"])
        pairs.append((prefix + prompt, answer))
    return continuation_scores(run, pairs)[1]
