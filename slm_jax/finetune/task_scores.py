"""``slm eval RUN --data tasks.jsonl``: greedy exact match, chrF and the completion loss on prompt/completion pairs.

Each prompt is laid out by the run's chat template (finetune/template.py; plain when it has
none) and continued greedily. A template with an end marker stops there, within the
reference's token count (with the marker) plus ``MARGIN`` tokens; a plain template has no way
to stop, so its prediction is exactly as many tokens as the reference. Exact match compares
prediction and reference after stripping surrounding whitespace. chrF is the character 6-gram
F-score with beta 2 (Popović 2015, "chrF: character n-gram F-score for automatic MT
evaluation", WMT), computed at corpus level by sacrebleu's ``CHRF`` (the eval extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.errors import ConfigError, DataError
from slm_jax.finetune import data as ft_data
from slm_jax.finetune import template as chat
from slm_jax.finetune.train import exact_match as teacher_forced
from slm_jax.inference.generate import generate
from slm_jax.inference.run import load_run, missing_tokenizer

MARGIN = 8  # tokens generated past the reference (and its end marker) before giving up on the marker


def is_task_file(path: str | Path) -> bool:
    """The ``slm eval --data`` rule: a ``.jsonl`` file whose first object has string "prompt" and "completion"."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)


def chrf_metric():
    """sacrebleu's chrF (character 6-grams, beta 2), or one sentence saying how to install it."""
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        raise ConfigError("chrF scoring needs sacrebleu; install the eval extra: pip install -e '.[eval]'.") from None
    return CHRF()


def exact_match_rate(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after stripping surrounding whitespace."""
    return float(np.mean([p.strip() == r.strip() for p, r in zip(predictions, references)]))


def greedy_completions(
    model,
    params: PyTree,
    tokenizer: Any,
    template: chat.ChatTemplate,
    examples: list[dict[str, str]],
    batch_size: int = 32,
    chunk: int = 16,
) -> list[str]:
    """The greedy completion of each example's templated prompt, cut at the end marker and the token budget.

    Examples with the same prompt length share a batch i32[b, t] (no padding), so each distinct length compiles once.
    """
    prompts = [np.asarray(tokenizer.encode(template.format_prompt(e["prompt"])), np.int32) for e in examples]
    budgets = [
        len(tokenizer.encode(template.format_completion(e["completion"]))) + (MARGIN if template.end else 0)
        for e in examples
    ]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    out = [""] * len(examples)
    for same in by_length.values():
        for s in range(0, len(same), batch_size):
            idx = same[s : s + batch_size]
            rows = np.zeros((len(idx), 0), np.int32)  # [b, generated so far]
            for tokens in generate(
                model,
                params,
                np.stack([prompts[i] for i in idx]),
                max(budgets[i] for i in idx),
                temperature=0.0,
                chunk=chunk,
            ):
                rows = np.concatenate([rows, tokens], axis=1)
                if template.end and all(template.end in tokenizer.decode(r) for r in rows):
                    break
            for r, i in zip(rows, idx):
                out[i] = chat.cut_at_end(tokenizer.decode(r[: budgets[i]]), template.end)
    return out


def score_task_file(run_dir: str | Path, path: str | Path, best: bool = False, step: int | None = None) -> dict:
    """Exact match, chrF and teacher-forced completion loss of the run in ``run_dir`` on the JSONL ``path``."""
    metric = chrf_metric()
    run = load_run(run_dir, best=best, step=step)
    if not run.cfg.model.causal:
        raise ConfigError(
            f"{run_dir} is an encoder (model.causal=false), which cannot generate completions; "
            "score a causal run on prompt/completion data."
        )
    if run.tokenizer is None:
        raise DataError(missing_tokenizer(run_dir, run.cfg))
    template = chat.run_template(run_dir)
    examples = ft_data.read_jsonl(path)
    forced = teacher_forced(
        run.model, run.params, ft_data.encode_examples(chat.format_examples(template, examples, path), run.tokenizer)
    )
    predictions = greedy_completions(run.model, run.params, run.tokenizer, template, examples)
    references = [e["completion"] for e in examples]
    return {
        "run_dir": str(run_dir),
        "step": run.step,
        "template": template.name,
        "examples": len(examples),
        "exact_match": exact_match_rate(predictions, references),
        "chrf": float(metric.corpus_score(predictions, [references]).score),
        "completion_loss": forced["completion_loss"],
    }
