"""lm-evaluation-harness adapter (slm_jax/eval/harness.py) on two local tasks written here: a 6-question multiple
choice task and a rolling log-likelihood task over local JSONL, run through `slm eval --tasks` and checked
against log-probabilities computed by hand with model.apply. No network: the data are local files."""

import json
import math
import os
from functools import partial

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is first imported (by lm_eval)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from slm_jax.cli import main  # noqa: E402
from slm_jax.eval.harness import SlmLM  # noqa: E402
from slm_jax.inference.generate import generate  # noqa: E402
from tests.eval.tiny import logprob, make_char_run, next_logprobs  # noqa: E402

SEQ_LEN = 32
QUESTIONS = [
    {"question": "what barks?", "choices": ["a dog", "a cat", "a fish"], "answer": 0},
    {"question": "what swims?", "choices": ["a dog", "a fish", "a bird"], "answer": 1},
    {"question": "what flies?", "choices": ["a bird", "a cow", "a dog"], "answer": 0},
    {"question": "what purrs?", "choices": ["a cow", "a fish", "a cat"], "answer": 2},
    {"question": "what moos?", "choices": ["a cow", "a bird", "a cat"], "answer": 0},
    {"question": "what hops?", "choices": ["a fish", "a frog", "a cow"], "answer": 1},
]
DOCS = [
    "the dog barks at the cat and the cat runs up the tree while the bird flies away.",  # > 2 windows
    "a fish swims.",
    "the frog hops, the cow moos.",
]
PROMPT = "Q: {question}\nA:"


def _write_task(root, name, rows, **fields):
    """A harness task YAML over a local JSONL file in ``root``."""
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(root / "hf_cache")},
        "test_split": "test",
        **fields,
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(task))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    vocab = "".join(DOCS) + "".join(PROMPT.format(**q) + " " + " ".join(q["choices"]) for q in QUESTIONS)
    model, params, tok = make_char_run(root / "run", vocab, SEQ_LEN)
    tasks = root / "tasks"
    tasks.mkdir()
    _write_task(
        tasks,
        "slm_tiny_mc",
        QUESTIONS,
        output_type="multiple_choice",
        doc_to_text=PROMPT.replace("{question}", "{{question}}"),
        doc_to_choice="{{choices}}",
        doc_to_target="{{answer}}",
        metric_list=[{"metric": "acc"}],
    )
    _write_task(
        tasks,
        "slm_tiny_ppl",
        [{"text": d} for d in DOCS],
        output_type="loglikelihood_rolling",
        doc_to_text="",
        doc_to_target="{{text}}",
        metric_list=[{"metric": "bits_per_byte"}, {"metric": "word_perplexity"}],
    )
    return root, model, params, tok


def _continuation_logprob(model, params, tok, context: str, continuation: str) -> float:
    """Summed log p of the continuation's tokens, each given everything before it."""
    tokens = tok.encode(context + continuation)
    return sum(logprob(model, params, tokens[:j], tokens[j]) for j in range(len(tok.encode(context)), len(tokens)))


def _rolling_by_hand(model, params, tokens: np.ndarray, context: int) -> float:
    """The harness's disjoint rolling windows: token j is predicted from the start of its block of ``context``
    targets, the last (partial) block from a full window that ends at the text's end; token 0 is only context."""
    n = len(tokens)
    total = 0.0
    for j in range(1, n):
        start = max(0, min(context * ((j - 1) // context), n - 1 - context))
        total += logprob(model, params, tokens[start:j], tokens[j])
    return total


def _lm(model, params, tok):
    greedy = partial(generate, model, params, temperature=0.0, chunk=4)
    return SlmLM(model, params, tok, SEQ_LEN, greedy, batch_size=4)


def test_slm_eval_tasks_match_by_hand_scores(setup, capsys):
    root, model, params, tok = setup
    args = ["eval", str(root / "run"), "--tasks", "slm_tiny_mc,slm_tiny_ppl", "--include-path", str(root / "tasks")]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)["results"]

    scores = [
        [_continuation_logprob(model, params, tok, PROMPT.format(**q), " " + c) for c in q["choices"]]
        for q in QUESTIONS
    ]
    acc = np.mean([int(np.argmax(s)) == q["answer"] for s, q in zip(scores, QUESTIONS)])
    assert results["slm_tiny_mc"]["acc,none"] == pytest.approx(acc)

    loglik = sum(_rolling_by_hand(model, params, tok.encode(d), SEQ_LEN) for d in DOCS)
    n_bytes = sum(len(d.encode()) for d in DOCS)
    assert results["slm_tiny_ppl"]["bits_per_byte,none"] == pytest.approx(-loglik / n_bytes / math.log(2), rel=1e-4)


def test_loglikelihood_requests_match_by_hand(setup):
    root, model, params, tok = setup
    lm = _lm(model, params, tok)
    pairs = [(PROMPT.format(**q), " " + c) for q in QUESTIONS[:3] for c in q["choices"]]
    pairs.append(("the dog barks at the cat and the cat runs up the tree", " while"))  # left-truncated to 32
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    for (context, continuation), (ll, is_greedy) in zip(pairs, got):
        tokens = tok.encode(context + continuation)
        start = max(0, len(tokens) - 1 - SEQ_LEN)  # one window of the last SEQ_LEN + 1 tokens
        scored = range(len(tokens) - len(continuation), len(tokens))
        by_hand = [logprob(model, params, tokens[start:j], tokens[j]) for j in scored]
        assert ll == pytest.approx(sum(by_hand), abs=1e-4)
        assert isinstance(is_greedy, bool)


def test_generate_until_is_greedy_and_stops(setup):
    root, model, params, tok = setup
    lm = _lm(model, params, tok)
    context = "Q: what barks?\nA:"
    tokens = list(tok.encode(context))
    for _ in range(12):  # greedy by hand, full recompute each token
        tokens.append(int(np.argmax(next_logprobs(model, params, tokens))))
    free = tok.decode(tokens[len(tok.encode(context)) :])
    stop = free[5]  # a character the greedy text produces: the output must end just before its first occurrence
    req = [
        Instance("generate_until", {}, (context, {"until": [stop], "max_gen_toks": 12}), 0),
        Instance("generate_until", {}, (context, {"until": ["\u00a7"], "max_gen_toks": 7}), 1),
    ]
    cut, full = lm.generate_until(req)
    assert cut == free[: free.index(stop)]
    assert full == free[:7]
