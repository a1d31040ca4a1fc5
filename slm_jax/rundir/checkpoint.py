"""Orbax checkpoints of a run: train state, data-iterator state and resolved config.

A run keeps its checkpoints in ``<run_dir>/checkpoints/<step>/``, each with three items:
``state`` (a pytree of arrays, written by tensorstore), ``data_state`` (the grain iterator
state, JSON) and ``config`` (the resolved config, JSON), plus the integrity records of
checkpoint_integrity.py (``checksums``, ``files.json``) that every restore verifies. Nothing is
pickled.

Retention uses ONE ``orbax.checkpoint.CheckpointManager`` whose preservation policy is
"latest ``keep`` OR best-by-``val_loss``" (``AnyPreservationPolicy(LatestN, BestN)``). A second
manager under ``checkpoints/best`` would write the best state twice and keep two histories in
step; with one manager the best step is simply a step Orbax declines to delete, its metric is
stored beside it (``<step>/metrics``), and it survives a restart without extra bookkeeping.
"""

from __future__ import annotations

import contextlib
import errno
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
import yaml
from orbax.checkpoint import checkpoint_managers

from slm_jax.array_typing import PyTree
from slm_jax.errors import CheckpointError, write_errno, write_failure
from slm_jax.rundir import checkpoint_integrity as integrity
from slm_jax.rundir.checkpoint_integrity import CHECKSUMS, Damaged

METRIC = "val_loss"


def _rank(metrics: dict | None) -> float:
    """Sort key of a checkpoint's metrics: its validation loss, +inf when it has none."""
    value = (metrics or {}).get(METRIC)
    return float(value) if value is not None and math.isfinite(value) else math.inf


def _set_aside(directory: Path, step: int, damage: Damaged, resuming: str) -> None:
    """Rename a damaged step folder (never delete it) and say so in one line on stderr."""
    moved = integrity.set_aside(directory / str(step), damage.reason)
    print(
        f"warning: the checkpoint at step {step} in {directory} is damaged ({damage}); "
        f"moved it to {moved.name}{resuming}.",
        file=sys.stderr,
        flush=True,
    )


def _remove_partial_saves(directory: Path) -> None:
    """Delete the ``<step>.orbax-checkpoint-tmp`` folders of saves that never finished (a kill, a full disk)."""
    for partial in directory.glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)


def _open_manager(
    directory: Path, keep: int | None, keep_best: bool, async_save: bool, read_only: bool = False, owner: bool = False
):
    """A CheckpointManager over ``directory`` with latest-``keep`` plus best retention.

    Orbax cannot open a directory in which a step's metrics file is unreadable: the ``owner``
    (the holder of the run's lock) sets such steps aside first and removes the
    ``<step>.orbax-checkpoint-tmp`` folders a killed save left; anyone else gets a CheckpointError.
    """
    for step, damage in integrity.unreadable_metrics(directory).items():
        if not owner:
            raise CheckpointError(
                f"The checkpoint at step {step} in {directory} is damaged ({damage}), "
                "so its directory cannot be opened; "
                f"resume the run with `slm train` (which sets damaged steps aside) or rename {directory / str(step)} "
                f"to {step}.damaged-metadata."
            )
        if jax.process_index() == 0:
            _set_aside(directory, step, damage, "")
    if owner and jax.process_index() == 0:
        _remove_partial_saves(directory)
    policies: list = [checkpoint_managers.LatestN(n=keep)]
    if keep_best:
        # reverse=True sorts descending, so BestN's kept tail is the lowest validation loss;
        # every step carries a metrics dict, so no step is kept merely for lacking one.
        policies.append(
            checkpoint_managers.BestN(get_metric_fn=_rank, reverse=True, n=1, keep_checkpoints_without_metrics=False)
        )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn is what makes Orbax write each step's metrics; ranking is done by _rank.
        best_fn=_rank,
        best_mode="min",
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
    )
    # Handlers named up front, so a fresh manager can read metadata before its first restore.
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "data_state": ocp.JsonCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        CHECKSUMS: ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _shapes(tree: PyTree) -> dict[str, tuple]:
    """Path -> shape of every array-like leaf, in flattening order."""
    return {path: tuple(getattr(leaf, "shape", ())) for path, leaf in integrity.array_leaves(tree)}


