"""``train(config, run_dir)``: one linear function in labelled sections around a pure step.

Everything a run writes lives in ``run_dir``: ``config.yaml`` (resolved), ``run.json``
(commit, versions, devices), ``metrics.jsonl``, TensorBoard events in ``tb/`` and Orbax
checkpoints. Re-running on the same directory resumes from its latest checkpoint and
reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.config import Config, ModelConfig, config_from_dict, replace, to_dict
from slm_jax.data.pipeline import eval_batches, mixture_batches, train_batches
from slm_jax.data.source import Dataset, load_sources
from slm_jax.data.synthetic import task_batches
from slm_jax.data.task_data import compact_labels, head_fraction, load_task, n_labels
from slm_jax.data.task_data import val_sets as task_val_sets
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, abstract_params
from slm_jax.rundir.checkpoint import Checkpointer, latest_checkpoint_step, read_run_config
from slm_jax.rundir.files import write_config, write_tokenizer
from slm_jax.rundir.params import restore_params
from slm_jax.rundir.run_lock import run_lock
from slm_jax.training.loop import LoopParts, run_loop
from slm_jax.training.mlm import mask_batch, n_masked
from slm_jax.training.optim import make_optimizer
from slm_jax.training.parallel import make_parallel
from slm_jax.training.step import init_state, make_eval_step, make_train_step


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


def model_difference(run_dir: Path, cfg: Config) -> str:
    """ "" if ``run_dir`` was trained with ``cfg.model``, else the first differing key, both values."""
    # A key the saved config lacks was added to slm_jax later: it had its default then.
    old = {**to_dict(ModelConfig()), **read_run_config(run_dir).get("model", {})}
    new = to_dict(cfg.model)
    diff = [k for k in new if old.get(k) != new[k]]
    return f"model.{diff[0]} is {old.get(diff[0])!r} there, {new[diff[0]]!r} now" if diff else ""


def check_resumable(run_dir: Path, cfg: Config, has_checkpoint: bool) -> None:
    """A run directory with checkpoints may only be resumed by the same model."""
    diff = model_difference(run_dir, cfg) if has_checkpoint else ""
    if diff:
        raise CheckpointError(
            f"{run_dir} holds checkpoints of a different model ({diff}); "
            "pass a new --run-dir or the config that made it."
        )


def warm_start_params(source: str | Path, cfg: Config) -> PyTree:
    """``train.init_from``: the latest parameters of run ``source``, which must hold ``cfg.model``.

    For length curricula and progressive training: the new run keeps only the weights (its
    optimizer, step counter and data order start fresh), so its seq_len, data and schedule may differ.
    """
    source = Path(source)
    if not (source / "config.yaml").is_file():
        raise ConfigError(
            f"train.init_from={str(source)!r} is not a run directory (no config.yaml); "
            "point it at a directory written by `slm train`."
        )
    diff = model_difference(source, cfg)
    if diff:
        raise ConfigError(
            f"train.init_from={str(source)!r} holds a different model ({diff}); "
            "a warm start needs the same model config."
        )
    params, _ = restore_params(source, config_from_dict(read_run_config(source)))
    return params


def train_curriculum(cfg: Config, run_dir: Path, progress: bool) -> tuple[str, dict | None]:
    """Train the ``train.curriculum`` stages; return the last one's directory, which starts the main
    run, and None, or, when a stage was stopped (SIGINT/SIGTERM), that stage's summary.

    Stage ``i`` (``[seq_len, steps]``) is a run of its own in ``run_dir/stage<i>_len<seq_len>``,
    warm-started from the stage before (the first from ``train.init_from``, if set), validated at
    its own length only. A finished stage is not trained again, so re-running resumes. Short
    sequences first is the curriculum of Bengio et al. 2009; Press et al. 2021 (Shortformer) and
    Li et al. 2022 (sequence-length warmup) use it for language models.
    """
    source = cfg.train.init_from
    for i, (seq_len, steps) in enumerate(cfg.train.curriculum, 1):
        stage_dir = run_dir / f"stage{i}_len{seq_len}"
        stage = {
            "train.seq_len": seq_len,
            "train.steps": steps,
            "train.curriculum": (),
            "train.init_from": source,
            "data.task.eval_lengths": (),
        }
        if latest_checkpoint_step(stage_dir) != steps:
            summary = train(replace(cfg, **stage), stage_dir, progress=progress)
            if summary["step"] < steps:
                return "", summary
        source = str(stage_dir)
    return source, None


def train(
    cfg: Config, run_dir: str | Path | None = None, *, until_step: int | None = None, progress: bool = True
) -> dict:
    """Train ``cfg`` in ``run_dir`` (default ``runs/<name>``); return a summary dict (training/loop.py).

    ``until_step`` stops early after that step with a checkpoint, as a preemption would; the
    next call resumes. SIGINT/SIGTERM do the same at the next step boundary. The run directory
    is locked for the whole call (rundir/run_lock.py): a second trainer on it stops at once.
    """
    if cfg.train.federated.algorithm:  # rounds of simulated clients instead of steps (slm_jax/federated/train.py)
        from slm_jax.federated.train import train_federated

        return train_federated(cfg, run_dir, until_round=until_step, progress=progress)
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    primary = jax.process_index() == 0  # with several processes (distributed.py) only process 0 writes run files
    with run_lock(run_dir, primary):
        ck = cfg.checkpoint
        ckpt = Checkpointer(run_dir, ck.every, ck.keep, ck.keep_best, ck.async_save, owner=True)
        try:
            return _train_locked(cfg, run_dir, ckpt, until_step, progress)
        finally:
            ckpt.close()  # run_loop closes it on success; this covers a failure before the loop


def _train_locked(cfg: Config, run_dir: Path, ckpt: Checkpointer, until_step: int | None, progress: bool) -> dict:
    """The body of :func:`train`, run while holding the lock of ``run_dir`` with its checkpointer open."""
    # ---------------------------------------------------------------- run directory & data
    fresh = ckpt.latest_step() is None
    start_from, stopped = (
        train_curriculum(cfg, run_dir, progress) if cfg.train.curriculum and fresh else (cfg.train.init_from, None)
    )
    if stopped:  # stopped inside a stage: the main run has not begun
        return {**stopped, "run_dir": str(run_dir), "step": 0, "stopped_in": stopped["run_dir"]}
    task = load_task(cfg) if cfg.data.task.name else None
    if task is None:
        sources = load_sources(cfg.data)  # {"": one source} or a mixture's {name: source}
        data = next(iter(sources.values()))  # the sources share its tokenizer and vocabulary
        cfg = with_data_vocab(cfg, data)
    tc = cfg.train
    check_resumable(run_dir, cfg, not fresh)
    primary = jax.process_index() == 0
    if primary:
        write_config(run_dir, cfg)
    if task is None and primary:
        write_tokenizer(run_dir, data.tokenizer)  # generate/eval need no data dir

    # ---------------------------------------------------------------- model, optimizer, state
    model = CausalLM(cfg.model)
    init = lambda opt: init_state(model, opt, tc.seed, tc.seq_len)
    if start_from and fresh:  # a resumed run already holds its warm-started weights
        start = warm_start_params(start_from, cfg)
        init = lambda opt: {**init_state(model, opt, tc.seed, tc.seq_len), "params": start}
    optimizer, schedule = make_optimizer(cfg.optim, tc.steps, abstract_params(cfg.model))
    abstract_state = jax.eval_shape(lambda: init(optimizer))
    par = make_parallel(tc, abstract_state)  # one device, pmap or a Mesh (training/parallel.py)
    data_state = None
    if not fresh:
        state, data_state, _ = ckpt.restore(par.abstract_state(abstract_state))
        state = par.place(state)
    else:
        state = par.init(init, optimizer)

    # ---------------------------------------------------------------- data iterators
    # Text: i32[b, t + 1] windows (packed: dicts of i32[b, t]). Task: compact labels, so logits are computed
    # only where scored.
    eval_batch = cfg.eval.batch_size or tc.batch_size
    if cfg.data.pack and (task is not None or tc.objective == "mlm"):
        raise ConfigError("data.pack packs text documents for a causal model; drop it with data.task or objective mlm.")
    val_weights = {}
    if task is None:
        where = (tc.batch_size, tc.seq_len, tc.seed, jax.process_index(), jax.process_count())
        if cfg.data.mixture:
            splits = [(d.train, d.train_docs) for d in sources.values()]
            batches = mixture_batches(splits, [*cfg.data.mixture.values()], *where)
            val_weights = {f"/{name}": w for name, w in zip(sources, cfg.data.mixture.values())}
        else:
            batches = train_batches(data.train, *where, data.train_docs)
        to_step_batch = lambda batch: batch
        batch_spec = jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len + 1), np.int32)
        if cfg.data.pack:
            packed = ("inputs", "targets", "positions", "segment_ids")
            batch_spec = {k: jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len), np.int32) for k in packed}
        val_sets = {
            f"/{name}" if name else "": eval_batches(d.val, eval_batch, tc.seq_len, cfg.eval.batches, d.val_docs)
            for name, d in sources.items()
        }
        unit = {"char": "char", "byte": "byte"}.get(data.meta.get("tokenizer"), "token")
        if tc.objective == "mlm":  # masked windows, scored (and given logits) only where masked: training/mlm.py
            to_step_batch = lambda batch: mask_batch(batch, tc, cfg.model.vocab_size)
            batch_spec = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), to_step_batch(np.zeros(batch_spec.shape, np.int32))
            )
            val_sets = {suffix: [to_step_batch(b) for b in v] for suffix, v in val_sets.items()}
    else:
        m = n_labels(task.train)
        batches = task_batches(
            task.train, tc.batch_size, tc.seed, process_index=jax.process_index(), process_count=jax.process_count()
        )
        to_step_batch = lambda batch: compact_labels(batch, m)
        batch_spec = {
            "inputs": jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len), np.int32),
            **{k: jax.ShapeDtypeStruct((tc.batch_size, m), np.int32) for k in ("label_positions", "labels")},
        }
        val_sets = task_val_sets(task, eval_batch, cfg.eval.batches)
        unit = "token"
    if data_state:
        batches.set_state(data_state)

    # ---------------------------------------------------------------- compile (timed apart)
    t0 = time.perf_counter()
    step_fn = par.compile(
        lambda sync: make_train_step(model, optimizer, schedule, tc.z_loss, tc.grad_accum, sync), state, batch_spec
    )
    eval_fn = jax.jit(make_eval_step(model))
    compile_s = time.perf_counter() - t0

    # ---------------------------------------------------------------- accounting & loop
    mlm = task is None and tc.objective == "mlm"
    fraction = n_masked(tc.seq_len, tc.mask_rate) / tc.seq_len if mlm else head_fraction(cfg)
    info = {**accounting.summary(cfg.model, tc.seq_len, fraction), "compile_s": compile_s}
    parts = LoopParts(
        step_fn,
        batches,
        eval_fn,
        val_sets,
        unit,
        info,
        to_step_batch,
        report_accuracy=task is not None or mlm,
        val_weights=val_weights,
        extra_metrics=("moe_aux_loss",) if cfg.model.moe.n_experts else (),  # training/step.py
    )
    return run_loop(cfg, run_dir, ckpt, state, parts, par=par, until_step=until_step, progress=progress)
