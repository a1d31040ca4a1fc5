"""Chat templates (finetune/template.py) and task scores (finetune/task_scores.py): formatting, loss mask, storage in
the run directory, generate applying them and stopping at the end marker, merge carrying them, and `slm eval` exact
match / chrF against a direct computation."""

import json
import re

import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.data.tokenizers import CharTokenizer
from slm_jax.errors import ConfigError
from slm_jax.finetune import template as chat
from slm_jax.finetune.data import encode_examples
from slm_jax.inference.generate import generate
from slm_jax.inference.run import load_run
from tests.tiny_runs import run_cli as run
from tests.tiny_runs import train_text_run

LETTERS = "abcdef"


def write_task(path, n, seed):
    """prompt: 2 or 3 random letters; completion: the first letter twice (a rule the base cannot know)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = "".join(rng.choice(list(LETTERS), rng.integers(2, 4)))
            f.write(json.dumps({"prompt": word, "completion": word[0] * 2}) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny char base run whose corpus has the qa template's characters, fully fine-tuned with --template qa."""
    tmp = tmp_path_factory.mktemp("chat")
    base = train_text_run(
        tmp,
        "Q: abc\nA: def\nQ: fed\nA: cba\n",
        100,
        [
            "model.n_layers=2",
            "model.d_model=32",
            "model.n_heads=2",
            "train.steps=300",
            "train.batch_size=8",
            "train.seq_len=16",
            "eval.every=0",
            "eval.batches=1",
            "checkpoint.every=300",
        ],
        name="base",
    )
    train, evals = write_task(tmp / "train.jsonl", 256, 0), write_task(tmp / "eval.jsonl", 12, 1)
    corpus_task = tmp / "corpus_task.jsonl"  # pieces of the base's corpus: a plain run can continue them
    pairs = [("Q: abc\nA: ", "def"), ("Q: abc", "\nA: def"), ("bcd", "\nA: def"), ("Q: fed\nA: ", "cba")]
    corpus_task.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    full = tmp / "full"
    hyper = ["--steps", "150", "--batch-size", "32", "--lr", "1e-2", "--warmup-steps", "5"]
    assert main([str(a) for a in ["finetune", base, "--data", train, "--out", full, "--template", "qa", *hyper]]) == 0
    return {"base": base, "full": full, "train": train, "eval": evals, "corpus_task": corpus_task}


def test_template_formatting_and_loss_mask(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"prompt": "<{prompt}>=", "completion": "{completion}|"}))
    t = chat.resolve_template(str(path))
    assert t.end == "|" and t.name == "t"
    ex = chat.format_examples(t, [{"prompt": "ab", "completion": "cd"}], "x.jsonl")
    assert ex == [{"prompt": "<ab>=", "completion": "cd|"}]
    with pytest.raises(ConfigError, match="Unknown template 'nope'; use one of plain, qa"):
        chat.resolve_template("nope")
    assert chat.format_examples(chat.resolve_template("plain"), [{"prompt": "ab", "completion": "cd"}], "x.jsonl") == [
        {"prompt": "ab", "completion": "cd"}
    ]
    tok = CharTokenizer.from_text("<>=|abcd")
    data = encode_examples(ex, tok)
    ids = tok.encode("<ab>=cd|")
    np.testing.assert_array_equal(data["inputs"][0], ids[:-1])
    # Positions 0..3 predict the prompt's own tokens and its markers "ab>=": not scored; then "c", "d" and the end "|".
    np.testing.assert_array_equal(data["targets"][0], [-1, -1, -1, -1, *tok.encode("cd|")])


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "Q: ", "completion": "{completion}"}, "must contain {prompt} exactly once"),
        ({"prompt": "{prompt}{prompt}", "completion": "{completion}"}, "must contain {prompt} exactly once"),
        ({"prompt": "{prompt}", "completion": "A: {completion}"}, "must start with {completion}"),
        ({"prompt": "{prompt}"}, 'needs string "prompt" and "completion"'),
    ],
)
def test_bad_template_files(tmp_path, body, message):
    path = tmp_path / "t.yaml"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError, match=re.escape(message)):
        chat.resolve_template(str(path))


@pytest.mark.parametrize(
    "pieces, end, want",
    [
        (["ab<", "|en", "d|>cd<|end|>"], "<|end|>", "ab"),
        (["ab<|e", "nx", "yz"], "<|end|>", "ab<|enxyz"),
        (["a\n", "b"], "\n", "a"),
        (["ab", "cd"], "", "abcd"),
    ],
)
def test_until_end_stops_at_marker_across_pieces(pieces, end, want):
    got = list(chat.until_end(iter(pieces), end))
    assert "".join(got) == want
    assert chat.cut_at_end("".join(pieces), end) == want


