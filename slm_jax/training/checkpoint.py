"""Orbax checkpoints of a run: train state, data-iterator state and resolved config.

A run keeps its checkpoints in ``<run_dir>/checkpoints/<step>/``, each with three items:
``state`` (a pytree of arrays, written by tensorstore), ``data_state`` (the grain iterator
state, JSON) and ``config`` (the resolved config, JSON). Nothing is pickled.

Retention uses ONE ``orbax.checkpoint.CheckpointManager`` whose preservation policy is
"latest ``keep`` OR best-by-``val_loss``" (``AnyPreservationPolicy(LatestN, BestN)``). A second
manager under ``checkpoints/best`` would write the best state twice and keep two histories in
step; with one manager the best step is simply a step Orbax declines to delete, its metric is
stored beside it (``<step>/metrics``), and it survives a restart without extra bookkeeping.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
import yaml
from orbax.checkpoint import checkpoint_managers

from slm_jax.array_typing import PyTree
from slm_jax.errors import CheckpointError

METRIC = "val_loss"


def _rank(metrics: dict | None) -> float:
    """Sort key of a checkpoint's metrics: its validation loss, +inf when it has none."""
    value = (metrics or {}).get(METRIC)
    return float(value) if value is not None and math.isfinite(value) else math.inf


def _open_manager(directory: Path, keep: int | None, keep_best: bool, async_save: bool, read_only: bool = False):
    """A CheckpointManager over ``directory`` with latest-``keep`` plus best retention."""
    policies: list = [checkpoint_managers.LatestN(n=keep)]
    if keep_best:
        # reverse=True sorts descending, so BestN's kept tail is the lowest validation loss;
        # every step carries a metrics dict, so no step is kept merely for lacking one.
        policies.append(checkpoint_managers.BestN(get_metric_fn=_rank, reverse=True, n=1, keep_checkpoints_without_metrics=False))
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
    handlers = {"state": ocp.StandardCheckpointHandler(), "data_state": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _path_str(path: tuple) -> str:
    """``opt_state/0/mu/dense/kernel`` from a jax key path (namedtuple fields by name)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _shapes(tree: PyTree) -> dict[str, tuple]:
    """Path -> shape of every array-like leaf, in flattening order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {_path_str(p): tuple(getattr(leaf, "shape", ())) for p, leaf in leaves}


def _to_abstract(tree: PyTree) -> PyTree:
    """Concrete arrays become ShapeDtypeStructs (keeping their sharding) so restore never reads them."""

    def one(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct) or not hasattr(leaf, "dtype"):
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))

    return jax.tree.map(one, tree)


def _check_fits(saved: dict[str, tuple], wanted: dict[str, tuple], where: str) -> None:
    """Raise CheckpointError at the first parameter whose presence or shape differs."""
    fix = "use a fresh run directory or the config that made the checkpoint."
    # Report model parameters before their optimizer-state copies: that path names the layer.
    first = lambda item: not item[0].startswith("params")
    for path, shape in sorted(wanted.items(), key=first):
        if path not in saved:
            raise CheckpointError(f"{where} does not fit this model: it has no parameter {path} (shape {shape} here); {fix}")
        if saved[path] != shape:
            raise CheckpointError(
                f"{where} does not fit this model: parameter {path} has shape {saved[path]} there but {shape} here; {fix}"
            )
    for path, shape in sorted(saved.items(), key=first):
        if path not in wanted:
            raise CheckpointError(f"{where} does not fit this model: it has parameter {path} (shape {shape}) that this model lacks; {fix}")


class Checkpointer:
    """Saves and restores a run's checkpoints under ``<run_dir>/checkpoints``.

    Keeps the latest ``keep`` steps plus, with ``keep_best``, the step with the lowest
    validation loss ever passed to :meth:`save`. Usable as a context manager.

    Args:
      run_dir: the run directory.
      every: save when ``step % every == 0`` (or when forced).
      keep: how many of the most recent checkpoints to keep.
      keep_best: also keep the best checkpoint by validation loss beyond the ``keep`` window.
      async_save: write in a background thread; :meth:`save` returns once arrays are copied
        off the device buffers, so the caller may keep training and donate them.
    """

    def __init__(self, run_dir: str | Path, every: int, keep: int, keep_best: bool = True, async_save: bool = True):
        if every <= 0 or keep <= 0:
            raise CheckpointError(f"Checkpointer got every={every} and keep={keep}; set checkpoint.every and checkpoint.keep to positive integers.")
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        self.every, self.keep, self.keep_best = every, keep, keep_best
        self._manager = _open_manager(self.directory.absolute(), keep, keep_best, async_save)

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
        step for the best checkpoint.
        """
        step = int(step)
        if not (force or step % self.every == 0):
            return False
        if step in self._manager.all_steps():
            return False
        metrics = {METRIC: float(val_loss)} if val_loss is not None and math.isfinite(float(val_loss)) else {}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_state=ocp.args.JsonSave(dict(data_state or {})),
            config=ocp.args.JsonSave(config),
        )
        # Our own `every` gating decided; force=True skips Orbax's interval policy.
        return bool(self._manager.save(step, args=args, metrics=metrics, force=True))

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager's threads."""
        self._manager.wait_until_finished()
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
        """Restore ``(state, data_state, config)`` from ``step`` (default: latest, or best).

        Args:
          abstract_state: the target tree, of ``jax.ShapeDtypeStruct`` (with shardings where
            the arrays should be placed) or concrete arrays.
          step: the step to restore; None picks the latest (or the best with ``best``).
          best: restore the best checkpoint by validation loss.

        Raises:
          CheckpointError: no such checkpoint, or it was saved from a different architecture.
        """
        self.wait()  # a step still being written cannot be read back
        step = self._pick_step(step, best)
        where = f"The checkpoint at step {step} in {self.directory}"
        saved_tree = self._manager.item_metadata(step)["state"]
        saved_tree = getattr(saved_tree, "tree", saved_tree)  # TreeMetadata wraps the tree in 0.12
        abstract_state = _to_abstract(abstract_state)
        _check_fits(_shapes(saved_tree), _shapes(abstract_state), where)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_state=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], dict(restored["data_state"] or {}), dict(restored["config"] or {})

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
            raise CheckpointError(f"{self.directory} has no checkpoint for step {step}; pass one of the saved steps {steps}.")
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
    manager = _open_manager(directory, None, False, async_save=False, read_only=True)
    try:
        return dict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
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
            raise CheckpointError(f"{path} is not valid YAML ({e.__class__.__name__}); restore it or delete it to use the checkpoint's config.") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path} does not hold a config mapping; restore it or delete it to use the checkpoint's config.")
        return cfg
    step = latest_checkpoint_step(run_dir)
    if step is None:
        raise CheckpointError(
            f"{run_dir} has no config.yaml and no checkpoints, so it is not a run directory; "
            "pass the directory that `slm train` wrote (runs/<name> by default)."
        )
    return _config_from_checkpoint(run_dir.absolute() / "checkpoints", step)
