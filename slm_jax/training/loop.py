"""The step loop every trainer shares (``slm train``, ``slm distill``): they differ only in their step.

``run_loop`` reads top to bottom: setup, then the step loop calling the trainer's compiled
``step_fn(state, batch) -> (state, metrics)`` (``LoopParts``) for steps ``start + 1 .. end``, with the
hooks ``_log_step``, ``_evaluate`` and ``_checkpoint``. Around the step it does what every run does:
metrics to ``metrics.jsonl`` and TensorBoard, the progress bar, validation every ``eval.every`` steps, checkpoints every
``checkpoint.every`` steps and at the end, a checkpoint and a clean exit on SIGINT/SIGTERM (the
summary's ``stopped_by`` names the signal; ``exit_code`` turns it into 130 / 143), and a clear
error when the loss or the parameters stop being finite. Device placement goes through ``par``
(training/parallel.py), so the loop reads the same on one device, pmap or a Mesh.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np
import optax

from slm_jax.array_typing import PyTree
from slm_jax.config import Config, to_dict
from slm_jax.errors import ConfigError, SlmError
from slm_jax.eval.perplexity import evaluate, mixture_metrics
from slm_jax.rundir.checkpoint import Checkpointer
from slm_jax.rundir.record import write_run_record
from slm_jax.training.hardware import peak_flops
from slm_jax.training.parallel import Single
from slm_jax.training.tracking import MetricsLog, Progress


class TrainingDiverged(SlmError):
    """The loss or the parameters became NaN/Inf."""


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag, so the loop can save a checkpoint and exit cleanly.

    ``signal`` is the name of the last signal received (``"SIGTERM"``), or None.
    """

    def __init__(self):
        self.signal: str | None = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def exit_code(summary: dict) -> int:
    """The process exit code for a run's summary: 128 + the signal that stopped it (130 SIGINT, 143 SIGTERM), else 0."""
    stopped_by = summary.get("stopped_by")
    return 128 + signal.Signals[stopped_by].value if stopped_by else 0


def _diverged(what: str, step: int, ckpt: Checkpointer) -> TrainingDiverged:
    last = ckpt.latest_step()
    kept = f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
    return TrainingDiverged(f"{what} at step {step}; {kept}. Lower optim.lr or set optim.grad_clip.")


def _check_until_step(until_step: int | None, start: int) -> None:
    """``--until-step`` must be positive and not below the step the run already reached."""
    if until_step is not None and until_step <= 0:
        raise ConfigError(f"--until-step must be a positive step number, got {until_step}.")
    if until_step is not None and until_step < start:
        raise ConfigError(
            f"--until-step {until_step} is below step {start}, which this run already reached; "
            "pass a later step or drop --until-step."
        )


def _close_all(*resources, quiet: bool) -> None:
    """Close every resource even if one fails; raise the first failure unless ``quiet`` (the loop failed
    already, and its error is the one to report)."""
    errors = []
    for resource in resources:
        try:
            resource.close()
        except Exception as e:
            errors.append(e)
    if errors and not quiet:
        raise errors[0]


@dataclass(frozen=True)
class LoopParts:
    """What a trainer brings to the shared loop; everything else comes from the config.

    Attributes:
      step_fn: compiled ``(state, batch) -> (state, metrics)``; metrics hold at least loss, accuracy, grad_norm, lr.
      batches: a grain iterator (its state is checkpointed); ``to_step_batch`` maps its items to ``step_fn``'s batch.
      eval_fn: ``eval_step(params, batch)`` (step.py).
      val_sets: metric-name suffix -> validation batches (``""`` for the training length).
      unit: what a token is, for bits per unit (``char``, ``byte`` or ``token``).
      info: accounting (params, flops_per_token, ...) plus ``compile_s``; written to ``run.json``.
      report_accuracy: print validation accuracy per suffix instead of bits per unit (tasks).
      extra_metrics: keys of the step metrics logged besides the usual four (e.g. ``ce``, ``kl``).
      val_weights: a mixture's weight per validation-set suffix: the unsuffixed metrics are their weighted mean.
    """

    step_fn: Callable
    batches: Iterator
    eval_fn: Callable
    val_sets: dict[str, list]
    unit: str
    info: dict
    to_step_batch: Callable = lambda batch: batch
    report_accuracy: bool = False
    extra_metrics: tuple[str, ...] = ()
    val_weights: dict[str, float] = field(default_factory=dict)


class StepClock:
    """Wall time of training steps, measured at log points; evaluation and checkpoint time is left out.

    Steps are dispatched asynchronously, so the wait at a log point (reading the metrics) covers the steps queued
    since the previous one.
    """

    def __init__(self, step: int):
        self.seconds, self.steps, self.since, self.mark = 0.0, 0, step, time.perf_counter()

    def lap(self, step: int) -> float:
        """Seconds per step since the last lap; adds them to the run's total."""
        now = time.perf_counter()
        self.seconds += now - self.mark
        self.steps += step - self.since
        per_step = (now - self.mark) / (step - self.since)
        self.since = step
        return per_step

    def restart(self) -> None:
        """Start timing the next step (called after each step's evaluation and checkpoint)."""
        self.mark = time.perf_counter()

    def ms_per_step(self) -> float:
        return 1e3 * self.seconds / max(self.steps, 1)


