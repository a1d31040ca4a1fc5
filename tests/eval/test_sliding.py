"""Sliding-window perplexity (slm_jax/eval/sliding.py): every token scored once with enough context, stride C
equals non-overlapping windows, stride 1 equals a by-hand computation, and the `slm eval --stride` path."""

import json

import jax
import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.errors import DataError
from slm_jax.eval.perplexity import evaluate
from slm_jax.eval.sliding import sliding_batches, window_plan
from slm_jax.training.step import make_eval_step
from tests.eval.tiny import logprob, make_char_run

TEXT = "to be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. "


@pytest.mark.parametrize("n_tokens,context,stride", [(9, 8, 8), (30, 8, 8), (30, 8, 3), (31, 8, 1), (50, 7, 5)])
def test_every_target_scored_once_with_enough_context(n_tokens, context, stride):
    tokens = np.arange(n_tokens, dtype=np.int32)  # token i has id i, so targets name their own index
    scored, min_context = [], []
    for batch in sliding_batches(tokens, 4, context, stride):
        for inputs, targets in zip(batch["inputs"], batch["targets"]):
            hit = np.flatnonzero(targets >= 0)
            scored.extend(targets[hit].tolist())
            if len(hit) and targets[hit[0]] > context:  # a later window: context tokens before its first score
                min_context.append(hit[0] + 1)
            np.testing.assert_array_equal(targets[hit], inputs[hit] + 1)  # targets are the next tokens
    assert sorted(scored) == list(range(1, n_tokens))
    assert all(c > context - stride for c in min_context)


def test_bad_stride_and_short_split_are_one_sentence():
    with pytest.raises(DataError, match="stride must be between 1 and the context"):
        window_plan(20, 8, 9)
    with pytest.raises(DataError, match="does not fit in 8 tokens"):
        window_plan(8, 8, 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_char_run(tmp_path_factory.mktemp("sliding") / "run", TEXT, seq_len=8)


def test_stride_equal_to_context_is_the_plain_window_eval(tiny):
    model, params, tok = tiny
    context = 8
    tokens = tok.encode(TEXT[: 5 * context + 1])  # five whole windows
    eval_fn = jax.jit(make_eval_step(model))
    sliding = evaluate(eval_fn, params, sliding_batches(tokens, 2, context, context))
    plain = np.stack([tokens[i * context : (i + 1) * context + 1] for i in range(5)])  # today's (b, t + 1) form
    today = evaluate(eval_fn, params, [plain[:3], plain[3:]])
    assert sliding["val_tokens"] == today["val_tokens"] == 5 * context
    assert sliding["val_loss"] == pytest.approx(today["val_loss"], rel=1e-5)
    assert sliding["val_accuracy"] == pytest.approx(today["val_accuracy"], abs=1e-6)


def test_stride_one_equals_full_left_context_by_hand(tiny):
    model, params, tok = tiny
    context = 8
    tokens = tok.encode(TEXT[:21])
    result = evaluate(jax.jit(make_eval_step(model)), params, sliding_batches(tokens, 4, context, 1))
    by_hand = [-logprob(model, params, tokens[max(0, j - context) : j], tokens[j]) for j in range(1, len(tokens))]
    assert result["val_tokens"] == len(tokens) - 1
    assert result["val_loss"] == pytest.approx(np.mean(by_hand), rel=1e-5)


def test_cli_stride(tmp_path, capsys):
    text = tmp_path / "val.txt"
    text.write_text(TEXT[:30])
    run_dir = tmp_path / "run"
    make_char_run(run_dir, TEXT, seq_len=8)
    assert main(["eval", str(run_dir), "--data", str(text), "--stride", "3", "--context", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["val_tokens"] == 29  # every character but the first, once
