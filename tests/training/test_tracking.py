"""Run tracking: metrics.jsonl (strict JSON, resume truncation), TensorBoard, progress bar, run.json."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.errors import CheckpointError
from slm_jax.rundir.record import write_run_record
from slm_jax.training.tracking import MetricsLog, Progress, read_metrics


def test_metrics_lines_are_strict_json_including_nan(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.write(1, loss=np.float32(2.5), lr=jnp.array(1e-3), accuracy=0.25, tag="warmup")
        log.write(2, loss=float("nan"), grad_norm=float("inf"))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # parse_constant rejects bare NaN/Infinity tokens, so this only passes for strict JSON
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}")) for line in lines]
    assert records[0] == {"step": 1, "loss": 2.5, "lr": pytest.approx(1e-3), "accuracy": 0.25, "tag": "warmup"}
    assert type(records[0]["loss"]) is float and type(records[0]["step"]) is int
    back = read_metrics(tmp_path)
    assert math.isnan(back[1]["loss"]) and back[1]["grad_norm"] == math.inf


def test_resume_drops_records_past_resume_step(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for step in range(1, 8):
            log.write(step, loss=10.0 - step)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # a kill mid-write leaves a torn last line
    with MetricsLog(tmp_path, resume_step=4, tensorboard=False) as log:
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
        log.write(5, loss=0.5)
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == [1, 2, 3, 4, 5]
    assert read_metrics(tmp_path)[-1]["loss"] == 0.5
    MetricsLog(tmp_path, resume_step=0, tensorboard=False).close()  # fresh start in a reused dir
    assert read_metrics(tmp_path) == []


def test_tensorboard_events_written(tmp_path):
    with MetricsLog(tmp_path, tensorboard=True) as log:
        log.write(1, loss=1.0, note="text is skipped")
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_read_metrics_missing_dir_and_corrupt_middle_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metrics(tmp_path / "nope")
    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(CheckpointError, match="line 2"):
        read_metrics(tmp_path)


def test_progress_updates_and_writes(capsys):
    bar = Progress(10, initial=3, disable=True)
    bar.update(5, loss="1.23", tok_s="1,000")
    bar.update(5)
    assert bar.step == 5
    bar.write("hello from the loop")
    bar.close()
    assert "hello from the loop" in capsys.readouterr().out


def test_progress_bar_shows_postfix(tmp_path):
    with open(tmp_path / "bar.txt", "w") as f:
        bar = Progress(10, initial=2, file=f)
        bar.update(4, loss="2.5000")
        bar.close()
    text = (tmp_path / "bar.txt").read_text()
    assert "loss=2.5000" in text and "4/10" in text


def test_run_record_has_the_keys(tmp_path):
    record = write_run_record(tmp_path, {"params": np.int64(123), "mfu": float("nan")})
    on_disk = json.loads((tmp_path / "run.json").read_text())
    assert on_disk == record
    for key in ("git", "versions", "platform", "backend", "devices", "command", "time_utc"):
        assert key in on_disk, key
    assert set(on_disk["git"]) == {"commit", "dirty"}
    for pkg in ("python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "slm_jax"):
        assert on_disk["versions"][pkg], pkg
    assert on_disk["devices"] and on_disk["devices"][0]["platform"]
    assert on_disk["params"] == 123 and on_disk["mfu"] == "NaN"
    again = write_run_record(tmp_path, {"resumed_from": 10})
    assert again["previous_launches"][0]["time_utc"] == record["time_utc"]