def test_char_tokenizer_missing_template_characters_is_one_sentence(capsys, runs, tmp_path):
    code, out, err = run(
        capsys, "finetune", runs["base"], "--data", runs["train"], "--out", tmp_path / "o", "--template", "chatml"
    )
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "cannot encode" in err and "'<'" in err and "'|'" in err and "'a'" not in err
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ab", "completion": "a\nb"}) + "\n")
    code, _, err = run(capsys, "finetune", runs["base"], "--data", bad, "--out", tmp_path / "o", "--template", "qa")
    assert code == 2 and f"Example 1 of {bad} has a completion that contains the end marker" in err
    assert err.count("\n") == 1


def test_template_stored_and_applied_by_generate(capsys, runs):
    assert chat.run_template(runs["full"]) == chat.BUILTIN["qa"]
    assert json.loads((runs["full"] / "finetune.json").read_text())["template"] == "qa"
    assert chat.run_template(runs["base"]).is_plain  # nothing stored in a run trained without a template
    gen = ["--temperature", "0", "--max-new-tokens", "10"]
    code, templated, err = run(capsys, "generate", runs["full"], "--prompt", "bcd", *gen)
    assert code == 0, err
    code, raw, err = run(capsys, "generate", runs["full"], "--raw", "--prompt", "Q: bcd\nA: ", *gen)
    assert code == 0, err
    # The templated prompt fed the same tokens as the hand-templated raw one; it stops at the end marker "\n".
    prefix = "Q: bcd\nA: "
    assert raw.startswith(prefix) and templated.startswith(prefix)
    raw_completion = raw[len(prefix) :]
    assert "\n" in raw_completion.rstrip("\n")  # the raw continuation ran past the marker ...
    assert templated == prefix + raw_completion.split("\n", 1)[0] + "\n"  # ... the templated one stopped there
    assert templated == prefix + "bb\n"  # and it learned the task


def test_lora_adapters_inherit_the_template_and_merge_carries_it(capsys, runs, tmp_path):
    adapters, merged = tmp_path / "lora", tmp_path / "merged"
    code, out, err = run(
        capsys, "finetune", runs["full"], "--data", runs["train"], "--out", adapters, "--lora", "--steps", "2"
    )
    assert code == 0, err
    assert json.loads(out)["template"] == "qa" and chat.run_template(adapters) == chat.BUILTIN["qa"]
    code, _, err = run(capsys, "finetune", "merge", adapters, "--out", merged)
    assert code == 0, err
    assert (merged / chat.TEMPLATE_FILE).read_text() == (adapters / chat.TEMPLATE_FILE).read_text()
    code, _, err = run(
        capsys, "finetune", runs["full"], "--data", runs["train"], "--out", tmp_path / "p", "--steps", "1",
        "--template", "plain",
    )  # fmt: skip
    assert code == 0, err
    assert not (tmp_path / "p" / chat.TEMPLATE_FILE).exists()


def direct_scores(run_dir, eval_path):
    """EM and chrF from one-example-at-a-time greedy generation, cut by hand (the reference computation)."""
    sacrebleu = pytest.importorskip("sacrebleu")
    loaded, template = load_run(run_dir), chat.run_template(run_dir)
    refs, hyps = [], []
    for line in eval_path.read_text().splitlines():
        ex = json.loads(line)
        prompt = loaded.tokenizer.encode(template.format_prompt(ex["prompt"]))[None]
        n = len(ex["completion"]) + (len(template.end) + 8 if template.end else 0)  # char tokenizer: 1 token a char
        new = np.concatenate(list(generate(loaded.model, loaded.params, prompt, n, temperature=0.0)), axis=1)
        text = loaded.tokenizer.decode(new[0])
        hyps.append(text.split(template.end, 1)[0] if template.end else text)
        refs.append(ex["completion"])
    em = np.mean([h.strip() == r.strip() for h, r in zip(hyps, refs)])
    return em, sacrebleu.corpus_chrf(hyps, [refs]).score, hyps


@pytest.mark.parametrize("which, data, examples", [("full", "eval", 12), ("base", "corpus_task", 4)])
def test_eval_exact_match_and_chrf_match_a_direct_computation(capsys, runs, which, data, examples):
    em, chrf, hyps = direct_scores(runs[which], runs[data])
    assert em > 0.5, hyps  # the runs get most right, so a wrong token budget or cut would show
    code, out, err = run(capsys, "eval", runs[which], "--data", runs[data])
    assert code == 0, err
    got = json.loads(out)
    assert got["template"] == ("qa" if which == "full" else "plain") and got["examples"] == examples
    assert got["exact_match"] == pytest.approx(em) and got["chrf"] == pytest.approx(chrf, abs=1e-6)
    assert np.isfinite(got["completion_loss"]) and got["completion_loss"] > 0
