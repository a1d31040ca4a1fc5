"""A full, read-only or unwritable disk: one sentence, exit 2, no partial checkpoint folder, the last good one kept."""

import errno
import os
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from slm_jax.cli import main
from slm_jax.config import load_config
from slm_jax.rundir.checkpoint import Checkpointer
from slm_jax.training.tracking import MetricsLog
from slm_jax.training.train import train
from tests.reliability.tiny import losses, one_error_line, write_config


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The config (6 steps, checkpoints every 2) and its uninterrupted losses."""
    tmp = tmp_path_factory.mktemp("writes")
    config = write_config(tmp, train={"steps": 6}, eval={"every": 6})
    train(load_config(config), tmp / "full", progress=False)
    return config, losses(tmp / "full")


def saving_step(directory, step: int) -> bool:
    return any(part.startswith(f"{step}.orbax-checkpoint-tmp") for part in Path(directory).parts)


def train_argv(config, run) -> list[str]:
    return ["train", str(config), "--run-dir", str(run), "--no-progress"]


def assert_resumes_from_step_2(config, run, expected, capsys):
    """No partial folder is left, step 2 is intact, and training resumes from it to the uninterrupted losses."""
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]
    assert main(train_argv(config, run)) == 0
    assert "resuming at step 2" in capsys.readouterr().out and losses(run) == expected


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_failed_save_is_one_sentence_and_the_last_checkpoint_survives(
    full, tmp_path, monkeypatch, capsys, code, words
):
    config, expected = full
    save = ocp.CheckpointManager.save

    def failing(self, step, *args, **kwargs):
        if step != 4:
            return save(self, step, *args, **kwargs)
        partial = Path(self.directory) / "4.orbax-checkpoint-tmp" / "state"  # what a write cut short leaves
        partial.mkdir(parents=True)
        (partial / "_METADATA").write_text("{")
        raise OSError(code, os.strerror(code), str(partial / "_METADATA"))

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
    run = tmp_path / "run"
    assert main(train_argv(config, run)) == 2
    err = one_error_line(capsys)
    assert f"Saving the checkpoint of step 4 in {run / 'checkpoints'} failed: {words}" in err
    assert "resume from step 2, the last good checkpoint" in err
    if code == errno.ENOSPC:
        assert "a checkpoint of this run takes" in err and "was free" in err
    monkeypatch.undo()
    assert_resumes_from_step_2(config, run, expected, capsys)


class _FailedWrite:
    """A commit future whose write failed the way tensorstore reports a full disk."""

    def result(self, timeout=None):
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params.embed" in OCDBT database: No space left on device '
            "[os_error_code='28']"
        )


def test_a_full_disk_in_a_background_save_is_reported_at_the_next_wait(full, tmp_path, monkeypatch, capsys):
    config, expected = full
    async_save = ocp.StandardCheckpointHandler.async_save

    async def failing(self, directory, *args, **kwargs):
        futures = await async_save(self, directory, *args, **kwargs)
        return [*(futures or []), _FailedWrite()] if saving_step(directory, 4) else futures

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing)
    run = tmp_path / "run"
    assert main([*train_argv(config, run), "--set", "checkpoint.async_save=true"]) == 2
    assert "Saving the checkpoint of step 4" in one_error_line(capsys)
    monkeypatch.undo()
    assert_resumes_from_step_2(config, run, expected, capsys)


def test_a_full_disk_outside_the_checkpointer_is_one_sentence(full, tmp_path, monkeypatch, capsys):
    write = MetricsLog.write

    def failing(self, step, **metrics):
        if step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "metrics.jsonl"))
        return write(self, step, **metrics)

    monkeypatch.setattr(MetricsLog, "write", failing)
    assert main(train_argv(full[0], tmp_path / "run")) == 2
    assert f"Writing {tmp_path / 'run' / 'metrics.jsonl'} failed: no space left on device" in one_error_line(capsys)


def test_a_run_directory_under_a_regular_file_is_one_sentence(full, tmp_path, capsys):
    (tmp_path / "plain").write_text("not a directory")
    assert main(train_argv(full[0], tmp_path / "plain" / "run")) == 2
    assert f"{tmp_path / 'plain'} is a file, not a directory" in one_error_line(capsys)


def test_the_lock_holder_removes_the_partial_folder_of_a_killed_save(full, tmp_path):
    partial = tmp_path / "run" / "checkpoints" / "8.orbax-checkpoint-tmp"
    partial.mkdir(parents=True)
    Checkpointer(tmp_path / "run", every=2, keep=2).close()  # a reader leaves it: the writer may be alive
    assert partial.is_dir()
    Checkpointer(tmp_path / "run", every=2, keep=2, owner=True).close()
    assert not partial.exists()