def _size(n: float) -> str:
    """``1.2 MB`` from a byte count."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _to_abstract(tree: PyTree) -> PyTree:
    """Concrete arrays become ShapeDtypeStructs (keeping their sharding) so restore never reads them."""

    def one(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct) or not hasattr(leaf, "dtype"):
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))

    return jax.tree.map(one, tree)


def _restore_items(item_dir: Path, abstract_state: PyTree) -> PyTree:
    """Only the top-level items of the saved state that ``abstract_state`` names (Orbax's partial restore).

    Leaves without a sharding are placed on the first device, as a full restore places them.
    Orbax reads only absolute paths, so a run directory given relative to the working directory is made absolute.
    """
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda a: a if getattr(a, "sharding", None) else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        abstract_state,
    )
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        return reader.restore(Path(item_dir).absolute(), args=args)


def _check_fits(saved: dict[str, tuple], wanted: dict[str, tuple], where: str) -> None:
    """Raise CheckpointError at the first parameter whose presence or shape differs."""
    fix = "use a fresh run directory or the config that made the checkpoint."
    # Report model parameters before their optimizer-state copies: that path names the layer.
    first = lambda item: not item[0].startswith("params")
    for path, shape in sorted(wanted.items(), key=first):
        if path not in saved:
            raise CheckpointError(
                f"{where} does not fit this model: it has no parameter {path} (shape {shape} here); {fix}"
            )
        if saved[path] != shape:
            raise CheckpointError(
                f"{where} does not fit this model: parameter {path} has shape {saved[path]} there but {shape} here; "
                f"{fix}"
            )
    for path, shape in sorted(saved.items(), key=first):
        if path not in wanted:
            raise CheckpointError(
                f"{where} does not fit this model: it has parameter {path} (shape {shape}) that this model lacks; {fix}"
            )


class Checkpointer:
    """Saves and restores a run's checkpoints under ``<run_dir>/checkpoints``.

    Keeps the latest ``keep`` steps plus, with ``keep_best``, the step with the lowest
    validation loss ever passed to :meth:`save`. Every save records the integrity data of
    checkpoint_integrity.py and every restore verifies it. A save that fails for want of space
    or permission is one CheckpointError (what, where, how much was needed), with its partial
    folder removed and the older checkpoints untouched. Usable as a context manager.

    Args:
      run_dir: the run directory.
      every: save when ``step % every == 0`` (or when forced).
      keep: how many of the most recent checkpoints to keep.
      keep_best: also keep the best checkpoint by validation loss beyond the ``keep`` window.
      async_save: write in a background thread; :meth:`save` returns once arrays are copied
        off the device buffers, so the caller may keep training and donate them.
      owner: this process holds the run directory's lock (rundir/run_lock.py), so it may change
        the directory: it removes the partial folders of a killed save, and when the latest step
        is damaged, :meth:`restore` sets it aside and resumes from the newest step that verifies.
    """

    def __init__(
        self,
        run_dir: str | Path,
        every: int,
        keep: int,
        keep_best: bool = True,
        async_save: bool = True,
        owner: bool = False,
    ):
        if every <= 0 or keep <= 0:
            raise CheckpointError(
                f"Checkpointer got every={every} and keep={keep}; "
                "set checkpoint.every and checkpoint.keep to positive integers."
            )
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        self.every, self.keep, self.keep_best = every, keep, keep_best
        self._primary = jax.process_index() == 0
        self._owner = owner
        self._unlisted: list[int] = []  # saved steps whose files.json is not written yet
        self._closed = False
        self._pending_bytes = 0  # array bytes of the save in flight, for a disk-full message
        self._manager = _open_manager(self.directory.absolute(), keep, keep_best, async_save, owner=owner)

    # ------------------------------------------------------------------ saving
    def save(
        self,
        step: int,
        state: PyTree,
        data_state: dict | None,
        config: dict,
        val_loss: float | None = None,
        force: bool = False,
    ) -> bool:
        """Save ``state``, ``data_state`` and ``config`` at ``step`` if due; return whether it saved.

        A save is due when ``force`` or ``step % every == 0``; a step already on disk is never
        overwritten (re-saving it returns False). ``val_loss`` (NaN counts as missing) ranks the
        step for the best checkpoint. The CRC-32 of every array is computed here, on the host.

        Raises:
          CheckpointError: the disk is full, read-only or not writable (this save or the one before).
        """
        step = int(step)
        if not (force or step % self.every == 0):
            return False
        self._finish_pending()  # Orbax would wait for the previous save here anyway
        if step in self._manager.all_steps():
            return False
        metrics = {METRIC: float(val_loss)} if val_loss is not None and math.isfinite(float(val_loss)) else {}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_state=ocp.args.JsonSave(dict(data_state or {})),
            config=ocp.args.JsonSave(config),
            **{CHECKSUMS: ocp.args.JsonSave(integrity.checksums(state))},
        )
        self._pending_bytes = sum(getattr(leaf, "nbytes", 0) for _, leaf in integrity.array_leaves(state))
        self._unlisted.append(step)
        # Our own `every` gating decided; force=True skips Orbax's interval policy.
        with self._write_guard(step):
            return bool(self._manager.save(step, args=args, metrics=metrics, force=True))

    def _finish_pending(self) -> None:
        """Wait for the save in flight, then record the file list of each step saved since the last call."""
        steps, self._unlisted = self._unlisted, []
        with self._write_guard(steps[-1] if steps else None):
            self._manager.wait_until_finished()
            for step in steps:
                step_dir = self.directory / str(step)
                if self._primary and step_dir.is_dir():  # retention may have removed it already
                    integrity.write_file_list(step_dir)

    @contextlib.contextmanager
    def _write_guard(self, step: int | None) -> Iterator[None]:
        """Turn a full, read-only or unwritable disk into one CheckpointError, removing the partial save."""
        try:
            yield
        except Exception as e:
            code = write_errno(e)
            if code is None:
                raise
            message = self._write_failure(step, code)  # before the cleanup, so "free" is what the write saw
            self._abandon_partial_save()
            raise CheckpointError(message) from None

    def _abandon_partial_save(self) -> None:
        """After a failed write: let Orbax's writers of that save stop, then delete its ``*.orbax-checkpoint-tmp``
        folders.

        The other items of a failed save keep writing in the background until they finish or fail
        too; deleting their folder before that would only see it recreated.
        """
        with contextlib.suppress(Exception), integrity.quiet_failed_io():
            self._manager.wait_until_finished()  # their errors repeat the one being reported
        if self._primary:
            _remove_partial_saves(self.directory)

    def _write_failure(self, step: int | None, code: int) -> str:
        """The one-sentence account of a failed write: what, where, space needed, and the step to resume from."""
        steps = [s for s in self._manager.all_steps() if s != step]
        detail = ""
        if code == errno.ENOSPC:
            free = shutil.disk_usage(self.directory).free
            if steps:  # the footprint of the newest complete checkpoint, in allocated blocks
                need = sum(
                    p.stat().st_blocks * 512 for p in (self.directory / str(max(steps))).rglob("*") if p.is_file()
                )
                detail = f" (a checkpoint of this run takes {_size(need)} on disk; {_size(free)} was free)"
            else:
                detail = f" (its arrays alone take {_size(self._pending_bytes)}; {_size(free)} was free)"
        then = (
            f", then run the same command to resume from step {max(steps)}, the last good checkpoint"
            if steps
            else ", then run the same command; no checkpoint was written yet"
        )
        what = (
            f"Saving the checkpoint of step {step} in {self.directory}"
            if step is not None
            else f"Writing checkpoints in {self.directory}"
        )
        return write_failure(what, code, detail, then)

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._finish_pending()

    def close(self) -> None:
        """Finish pending saves and release the manager's threads; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_pending()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    def all_steps(self) -> list[int]:
        """Saved steps, ascending, including one an asynchronous save is still writing."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the lowest validation loss (ties: the newer), or None if none had one.

        Waits for a pending save first: its metrics are read back from disk.
        """
        self.wait()
        ranked = [(_rank(self._manager.metrics(s)), -s) for s in self._manager.all_steps()]
        ranked = [r for r in ranked if math.isfinite(r[0])]
        return -min(ranked)[1] if ranked else None

    # ------------------------------------------------------------------ restoring
    def restore(self, abstract_state: PyTree, step: int | None = None, best: bool = False) -> tuple[PyTree, dict, dict]:
        """Restore ``(state, data_state, config)`` from ``step`` (default: latest, or best), verified.

        Args:
          abstract_state: the target tree, of ``jax.ShapeDtypeStruct`` (with shardings where
            the arrays should be placed) or concrete arrays. Top-level items of the saved state
            that it lacks are not read: ``{"params", "step"}`` reads the weights of a train state
            without its optimizer state, and a train state saved with the ``rng`` item that
            older versions kept restores into one without it.
          step: the step to restore; None picks the latest (or the best with ``best``).
          best: restore the best checkpoint by validation loss.

        When the latest step is damaged and this Checkpointer is the ``owner`` (a resuming
        trainer), the newest older step that verifies is restored instead and every damaged step
        above it renamed to ``<step>.damaged-<reason>``, with one warning line each on stderr.
        Nothing is renamed unless an older step verifies.

        Raises:
          CheckpointError: no such checkpoint, it was saved from a different architecture, or it
            is damaged (and no older one verifies, or this is not the owner's latest step).
        """
        self.wait()  # a step still being written cannot be read back
        step = self._pick_step(step, best)
        abstract_state = _to_abstract(abstract_state)
        try:
            return self._restore_verified(step, abstract_state)
        except Damaged as damage:
            if not (self._owner and step == self.latest_step()):
                raise CheckpointError(self._damaged_message(step, damage)) from None
            return self._restore_older(step, damage, abstract_state)

    def _restore_verified(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict, dict]:
        """Restore ``step`` after the checks of checkpoint_integrity.py; raise Damaged if one fails.

        A model that does not fit the checkpoint is the user's mistake, not damage: CheckpointError.
        """
        step_dir = self.directory / str(step)
        integrity.check_file_list(step_dir)
        try:
            with integrity.quiet_failed_io():
                saved_tree = self._manager.item_metadata(step)["state"]
                saved = _shapes(getattr(saved_tree, "tree", saved_tree))  # TreeMetadata wraps the tree in 0.12
                record = None
                if (step_dir / CHECKSUMS).is_dir():  # absent in checkpoints from before checksums
                    record = self._manager.restore(
                        step, args=ocp.args.Composite(**{CHECKSUMS: ocp.args.JsonRestore()})
                    )[CHECKSUMS]
        except Exception as e:  # any failure to read what Orbax wrote is damage
            raise Damaged("unreadable", f"its metadata cannot be read: {integrity.describe(e)}") from None
        if record is not None:
            integrity.check_structure(record, saved)
        elif not saved:
            raise Damaged("metadata", "its state metadata lists no arrays")
        wanted = _shapes(abstract_state)
        items = {path.split("/")[0] for path in wanted}
        read = {path: shape for path, shape in saved.items() if path.split("/")[0] in items}
        _check_fits(read, wanted, f"The checkpoint at step {step} in {self.directory}")
        args = {"data_state": ocp.args.JsonRestore(), "config": ocp.args.JsonRestore()}
        if read == saved:
            args["state"] = ocp.args.StandardRestore(abstract_state)
        try:
            with integrity.quiet_failed_io():
                restored = dict(self._manager.restore(step, args=ocp.args.Composite(**args)))
                if read != saved:
                    restored["state"] = _restore_items(step_dir / "state", abstract_state)
        except Exception as e:
            raise Damaged("unreadable", f"reading it failed: {integrity.describe(e)}") from None
        if record is not None:
            integrity.check_arrays(record, restored["state"])
        return restored["state"], dict(restored["data_state"] or {}), dict(restored["config"] or {})

    def _restore_older(self, step: int, damage: Damaged, abstract_state: PyTree) -> tuple[PyTree, dict, dict]:
        """The newest step below ``step`` that verifies; the damaged ones above it are set aside."""
        damaged = [(step, damage)]
        for older in sorted((s for s in self.all_steps() if s < step), reverse=True):
            try:
                restored = self._restore_verified(older, abstract_state)
            except Damaged as d:
                damaged.append((older, d))
                continue
            for bad, why in damaged:
                if self._primary:
                    _set_aside(self.directory, bad, why, f" and resuming from step {older}")
            self._manager.reload()
            return restored
        fix = "no older checkpoint verifies either" if len(damaged) > 1 else "there is no older checkpoint"
        raise CheckpointError(
            f"The checkpoint at step {step} in {self.directory} is damaged ({damage}) and {fix}; "
            "restore it from a backup, or move the step folders out of that directory to train again from step 0."
        )

    def _damaged_message(self, step: int, damage: Damaged) -> str:
        """What a reader is told about a damaged step: which, why, and the newest other step to use."""
        others = [s for s in self.all_steps() if s != step]
        fix = (
            f"the newest other checkpoint is step {max(others)}: pass --step {max(others)} (eval, generate), "
            "or resume training, which sets damaged steps aside"
            if others
            else "restore it from a backup"
        )
        return f"The checkpoint at step {step} in {self.directory} is damaged ({damage}); {fix}."

    def _pick_step(self, step: int | None, best: bool) -> int:
        steps = self.all_steps()
        if step is None:
            step = self.best_step() if best else self.latest_step()
            if step is None and best and steps:
                raise CheckpointError(
                    f"No checkpoint in {self.directory} has a validation loss; evaluate during training "
                    "(eval.every a multiple of checkpoint.every) or restore the latest instead of the best."
                )
            if step is None:
                raise CheckpointError(f"{self.directory} has no checkpoint yet; train the run first with `slm train`.")
        elif step not in steps:
            raise CheckpointError(
                f"{self.directory} has no checkpoint for step {step}; pass one of the saved steps {steps}."
            )
        return step


# ---------------------------------------------------------------------- run-directory helpers
def latest_checkpoint_step(run_dir: str | Path) -> int | None:
    """The newest checkpoint step in ``run_dir``, or None; creates nothing on disk."""
    directory = Path(run_dir).absolute() / "checkpoints"
    if not directory.is_dir():
        return None
    manager = _open_manager(directory, None, False, async_save=False, read_only=True)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def _config_from_checkpoint(directory: Path, step: int) -> dict:
    """The resolved config saved with ``step``; an unreadable one is a CheckpointError."""
    manager = _open_manager(directory, None, False, async_save=False, read_only=True)
    try:
        return dict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    except Exception as e:
        raise CheckpointError(
            f"The config saved with the checkpoint at step {step} in {directory} cannot be read "
            f"({integrity.describe(e)}); "
            "put the run's config.yaml back beside its checkpoints."
        ) from None
    finally:
        manager.close()


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config of a run: ``config.yaml`` if present, else the latest checkpoint's.

    Raises:
      CheckpointError: ``run_dir`` has neither, or its ``config.yaml`` is not a mapping.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if path.is_file():
        try:
            cfg = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise CheckpointError(
                f"{path} is not valid YAML ({e.__class__.__name__}); "
                "restore it or delete it to use the checkpoint's config."
            ) from None
        if not isinstance(cfg, dict):
            raise CheckpointError(
                f"{path} does not hold a config mapping; restore it or delete it to use the checkpoint's config."
            )
        return cfg
    step = latest_checkpoint_step(run_dir)
    if step is None:
        raise CheckpointError(
            f"{run_dir} has no config.yaml and no checkpoints, so it is not a run directory; "
            "pass the directory that `slm train` wrote (runs/<name> by default)."
        )
    return _config_from_checkpoint(run_dir.absolute() / "checkpoints", step)
