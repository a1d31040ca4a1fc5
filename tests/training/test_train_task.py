"""Training on a generated task: compact labels, accuracy per eval length, resume, clear errors."""

import json

import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.config import config_from_dict
from slm_jax.data.synthetic import TaskSource
from slm_jax.data.task_data import compact_labels, n_labels
from slm_jax.errors import ConfigError
from slm_jax.training.tracking import read_metrics
from slm_jax.training.train import train


def task_cfg(tmp_path, *overrides):
    return config_from_dict(
        {
            "name": "task",
            "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "vocab_size": 16},
            "data": {
                "task": {"name": "induction_heads", "train_examples": 512, "val_examples": 32, "eval_lengths": [64]}
            },
            "train": {"steps": 12, "batch_size": 8, "seq_len": 32, "log_every": 1},
            "optim": {"lr": 3e-3, "warmup_steps": 2},
            "eval": {"every": 6, "batches": 2},
            "checkpoint": {"every": 4},
        },
        list(overrides),
    )


def test_compact_labels_keeps_scored_positions_in_order():
    batch = {
        "inputs": np.arange(12).reshape(2, 6),
        "targets": np.array([[-1, 5, -1, 7, -1, -1], [9, -1, -1, -1, -1, -1]]),
    }
    out = compact_labels(batch, 2)
    np.testing.assert_array_equal(out["label_positions"], [[1, 3], [0, 0]])
    np.testing.assert_array_equal(out["labels"], [[5, 7], [9, -1]])  # the short row is padded unscored
    assert n_labels(TaskSource("mqar", 0, "train", 4, 64, 64, n_pairs=5)) == 5


def test_task_run_reports_accuracy_per_length_and_writes_no_tokenizer(tmp_path):
    summary = train(task_cfg(tmp_path), tmp_path / "run", progress=False)
    assert 0.0 <= summary["val_accuracy"] <= 1.0 and 0.0 <= summary["val_accuracy@64"] <= 1.0
    assert summary["val_tokens"] == 16 and summary["val_tokens@64"] == 16  # one scored position per example
    assert not (tmp_path / "run" / "tokenizer.json").exists()
    evals = [m for m in read_metrics(tmp_path / "run") if "val_accuracy@64" in m]
    assert [m["step"] for m in evals] == [6, 12]


def test_task_run_resumes_with_the_same_losses(tmp_path):
    cfg = task_cfg(tmp_path)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", until_step=5, progress=False)
    train(cfg, tmp_path / "split", progress=False)
    full = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "full") if "loss" in m}
    split = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "split") if "loss" in m}
    assert all(abs(full[s] - split[s]) < 1e-6 for s in range(6, 13))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.vocab_size=0"], "model.vocab_size"),
        (["data.synthetic=arithmetic"], "only one"),
        (["data.task.name=mqa"], "mqar"),
        (["data.task.name=mqar", "data.task.n_pairs=20"], "n_pairs"),
    ],
)
def test_task_config_mistakes_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(task_cfg(tmp_path, *overrides), tmp_path / "run", progress=False)


def test_slm_eval_scores_a_task_run_and_generate_explains_it_has_no_text(tmp_path, capsys):
    cfg = task_cfg(tmp_path, "train.steps=6")
    summary = train(cfg, tmp_path / "run", progress=False)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--batches", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_accuracy@64"] == pytest.approx(summary["val_accuracy@64"])
    assert main(["generate", str(tmp_path / "run"), "--prompt", "x"]) == 2
    assert "slm eval" in capsys.readouterr().err
