"""Parameters in a run's checkpoints, without a train state: ``save_params`` and ``restore_params``.

Readers of a run (eval, generate, export, quantize, fine-tune, a warm start) need only its
weights. ``restore_params`` reads the ``params`` and ``step`` items of a checkpoint against the
abstract parameter tree of the run's model (``models.lm.abstract_params``, or
``quant.params.abstract_quantized`` for a quantized run); the optimizer state on disk is not
read, and no optimizer is built. Tools that write a run of their own (convert, fine-tune,
quantize) save with ``save_params``: params and step, plus an optimizer state when the caller
gives one so that ``slm train`` can continue the run.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from slm_jax.array_typing import PyTree
from slm_jax.config import Config, to_dict
from slm_jax.errors import CheckpointError
from slm_jax.models.lm import abstract_params
from slm_jax.quant.params import abstract_quantized
from slm_jax.rundir.checkpoint import Checkpointer


def save_params(run_dir: str | Path, cfg: Config, params: PyTree, step: int, opt_state: PyTree = None) -> None:
    """Save ``{"params", "step"}`` (and ``opt_state`` when given) as the checkpoint of ``step`` in ``run_dir``."""
    state = {"params": params, "step": jnp.asarray(step, jnp.int32)}
    if opt_state is not None:
        state["opt_state"] = opt_state
    ck = cfg.checkpoint
    with Checkpointer(run_dir, ck.every, ck.keep, keep_best=False, async_save=False) as ckpt:
        ckpt.save(step, jax.device_get(state), {}, to_dict(cfg), force=True)


def restore_params(run_dir: str | Path, cfg: Config, best: bool = False, step: int | None = None) -> tuple[PyTree, int]:
    """(params, step) of the latest (or best, or ``step``'s) checkpoint of ``run_dir`` whose resolved config is ``cfg``.

    A damaged checkpoint is a CheckpointError naming it (rundir/checkpoint.py); nothing is moved.
    """
    run_dir = Path(run_dir)
    if best and step is not None:
        raise CheckpointError("Pass either --best or --step, not both.")
    params = abstract_quantized(cfg.model) if cfg.model.quant.bits else abstract_params(cfg.model)
    abstract = {"params": params, "step": jax.ShapeDtypeStruct((), jnp.int32)}
    ck = cfg.checkpoint
    with Checkpointer(run_dir, ck.every, ck.keep, ck.keep_best, async_save=False) as ckpt:
        if step is None and (ckpt.best_step() if best else ckpt.latest_step()) is None:
            which = "best " if best else ""
            raise CheckpointError(f"{run_dir} has no {which}checkpoint yet; train it first with `slm train`.")
        state, _, _ = ckpt.restore(abstract, step=step, best=best)
    return state["params"], int(state["step"])
