"""End-to-end training: loss goes down, resume equals uninterrupted, errors are clear."""

import json
import math
import os
import signal

import jax
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.errors import CheckpointError, ConfigError, DataError
from slm_jax.inference.run import restore_params
from slm_jax.rundir.checkpoint import latest_checkpoint_step, read_run_config
from slm_jax.training.loop import TrainingDiverged
from slm_jax.training.tracking import MetricsLog, read_metrics
from slm_jax.training.train import train


def corpus(tmp_path, n=20000):
    words = ["to be", "or not", "that is", "the question", "whether tis", "nobler"]
    text = "".join(f"{words[i % 6]} {words[(i * 5) % 6]}\n" for i in range(n // 16))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def tiny_cfg(tmp_path, *overrides):
    return config_from_dict(
        {
            "name": "t",
            "model": {"n_layers": 2, "d_model": 32, "n_heads": 2},
            "data": {"path": str(corpus(tmp_path)), "cache_dir": str(tmp_path / "cache")},
            "train": {"steps": 40, "batch_size": 8, "seq_len": 32, "log_every": 1},
            "optim": {"lr": 1e-2, "warmup_steps": 5},
            "eval": {"every": 20, "batches": 4},
            "checkpoint": {"every": 10, "keep": 2},
        },
        list(overrides),
    )


def losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def test_short_run_lowers_loss_and_writes_run_dir(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_cfg(tmp_path), run, progress=False)
    l = losses(run)
    assert sorted(l) == list(range(1, 41))
    assert sum(list(l.values())[-5:]) / 5 < sum(list(l.values())[:5]) / 5 - 0.5
    for name in ("config.yaml", "run.json", "metrics.jsonl", "tokenizer.json"):
        assert (run / name).is_file(), name
    assert (run / "tb").is_dir()
    vals = [m for m in read_metrics(run) if "val_loss" in m]
    assert [m["step"] for m in vals] == [20, 40] and math.isfinite(vals[-1]["val_loss"])
    assert summary["step"] == 40 and summary["params"] > 0 and summary["flops_per_token"] > 0
    record = json.loads((run / "run.json").read_text())
    assert "jax" in json.dumps(record)


def test_kill_and_resume_reproduces_losses(tmp_path):
    cfg = tiny_cfg(tmp_path)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", until_step=13, progress=False)  # "killed" after step 13
    assert max(losses(tmp_path / "split")) == 13
    train(cfg, tmp_path / "split", progress=False)  # same command again resumes
    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(split) == sorted(full)
    for step in full:
        assert split[step] == pytest.approx(full[step], rel=1e-6, abs=1e-6), step


def signal_at_step(n):
    """A MetricsLog.write that sends SIGTERM after logging step ``n``'s loss: mid-step, before the checkpoint."""
    write = MetricsLog.write

    def write_then_signal(self, step, **metrics):
        write(self, step, **metrics)
        if step == n and "loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    return write_then_signal


def test_a_signal_during_a_step_stops_at_the_next_step_with_a_checkpoint(tmp_path, monkeypatch):
    """SIGTERM (preemption) lands anywhere in a step; the run must stop with a checkpoint it can resume."""
    monkeypatch.setattr(MetricsLog, "write", signal_at_step(5))
    cfg = tiny_cfg(tmp_path, "train.steps=12", "checkpoint.every=100")
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["step"] == 6 and latest_checkpoint_step(tmp_path / "run") == 6
    monkeypatch.undo()
    train(cfg, tmp_path / "run", progress=False)
    train(cfg, tmp_path / "full", progress=False)
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "run")
    assert sorted(resumed) == sorted(full) == list(range(1, 13))
    assert all(resumed[s] == pytest.approx(full[s], rel=1e-6, abs=1e-6) for s in full)


def test_grad_accumulation_matches_full_batch(tmp_path):
    a = train(tiny_cfg(tmp_path, "train.steps=5"), tmp_path / "a", progress=False)
    b = train(tiny_cfg(tmp_path, "train.steps=5", "train.grad_accum=2"), tmp_path / "b", progress=False)
    for step, loss in losses(tmp_path / "a").items():
        assert losses(tmp_path / "b")[step] == pytest.approx(loss, rel=1e-4)
    assert a["step"] == b["step"] == 5


def test_diverging_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.lr=1e12", "optim.grad_clip=0", "optim.warmup_steps=0", "train.steps=40")
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):  # it diverges before the first save
        train(cfg, tmp_path / "nan", progress=False)


