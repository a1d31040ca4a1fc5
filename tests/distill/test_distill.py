"""Distillation end to end: a transformer teacher run teaches a Griffin student; precomputed top-k
logits equal on-the-fly ones; a vocabulary mismatch is a clear error; the CLI."""

import json

import jax
import numpy as np
import pytest
import yaml

from slm_jax.cli import main
from slm_jax.config import config_from_dict
from slm_jax.distill.loss import make_distill_loss_fn
from slm_jax.distill.precompute import teacher_topk, window_starts
from slm_jax.distill.train import distill
from slm_jax.errors import ConfigError, DataError
from slm_jax.inference.run import load_run
from slm_jax.training.tracking import read_metrics
from slm_jax.training.train import train

TEXT = "".join(
    f"{w} {v}\n" for w, v in zip(["to be", "or not", "that is", "the question"] * 150, ["so", "ho", "lo"] * 200)
)


def raw(data_path, preset="transformer", **train):
    return {
        "name": "t",
        "model": {"preset": preset, "n_layers": 3 if preset == "griffin" else 1, "d_model": 32, "n_heads": 2},
        "data": {"path": str(data_path), "cache_dir": str(data_path.parent / "cache")},
        "train": {"steps": 30, "batch_size": 8, "seq_len": 16, "log_every": 1, **train},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "eval": {"every": 0, "batches": 2},
        "checkpoint": {"every": 100},
        "distill": {"alpha": 0.2, "temperature": 2.0},
    }


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    (root / "corpus.txt").write_text(TEXT)
    train(config_from_dict(raw(root / "corpus.txt", steps=60)), root / "teacher", progress=False)
    return root


def test_griffin_student_learns_from_a_transformer_teacher_which_stays_frozen(teacher):
    before = load_run(teacher / "teacher").params
    cfg = config_from_dict(raw(teacher / "corpus.txt", preset="griffin"))
    summary = distill(cfg, teacher / "teacher", teacher / "griffin", progress=False)
    kl = [m["kl"] for m in read_metrics(teacher / "griffin") if "kl" in m]
    assert len(kl) == 30 and np.mean(kl[-5:]) < 0.5 * np.mean(kl[:5])  # the student moves towards the teacher
    assert summary["step"] == 30 and np.isfinite(summary["val_loss"]) and summary["teacher_params"] > 0
    after = load_run(teacher / "teacher").params
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_precomputed_topk_with_k_equal_vocab_gives_the_on_the_fly_loss(teacher):
    run = load_run(teacher / "teacher")
    student_cfg = config_from_dict(
        raw(teacher / "corpus.txt", preset="griffin"), [f"model.vocab_size={run.cfg.model.vocab_size}"]
    )
    from slm_jax.models.lm import CausalLM

    student = CausalLM(student_cfg.model)
    params = student.init(jax.random.key(3), np.zeros((1, 16), np.int32))
    vocab = run.cfg.model.vocab_size
    tokens = run.tokenizer.encode(TEXT[:17])  # one window of t + 1 tokens: its rows are the teacher's own context
    values, indices = teacher_topk(run, tokens, vocab, context=len(tokens), dtype="float32")
    batch = {"tokens": tokens[None], "values": values[None, :16], "indices": indices[None, :16]}
    for top_k in (0, vocab):
        fly = make_distill_loss_fn(student, run.model, 0.3, 2.0, top_k)(params, tokens[None], run.params)[0]
        stored = make_distill_loss_fn(student, None, 0.3, 2.0)(params, batch)[0]
        assert float(stored) == pytest.approx(float(fly), rel=1e-5)


def test_each_position_reads_the_teacher_window_it_was_assigned(teacher):
    run = load_run(teacher / "teacher")
    tokens = run.tokenizer.encode(TEXT[:100])
    ctx = np.arange(100) - window_starts(100, 16)  # default stride 8: 8 to 15 tokens of context after the first window
    assert ctx[16:].min() == 8 and ctx.max() == 15
    starts = window_starts(100, 16, stride=5)  # 11 to 15 tokens of context
    ctx = np.arange(100) - starts
    assert ctx[16:].min() == 11 and ctx.max() == 15 and (np.diff(starts) >= 0).all() and starts.max() == 100 - 16
    values, indices = teacher_topk(run, tokens, 4, context=16, stride=5, batch_size=3, dtype="float32")
    for p in (0, 9, 40, 77, 99):
        s = starts[p]
        logits = np.asarray(run.model.apply(run.params, tokens[None, s : s + 16])[0][0, p - s])
        np.testing.assert_allclose(values[p], np.sort(logits)[::-1][:4], rtol=1e-5, atol=1e-5)
        assert indices[p][0] == logits.argmax()


def test_another_vocabulary_is_a_clear_error(teacher, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper())  # other characters: another char vocabulary
    with pytest.raises(DataError, match="another tokenizer"):
        distill(config_from_dict(raw(other)), teacher / "teacher", tmp_path / "s", progress=False)
    n = load_run(teacher / "teacher").cfg.model.vocab_size
    with pytest.raises(ConfigError, match="model.vocab_size"):
        distill(
            config_from_dict(raw(teacher / "corpus.txt"), [f"model.vocab_size={n + 5}"]),
            teacher / "teacher",
            tmp_path / "v",
            progress=False,
        )
    with pytest.raises(ConfigError, match="train.curriculum"):
        distill(
            config_from_dict(raw(teacher / "corpus.txt"), ["train.curriculum=[[8, 2]]"]),
            teacher / "teacher",
            tmp_path / "c",
            progress=False,
        )


def test_cli_precompute_then_distill_from_stored_logits(teacher, tmp_path, capsys):
    out = tmp_path / "top4"
    assert (
        main(["distill", "precompute", "--teacher", str(teacher / "teacher"), "--out", str(out), "--top-k", "4"]) == 0
    )
    meta = json.loads(capsys.readouterr().out)
    assert meta["top_k"] == 4 and np.load(out / "values.npy").shape == (meta["n_tokens"], 4)
    config = tmp_path / "student.yaml"
    config.write_text(yaml.safe_dump(raw(teacher / "corpus.txt", steps=5)))
    argv = [
        "distill",
        str(config),
        "--teacher",
        str(teacher / "teacher"),
        "--run-dir",
        str(tmp_path / "s"),
        "--no-progress",
        "--set",
        f"distill.precomputed={out}",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])  # after the progress messages
    assert summary["step"] == 5 and "teacher_params" not in summary  # the teacher was not loaded
    assert all(np.isfinite(m["kl"]) for m in read_metrics(tmp_path / "s") if "kl" in m)
    assert main(["distill", str(config), "--run-dir", str(tmp_path / "n"), "--set", "distill.teacher="]) == 2
    assert "--teacher" in capsys.readouterr().err
