"""slm finetune --task classify: an encoder and a decoder learn a separable task; pooling reads only valid
tokens; slm eval / slm predict on the output; bad labelled JSONL is one sentence naming file and line."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.finetune.classify import class_logits, load_classifier, pad, scores
from slm_jax.modules.heads import pool
from tests.tiny_runs import run_cli as run
from tests.tiny_runs import train_text_run

LETTERS = "abcdefgh"
TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "train.batch_size=8", "train.seq_len=16"]
TINY += ["train.steps=4", "eval.every=0", "eval.batches=1", "checkpoint.every=4"]


def write_task(path, n, seed):
    """Texts of 3-9 random letters; the label says whether an 'x' is among them (a rule no base run knows)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = list(rng.choice(list(LETTERS), rng.integers(3, 10)))
            has_x = bool(rng.integers(2))
            if has_x:
                word[rng.integers(len(word))] = "x"
            f.write(json.dumps({"text": "".join(word), "label": "x" if has_x else "none"}) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classify")
    phrase = "abc defgh xab hgx "
    (tmp / "enc").mkdir()
    (tmp / "dec").mkdir()
    encoder = train_text_run(
        tmp / "enc", phrase, 50, [*TINY, "model.preset=distilbert_like", "train.objective=mlm"], name="encoder"
    )
    decoder = train_text_run(tmp / "dec", phrase, 50, TINY, name="decoder")
    return {
        "encoder": encoder,
        "decoder": decoder,
        "train": write_task(tmp / "train.jsonl", 384, 0),
        "val": write_task(tmp / "val.jsonl", 128, 1),
    }


@pytest.mark.parametrize(
    "base, extra",
    [("encoder", []), ("decoder", ["--lora", "--rank", "4", "--targets", "mixer/(qkv|o)$|mlp"])],
)
def test_classifier_learns_a_separable_task_and_eval_predict_read_it(runs, base, extra, capsys, tmp_path):
    out = tmp_path / "clf"
    args = ["finetune", runs[base], "--task", "classify", "--data", runs["train"], "--out", out, *extra]
    hyper = ["--steps", "120", "--batch-size", "32", "--lr", "1e-2", "--warmup-steps", "5"]
    code, stdout, err = run(capsys, *args, *hyper)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["pooling"] == ("mean" if base == "encoder" else "last")
    assert summary["labels"] == ["none", "x"]
    code, stdout, err = run(capsys, "eval", out, "--data", runs["val"])
    assert code == 0, err
    result = json.loads(stdout)
    assert result["accuracy"] > 0.9 and result["macro_f1"] > 0.9, result
    code, stdout, err = run(capsys, "predict", out, "--text", "abxcd")
    assert code == 0, err
    pred = json.loads(stdout)
    assert pred["label"] == "x" and pred["probabilities"]["x"] > 0.5
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_pooling_reads_only_valid_tokens():
    hidden = jax.random.normal(jax.random.key(0), (2, 5, 3))
    lengths = jnp.array([2, 5])
    garbage = hidden.at[0, 2:].set(1e3)  # row 0's padding changes; its pooled vector must not
    for pooling in ("mean", "last", "cls"):
        a, b = pool(hidden, lengths, pooling), pool(garbage, lengths, pooling)
        np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(pool(hidden, lengths, "mean")[0], hidden[0, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pool(hidden, lengths, "last")[0], hidden[0, 1])


def test_a_padded_encoder_batch_classifies_each_text_as_alone(runs, capsys, tmp_path):
    out = tmp_path / "clf"
    code, _, err = run(
        capsys, "finetune", runs["encoder"], "--task", "classify", "--data", runs["train"], "--out", out, "--steps", "1"
    )
    assert code == 0, err
    clf = load_classifier(out)
    rows = [np.asarray(clf.tokenizer.encode(t), np.int32) for t in ("abx", "abcdefgh")]
    batch = {k: jnp.asarray(v) for k, v in pad(rows).items()}
    together = class_logits(clf.model, clf.head, clf.params, batch)
    alone = class_logits(
        clf.model, clf.head, clf.params, {"inputs": batch["inputs"][:1, :3], "lengths": batch["lengths"][:1]}
    )
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)


def test_macro_f1_averages_per_class_f1():
    pred, gold = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    s = scores(pred, gold, 3)
    # class 0: tp 1, 2+2 -> 0.5; class 1: tp 2, 3+2 -> 0.8; class 2: tp 0, 0+1 -> 0
    assert s["accuracy"] == pytest.approx(0.6) and s["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


@pytest.mark.parametrize(
    "line, needle",
    [
        ("{not json", "Line 2 of"),
        ('{"text": "abc"}', 'Line 2 of .* no string or integer "label"'),
        ('{"label": "x"}', 'Line 2 of .* no non-empty string "text"'),
    ],
)
def test_bad_training_lines_name_file_and_line(runs, line, needle, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "abc", "label": "none"}\n' + line + "\n")
    args = ["finetune", runs["decoder"], "--task", "classify", "--data", bad, "--out", tmp_path / "o"]
    code, _, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(needle, err) and str(bad) in err
    assert not (tmp_path / "o").exists()


def test_unseen_validation_label_and_cls_on_a_decoder_are_refused(runs, capsys, tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text('{"text": "abc", "label": "none"}\n{"text": "abd", "label": "maybe"}\n')
    args = ["finetune", runs["decoder"], "--task", "classify", "--data", runs["train"], "--steps", "1"]
    code, _, err = run(capsys, *args, "--eval-data", val, "--out", tmp_path / "o1")
    assert code == 2 and f"Line 2 of {val} has the label 'maybe'" in err
    code, _, err = run(capsys, *args, "--pooling", "cls", "--out", tmp_path / "o2")
    assert code == 2 and "--pooling last or mean" in err