def test_resuming_with_another_model_is_refused(tmp_path):
    train(tiny_cfg(tmp_path, "train.steps=10"), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="model.d_model"):
        train(tiny_cfg(tmp_path, "train.steps=10", "model.d_model=64"), tmp_path / "r", progress=False)


def test_init_from_warm_starts_the_weights_of_another_run(tmp_path):
    train(tiny_cfg(tmp_path, "train.steps=30"), tmp_path / "a", progress=False)
    cfg = lambda *o: tiny_cfg(tmp_path, "train.steps=3", "train.seq_len=16", f"train.init_from={tmp_path / 'a'}", *o)
    train(cfg("optim.frozen=[params]"), tmp_path / "frozen", progress=False)  # every weight frozen
    source = restore_params(tmp_path / "a", config_from_dict(read_run_config(tmp_path / "a")))[0]
    kept = restore_params(tmp_path / "frozen", config_from_dict(read_run_config(tmp_path / "frozen")))[0]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(source), jax.tree.leaves(kept)))
    train(cfg(), tmp_path / "b", progress=False)
    fresh = train(tiny_cfg(tmp_path, "train.steps=3", "train.seq_len=16"), tmp_path / "fresh", progress=False)
    assert sorted(losses(tmp_path / "b")) == [1, 2, 3]  # a fresh step counter and schedule
    assert losses(tmp_path / "b")[1] < losses(tmp_path / "fresh")[1] - 0.5 and fresh["step"] == 3
    with pytest.raises(ConfigError, match="model.d_model"):
        train(cfg("model.d_model=64"), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="not a run directory"):
        train(tiny_cfg(tmp_path, f"train.init_from={tmp_path / 'nowhere'}"), tmp_path / "d", progress=False)


def test_curriculum_trains_short_stages_first_and_resumes_without_retraining_them(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "train.steps=4", "train.curriculum=[[16, 30]]")
    run, stage = tmp_path / "run", tmp_path / "run" / "stage1_len16"
    monkeypatch.setattr(MetricsLog, "write", signal_at_step(5))
    stopped = train(cfg, run, progress=False)  # SIGTERM in the stage stops the whole run
    assert stopped["step"] == 0 and stopped["stopped_in"] == str(stage) and latest_checkpoint_step(run) is None
    assert latest_checkpoint_step(stage) == 6
    monkeypatch.undo()
    train(cfg, run, until_step=2, progress=False)  # the rest of the stage, then 2 main steps ("killed")
    assert read_run_config(stage)["train"]["seq_len"] == 16 and sorted(losses(stage)) == list(range(1, 31))
    stage_log = (stage / "metrics.jsonl").read_text()
    train(cfg, run, progress=False)  # resumes the main run; the finished stage is left alone
    assert (stage / "metrics.jsonl").read_text() == stage_log
    assert sorted(losses(run)) == [1, 2, 3, 4] and read_run_config(run)["train"]["curriculum"] == [[16, 30]]
    fresh = tiny_cfg(tmp_path, "train.steps=4")
    train(fresh, tmp_path / "fresh", progress=False)
    assert losses(run)[1] < losses(tmp_path / "fresh")[1] - 0.5  # the main run starts from the stage's weights
    with pytest.raises(ConfigError, match=r"\[seq_len, steps\] pairs"):
        tiny_cfg(tmp_path, "train.curriculum=[[16]]")


def test_bad_data_inputs(tmp_path):
    with pytest.raises(DataError):
        train(tiny_cfg(tmp_path, f"data.path={tmp_path / 'missing.txt'}"), tmp_path / "m", progress=False)
    with pytest.raises(DataError, match="seq_len"):
        train(tiny_cfg(tmp_path, "train.seq_len=100000"), tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="vocab_size"):
        train(tiny_cfg(tmp_path, "model.vocab_size=3"), tmp_path / "v", progress=False)
