"""A damaged newest checkpoint: named, moved aside (never deleted), and the run resumes from the step before it.

Every resume here must reproduce the uninterrupted run's losses exactly. Readers (eval, generate)
name the damaged step in one sentence and move nothing.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.config import config_from_dict, load_config
from slm_jax.errors import CheckpointError
from slm_jax.models.lm import CausalLM
from slm_jax.rundir.checkpoint import Checkpointer, read_run_config
from slm_jax.rundir.checkpoint_integrity import CHECKSUMS, FILE_LIST
from slm_jax.rundir.params import restore_params
from slm_jax.training.optim import make_optimizer
from slm_jax.training.step import init_state
from slm_jax.training.train import train
from tests.reliability.tiny import losses, write_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The config, the uninterrupted run's losses, and a run stopped at step 4 (checkpoints 2 and 4) to copy."""
    tmp = tmp_path_factory.mktemp("damage")
    config = write_config(tmp, train={"steps": 6}, eval={"every": 6})
    cfg = load_config(config)
    train(cfg, tmp / "full", progress=False)
    train(cfg, tmp / "template", until_step=4, progress=False)
    return {"cfg": cfg, "config": config, "full": losses(tmp / "full"), "template": tmp / "template"}


def copy_run(runs, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs["template"], run)
    return run


def array_data_file(step_dir: Path) -> Path:
    """The largest tensorstore data file of the step: where most of the weights' bytes are."""
    return max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file() and "d" in p.relative_to(step_dir).parts[:-1]),
        key=lambda p: p.stat().st_size,
    )


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_a_weight_byte(run: Path, step: int) -> None:
    """Flip one byte of the step's array data that lies in the parameters (what eval and generate read).

    Readers restore only ``params`` and ``step`` (rundir/params.py), so damage in the optimizer state is
    theirs to ignore and the trainer's to catch; where tensorstore put the weights is found by trial.
    """
    cfg = config_from_dict(read_run_config(run))
    step_dir = run / "checkpoints" / str(step)
    for path in sorted(
        p for p in (step_dir / "state").rglob("*") if p.is_file() and "d" in p.relative_to(step_dir).parts[:-1]
    ):
        data = path.read_bytes()
        for i in range(0, len(data), max(len(data) // 16, 1)):
            path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
            try:
                restore_params(run, cfg, step=step)
            except CheckpointError as e:
                if "CRC-32" in str(e):
                    return
            path.write_bytes(data)
    raise AssertionError(f"no byte of {step_dir}'s array data holds a weight")


def garble(path: Path) -> None:
    """Same length, different bytes: only a checksum can tell."""
    path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))


DAMAGE = {
    "truncated_data_file": (
        lambda step: os.truncate(array_data_file(step), array_data_file(step).stat().st_size // 2),
        "truncated",
    ),
    "deleted_state_dir": (lambda step: shutil.rmtree(step / "state"), "missing-file"),
    "deleted_orbax_metadata": (lambda step: (step / "_CHECKPOINT_METADATA").unlink(), "missing-file"),
    "garbled_state_metadata": (lambda step: garble(step / "state" / "_METADATA"), "metadata"),
    "flipped_weight_bytes": (lambda step: flip_middle_byte(array_data_file(step)), "checksum"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_skips_a_damaged_newest_checkpoint_and_matches_the_uninterrupted_run(runs, tmp_path, capsys, damage):
    run = copy_run(runs, tmp_path)
    hurt, reason = DAMAGE[damage]
    hurt(run / "checkpoints" / "4")
    summary = train(runs["cfg"], run, progress=False)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "step 4" in warning and "resuming from step 2" in warning, warning
    assert summary["step"] == 6 and losses(run) == runs["full"]  # exactly, every step
    moved = run / "checkpoints" / f"4.damaged-{reason}"
    assert moved.is_dir() and any(moved.iterdir())  # set aside, not deleted
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4", "6"]


def abstract_state(run_dir: Path):
    """The train-state shapes of a run, as ``slm train`` builds them."""
    cfg = config_from_dict(read_run_config(run_dir))
    model, tc = CausalLM(cfg.model), cfg.train
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, tc.seq_len), np.int32)))
    optimizer, _ = make_optimizer(cfg.optim, tc.steps, params)
    return jax.eval_shape(lambda: init_state(model, optimizer, tc.seed, tc.seq_len)), cfg


def restore(run_dir: Path, **kwargs):
    """(state, data_state, config) of the latest checkpoint that a Checkpointer(**kwargs) restores."""
    target, cfg = abstract_state(run_dir)
    ck = cfg.checkpoint
    with Checkpointer(run_dir, ck.every, ck.keep, async_save=False, **kwargs) as ckpt:
        return ckpt.restore(target)