def _log_step(step: int, metrics: dict, per_step: float, cfg: Config, parts: LoopParts, peak: float, log, bar):
    """The step's metrics (host floats) and throughput -> metrics.jsonl, TensorBoard and the progress bar."""
    tok_s = cfg.train.batch_size * cfg.train.seq_len / per_step
    log.write(
        step,
        **{k: metrics[k] for k in ("loss", "accuracy", "grad_norm", "lr", *parts.extra_metrics)},
        tokens_per_s=tok_s,
        ms_per_step=1e3 * per_step,
        mfu=parts.info["flops_per_token"] * tok_s / peak,
    )
    bar.update(step, loss=f"{metrics['loss']:.4f}", tok_s=f"{tok_s:,.0f}")


def _evaluate(step: int, params: PyTree, parts: LoopParts, log, bar) -> dict:
    """Validation metrics on every validation set, logged and printed."""
    val = {}
    for suffix, val_batches in parts.val_sets.items():
        val.update({k + suffix: v for k, v in evaluate(parts.eval_fn, params, val_batches, parts.unit).items()})
    if parts.val_weights:
        val.update(mixture_metrics(val, parts.val_weights, parts.unit))
    log.write(step, **val)
    if parts.report_accuracy:
        shown = "val_accuracy " + ", ".join(f"{val['val_accuracy' + s]:.3f}{s}" for s in parts.val_sets)
    else:
        shown = f"({val[f'val_bits_per_{parts.unit}']:.3f} bits/{parts.unit})"
    bar.write(f"step {step}: val_loss {val['val_loss']:.4f} {shown}")
    return val


def _checkpoint(step: int, saveable: PyTree, cfg: Config, parts: LoopParts, ckpt, par, val: dict, final: bool) -> None:
    """Save ``saveable`` and the data iterator's state, refusing parameters that are no longer finite."""
    if not np.isfinite(par.host(optax.tree.norm(saveable["params"]))):
        raise _diverged("The parameters became NaN/Inf", step, ckpt)
    ckpt.save(step, saveable, parts.batches.get_state(), to_dict(cfg), val_loss=val.get("val_loss"), force=final)


def run_loop(
    cfg: Config,
    run_dir: Path,
    ckpt: Checkpointer,
    state: PyTree,
    parts: LoopParts,
    *,
    par: Single,
    until_step: int | None = None,
    progress: bool = True,
) -> dict:
    """Train from ``state["step"]`` to ``cfg.train.steps`` (or ``until_step``); return the run's summary.

    ``cfg``'s ``train``, ``eval`` and ``checkpoint`` sections drive the loop; ``run_dir`` receives ``run.json`` and
    ``metrics.jsonl``; ``ckpt`` is closed on return; ``state`` (step.py) is placed by ``par`` (training/parallel.py).
    """
    # ---------------------------------------------------------------- setup
    tc = cfg.train
    start = int(par.host(state["step"]))
    _check_until_step(until_step, start)
    end = min(tc.steps, until_step) if until_step else tc.steps
    info = parts.info
    peak = peak_flops(cfg.model.dtype, tc.peak_flops) * jax.device_count()
    write_run_record(run_dir, {**info, "peak_flops": peak, "resumed_from": start, "parallel": par.strategy})
    log = MetricsLog(run_dir, resume_step=start)
    bar = Progress(tc.steps, initial=start, disable=not (progress and jax.process_index() == 0))
    bar.write(
        f"{cfg.name}: {info['params']:,} params, {info['flops_per_token'] / 1e6:.1f} MFLOP/token, "
        f"compiled in {info['compile_s']:.1f}s" + (f", resuming at step {start}" if start else "")
    )
    stop, clock = StopRequest(), StepClock(start)
    last, val, stopped_by, failed = {}, {}, None, True

    # ---------------------------------------------------------------- the step loop
    try:
        for step in range(start + 1, end + 1):
            state, metrics = parts.step_fn(state, par.batch(parts.to_step_batch(next(parts.batches))))
            stopping = stop.requested  # read once: a signal arriving later in this step is handled at the next one
            final = step == end or stopping
            if step % tc.log_every == 0 or final:
                last = {k: float(v) for k, v in par.host(metrics).items()}
                per_step = clock.lap(step)
                if not math.isfinite(last["loss"]):
                    raise _diverged(f"The loss became {last['loss']}", step, ckpt)
                _log_step(step, last, per_step, cfg, parts, peak, log, bar)
            val = {}
            if (cfg.eval.every and step % cfg.eval.every == 0) or step == tc.steps:
                val = _evaluate(step, par.saveable(state)["params"], parts, log, bar)
            if step % cfg.checkpoint.every == 0 or final:
                _checkpoint(step, par.saveable(state), cfg, parts, ckpt, par, val, final)
            clock.restart()
            if stopping:
                bar.write(f"Stopped at step {step} with a checkpoint; run the same command again to resume.")
                stopped_by = stop.signal
                break
        failed = False
    finally:
        stop.restore()
        _close_all(
            ckpt, log, bar, quiet=failed
        )  # ckpt.close waits for the last save; a failed one is a CheckpointError

    # ---------------------------------------------------------------- summary
    ms = clock.ms_per_step()
    return {
        "run_dir": str(run_dir),
        "step": int(par.host(state["step"])),
        "loss": last.get("loss"),
        **val,
        "ms_per_step": ms,
        "tokens_per_s": tc.batch_size * tc.seq_len * 1e3 / ms if ms else None,
        "seq_len": tc.seq_len,
        "stopped_by": stopped_by,  # "SIGINT" / "SIGTERM" when a signal ended the run early
        **info,
    }
