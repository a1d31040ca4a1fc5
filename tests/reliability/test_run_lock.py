"""One writer per run directory: a second trainer stops at once naming the holder; a dead holder's lock is free."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from slm_jax.cli import main
from slm_jax.rundir.run_lock import LOCK_FILE, RunDirLocked, acquire, run_lock
from tests.reliability.tiny import one_error_line, write_config

HOLD = (
    "import sys, time; from slm_jax.rundir.run_lock import acquire; "
    "acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)"
)


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of ``tmp_path / 'run'``; yields the Popen."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_train_stops_naming_the_holder_and_runs_once_the_holder_is_killed(tmp_path, holder, capsys):
    config = write_config(tmp_path, train={"steps": 2}, eval={"every": 2})
    argv = ["train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert f"PID {holder.pid} on {socket.gethostname()}" in err and "in use by another run" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # it stopped before touching anything

    holder.send_signal(signal.SIGKILL)  # the kernel drops the lock; the .lock file with the dead PID stays
    holder.wait()
    assert str(holder.pid) in (tmp_path / "run" / LOCK_FILE).read_text()
    assert main(argv) == 0
    assert (tmp_path / "run" / LOCK_FILE).read_text().split()[0] == str(os.getpid())


def test_distill_finetune_and_sweep_points_take_the_same_lock(tmp_path, holder, capsys):
    config = write_config(tmp_path)
    run = str(tmp_path / "run")
    assert main(["distill", str(config), "--teacher", str(tmp_path / "teacher"), "--run-dir", run]) == 2
    assert f"PID {holder.pid}" in one_error_line(capsys)
    (tmp_path / "ft.jsonl").write_text('{"prompt": "the", "completion": " cat"}\n')
    assert main(["finetune", str(tmp_path / "base"), "--data", str(tmp_path / "ft.jsonl"), "--out", run]) == 2
    assert f"PID {holder.pid}" in one_error_line(capsys)
    # a sweep whose only point's run directory is the locked one
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: s\nbase: {config.name}\npoints: [{{train.steps: 4}}]\n")
    (tmp_path / "out" / "runs").mkdir(parents=True)
    os.symlink(tmp_path / "run", tmp_path / "out" / "runs" / "steps=4")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert f"PID {holder.pid}" in one_error_line(capsys)


def test_the_lock_is_released_on_an_exception_and_is_not_reentrant(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "r"):
            with pytest.raises(RunDirLocked, match=f"PID {os.getpid()} on"):
                acquire(tmp_path / "r")  # a second descriptor, even in the same process, is refused
            raise RuntimeError("boom")
    os.close(acquire(tmp_path / "r"))  # free again


def test_only_the_primary_process_locks(tmp_path):
    with run_lock(tmp_path / "r", primary=False):
        assert not (tmp_path / "r").exists()
