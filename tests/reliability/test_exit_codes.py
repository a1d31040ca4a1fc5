"""Exit codes tell scripts what happened: 0 finished, 2 a user mistake, 128 + signal when stopped after a checkpoint."""

import json
import os
import signal

import pytest

from slm_jax.cli import main
from slm_jax.rundir.checkpoint import latest_checkpoint_step
from slm_jax.training.tracking import MetricsLog
from tests.reliability.tiny import write_config


def signal_at_step(monkeypatch, signum, step):
    """Deliver ``signum`` to this process right after step ``step``'s loss is logged."""
    write = MetricsLog.write

    def write_then_signal(self, at, **metrics):
        write(self, at, **metrics)
        if at == step and "loss" in metrics:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(MetricsLog, "write", write_then_signal)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_train_exits_with_128_plus_the_signal_after_its_checkpoint(
    tmp_path, monkeypatch, capsys, signum, code
):
    config = write_config(tmp_path, train={"steps": 6}, eval={"every": 6})
    argv = ["train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    signal_at_step(monkeypatch, signum, 3)
    assert main(argv) == code
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])
    # the signal lands mid-step 3 (after its loss is logged), so the loop stops after step 4
    assert summary["stopped_by"] == signal.Signals(signum).name and summary["step"] == 4
    assert latest_checkpoint_step(tmp_path / "run") == 4
    monkeypatch.undo()
    assert main(argv) == 0  # finished: 0, and the summary says nothing stopped it
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["stopped_by"] is None


def test_a_stopped_sweep_exits_like_its_stopped_run(tmp_path, monkeypatch, capsys):
    write_config(tmp_path, train={"steps": 4})
    (tmp_path / "sweep.yaml").write_text("name: s\nbase: tiny.yaml\npoints: [{train.steps: 4}]\n")
    signal_at_step(monkeypatch, signal.SIGTERM, 2)
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"), "--no-progress"]) == 143
    assert "run the same sweep command again" in capsys.readouterr().err