def test_every_file_of_a_step_deleted_or_garbled_is_detected(runs, tmp_path, capsys):
    """Each file of step 4 (Orbax's metadata, tensorstore's, ours) deleted or garbled: step 2 comes back bit for bit."""
    good = tmp_path / "good"
    shutil.copytree(runs["template"], good)
    shutil.rmtree(good / "checkpoints" / "4")
    expected_state, expected_data_state, _ = restore(good)
    step_dir = runs["template"] / "checkpoints" / "4"
    files = sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file())
    assert {
        "_CHECKPOINT_METADATA",
        "state/_METADATA",
        "state/_sharding",
        "state/manifest.ocdbt",
        "config/metadata",
        "data_state/metadata",
        f"{CHECKSUMS}/metadata",
        "metrics/metrics",
        FILE_LIST,
    } <= set(files)
    cases = [("delete", name) for name in files if name != FILE_LIST]  # no file list = saved before lists (test below)
    cases += [("garble", name) for name in files if "d" not in Path(name).parts[:-1]]  # array data: the CRC test above
    for how, name in cases:
        run = tmp_path / f"{how}-{name.replace('/', '_')}"
        shutil.copytree(runs["template"], run)
        path = run / "checkpoints" / "4" / name
        path.unlink() if how == "delete" else garble(path)
        state, data_state, _ = restore(run, owner=True)
        same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), state, expected_state)
        assert all(jax.tree.leaves(same)) and data_state == expected_data_state, (how, name)
        assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("4.damaged-")], (how, name)
        assert "step 4" in capsys.readouterr().err, (how, name)


def test_a_checkpoint_without_integrity_records_still_restores(runs, tmp_path):
    """Steps saved before checksums and file lists existed: the structure check alone, then Orbax's reads."""
    run = copy_run(runs, tmp_path)
    shutil.rmtree(run / "checkpoints" / "4" / CHECKSUMS)
    (run / "checkpoints" / "4" / FILE_LIST).unlink()
    state, _, _ = restore(run, owner=True)
    assert int(state["step"]) == 4 and (run / "checkpoints" / "4").is_dir()


# In the full suite each case took ~75 s (4-7 s alone; to be found): two of the three readers run with -m slow.
@pytest.mark.parametrize(
    "command",
    [
        ["eval"],
        pytest.param(["eval", "--step", "4"], marks=pytest.mark.slow),
        pytest.param(["generate", "--prompt", "the", "--step", "4"], marks=pytest.mark.slow),
    ],
)
def test_readers_name_the_damaged_step_in_one_sentence_and_move_nothing(runs, tmp_path, capsys, command):
    run = copy_run(runs, tmp_path)
    flip_a_weight_byte(run, 4)
    assert main([command[0], str(run), *command[1:]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert "step 4" in err and "is damaged" in err and "CRC-32" in err and "--step 2" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]


def test_unreadable_metrics_stop_readers_and_are_set_aside_by_the_trainer(runs, tmp_path, capsys):
    """Orbax reads every step's metrics when it opens the directory: the trainer sets such a step aside first."""
    run = copy_run(runs, tmp_path)
    (run / "checkpoints" / "4" / "metrics" / "metrics").write_bytes(b"{\xff")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step 4" in err and "metrics" in err and "4.damaged-metadata" in err
    train(runs["cfg"], run, progress=False)
    assert losses(run) == runs["full"] and (run / "checkpoints" / "4.damaged-metadata").is_dir()


def test_nothing_is_moved_when_no_older_checkpoint_verifies(runs, tmp_path, capsys):
    run = copy_run(runs, tmp_path)
    for step in ("2", "4"):
        flip_middle_byte(array_data_file(run / "checkpoints" / step))
    with pytest.raises(CheckpointError, match="step 4 .* is damaged .* no older checkpoint verifies either"):
        train(runs["cfg"], run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]


@pytest.mark.slow
def test_killed_at_random_moments_the_run_still_reproduces_the_uninterrupted_losses(tmp_path):
    """SIGKILL `slm train` at random times (mid-step, mid-save) until it finishes; the losses equal one clean run's."""
    config = write_config(
        tmp_path, train={"steps": 80}, eval={"every": 80}, checkpoint={"every": 5, "async_save": True}
    )
    cfg = load_config(config)
    train(cfg, tmp_path / "full", progress=False)
    argv = [
        sys.executable,
        "-m",
        "slm_jax.cli",
        "train",
        str(config),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    rng, kills = random.Random(0), 0
    while True:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(4.0, 12.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read()
        break
    assert kills >= 1 and losses(tmp_path / "run") == losses(tmp_path / "full")
    assert not list((tmp_path / "run" / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
