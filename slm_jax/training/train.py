"""``train(config, run_dir)``: one linear function in labelled sections around a pure step.

Everything a run writes lives in ``run_dir``: ``config.yaml`` (resolved), ``run.json``
(commit, versions, devices), ``metrics.jsonl``, TensorBoard events in ``tb/`` and Orbax
checkpoints. Re-running on the same directory resumes from its latest checkpoint and
reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
import optax

from slm_jax.config import Config, replace, to_dict, to_yaml
from slm_jax.data.pipeline import eval_batches, train_batches
from slm_jax.data.source import Dataset, load_dataset
from slm_jax.data.synthetic import task_batches
from slm_jax.data.task_data import compact_labels, head_fraction, load_task, n_labels
from slm_jax.data.task_data import val_sets as task_val_sets
from slm_jax.data.tokenizers import save_tokenizer
from slm_jax.errors import CheckpointError, ConfigError, SlmError
from slm_jax.eval.perplexity import evaluate
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM
from slm_jax.training.checkpoint import Checkpointer, read_run_config
from slm_jax.training.hardware import peak_flops
from slm_jax.training.optim import make_optimizer
from slm_jax.training.step import init_state, make_eval_step, make_train_step
from slm_jax.training.tracking import MetricsLog, Progress, write_run_record


class TrainingDiverged(SlmError):
    """The loss or the parameters became NaN/Inf."""


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / cfg.name


def with_data_vocab(cfg: Config, data: Dataset) -> Config:
    """Take ``model.vocab_size`` from the data when it is 0; refuse one too small for the data."""
    vocab = int(data.meta["vocab_size"])
    if cfg.model.vocab_size == 0:
        return replace(cfg, **{"model.vocab_size": vocab})
    if cfg.model.vocab_size < vocab:
        raise ConfigError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the data's vocabulary ({vocab}); "
            "set model.vocab_size=0 to take it from the data."
        )
    return cfg


def check_resumable(run_dir: Path, cfg: Config, has_checkpoint: bool) -> None:
    """A run directory with checkpoints may only be resumed by the same model."""
    if not has_checkpoint:
        return
    old = read_run_config(run_dir).get("model", {})
    new = to_dict(cfg.model)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        k = diff[0]
        raise CheckpointError(
            f"{run_dir} holds checkpoints of a different model (model.{k} is {old.get(k)!r} there, "
            f"{new[k]!r} now); pass a new --run-dir or the config that made it."
        )


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag, so the loop can save a checkpoint and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _finite(state) -> bool:
    return bool(np.isfinite(jax.device_get(optax.tree.norm(state["params"]))))


def train(cfg: Config, run_dir: str | Path | None = None, *, until_step: int | None = None, progress: bool = True) -> dict:
    """Train ``cfg`` in ``run_dir`` (default ``runs/<name>``); return a summary dict.

    ``until_step`` stops early after that step with a checkpoint, as a preemption would; the
    next call resumes. SIGINT/SIGTERM do the same at the next step boundary.
    """
    # ---------------------------------------------------------------- run directory & data
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = load_task(cfg) if cfg.data.task.name else None
    if task is None:
        data = load_dataset(cfg.data)
        cfg = with_data_vocab(cfg, data)
    tc = cfg.train
    ckpt = Checkpointer(run_dir, cfg.checkpoint.every, cfg.checkpoint.keep, cfg.checkpoint.keep_best, cfg.checkpoint.async_save)
    check_resumable(run_dir, cfg, ckpt.latest_step() is not None)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if task is None:
        save_tokenizer(data.tokenizer, run_dir / "tokenizer.json")  # generate/eval need no data dir

    # ---------------------------------------------------------------- model, optimizer, state
    model = CausalLM(cfg.model)
    init = lambda opt: init_state(model, opt, tc.seed, tc.seq_len)
    abstract_params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, tc.seq_len), np.int32)))
    optimizer, schedule = make_optimizer(cfg.optim, tc.steps, abstract_params)
    data_state = None
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(jax.eval_shape(lambda: init(optimizer)))
    else:
        state = jax.jit(init, static_argnums=0)(optimizer)
    start = int(jax.device_get(state["step"]))

    # ---------------------------------------------------------------- data iterators
    # Text: i32[b, t + 1] windows. Task: compact labels, so logits are computed only where scored.
    eval_batch = cfg.eval.batch_size or tc.batch_size
    if task is None:
        batches = train_batches(data.train, tc.batch_size, tc.seq_len, tc.seed)
        to_step_batch = lambda batch: batch
        batch_spec = jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len + 1), np.int32)
        val_sets = {"": eval_batches(data.val, eval_batch, tc.seq_len, cfg.eval.batches)}
        unit = {"char": "char", "byte": "byte"}.get(data.meta.get("tokenizer"), "token")
    else:
        m = n_labels(task.train)
        batches = task_batches(task.train, tc.batch_size, tc.seed)
        to_step_batch = lambda batch: compact_labels(batch, m)
        batch_spec = {"inputs": jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len), np.int32),
                      **{k: jax.ShapeDtypeStruct((tc.batch_size, m), np.int32) for k in ("label_positions", "labels")}}
        val_sets = task_val_sets(task, eval_batch, cfg.eval.batches)
        unit = "token"
    if data_state:
        batches.set_state(data_state)

    # ---------------------------------------------------------------- compile (timed apart)
    t0 = time.perf_counter()
    step_fn = jax.jit(make_train_step(model, optimizer, schedule, tc.z_loss, tc.grad_accum), donate_argnums=0)
    step_fn = step_fn.lower(state, batch_spec).compile()
    eval_fn = jax.jit(make_eval_step(model))
    compile_s = time.perf_counter() - t0

    # ---------------------------------------------------------------- accounting & tracking
    info = accounting.summary(cfg.model, tc.seq_len, head_fraction(cfg))
    peak = peak_flops(cfg.model.dtype, tc.peak_flops) * jax.device_count()
    write_run_record(run_dir, {**info, "compile_s": compile_s, "peak_flops": peak, "resumed_from": start})
    log = MetricsLog(run_dir, resume_step=start)
    bar = Progress(tc.steps, initial=start, disable=not progress)
    bar.write(
        f"{cfg.name}: {info['params']:,} params, {info['flops_per_token'] / 1e6:.1f} MFLOP/token, "
        f"compiled in {compile_s:.1f}s" + (f", resuming at step {start}" if start else "")
    )

    # ---------------------------------------------------------------- loop
    end = min(tc.steps, until_step) if until_step else tc.steps
    stop = StopRequest()
    tokens_per_step = tc.batch_size * tc.seq_len
    step_time, timed_steps, last_log, t_mark = 0.0, 0, start, time.perf_counter()
    last, val = {}, {}
    try:
        for step in range(start + 1, end + 1):
            state, metrics = step_fn(state, to_step_batch(next(batches)))
            final = step == end or stop.requested
            if step % tc.log_every == 0 or final:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                step_time += now - t_mark
                timed_steps += step - last_log
                dt = (now - t_mark) / (step - last_log)
                last_log = step
                if not math.isfinite(last["loss"]):
                    raise TrainingDiverged(
                        f"The loss became {last['loss']} at step {step}; the last good checkpoint "
                        f"(step {ckpt.latest_step()}) is kept. Lower optim.lr or set optim.grad_clip."
                    )
                tok_s = tokens_per_step / dt
                log.write(step, loss=last["loss"], accuracy=last["accuracy"], grad_norm=last["grad_norm"], lr=last["lr"],
                          tokens_per_s=tok_s, ms_per_step=1e3 * dt, mfu=info["flops_per_token"] * tok_s / peak)
                bar.update(step, loss=f"{last['loss']:.4f}", tok_s=f"{tok_s:,.0f}")
            val = {}
            if (cfg.eval.every and step % cfg.eval.every == 0) or step == tc.steps:
                for suffix, val_batches in val_sets.items():
                    val.update({k + suffix: v for k, v in evaluate(eval_fn, state["params"], val_batches, unit).items()})
                log.write(step, **val)
                bar.write(f"step {step}: val_loss {val['val_loss']:.4f} " + (
                    f"({val[f'val_bits_per_{unit}']:.3f} bits/{unit})" if task is None
                    else "val_accuracy " + ", ".join(f"{val['val_accuracy' + suffix]:.3f}{suffix}" for suffix in val_sets)))
            if step % cfg.checkpoint.every == 0 or final:
                if not _finite(state):
                    raise TrainingDiverged(
                        f"The parameters became NaN/Inf by step {step}; the last good checkpoint "
                        f"(step {ckpt.latest_step()}) is kept. Lower optim.lr or set optim.grad_clip."
                    )
                ckpt.save(step, state, batches.get_state(), to_dict(cfg), val_loss=val.get("val_loss"), force=final)
            t_mark = time.perf_counter()  # evaluation and checkpoint time is not step time
            if stop.requested:
                bar.write(f"Stopped at step {step} with a checkpoint; run the same command again to resume.")
                break
    finally:
        stop.restore()
        ckpt.wait()
        ckpt.close()
        log.close()
        bar.close()

    ms = 1e3 * step_time / max(timed_steps, 1)
    return {
        "run_dir": str(run_dir),
        "step": int(jax.device_get(state["step"])),
        "loss": last.get("loss"),
        **{k: v for k, v in val.items()},
        "ms_per_step": ms,
        "tokens_per_s": tokens_per_step * 1e3 / ms if ms else None,
        "compile_s": compile_s,
        "seq_len": tc.seq_len,
        **info,
    }
