"""``distill(config, teacher_dir, run_dir)``: train a student against a frozen teacher run.

The same run directory, data, state, checkpoints and loop as ``slm train`` (resume included);
only the step differs: its loss is the distillation loss of ``distill/loss.py``, built by
``make_train_step(loss_fn=...)``. The teacher is a loaded run of any architecture (a
transformer can teach a Griffin or Mamba student): its parameters are a frozen input of the
step, never in the train state or the optimizer, and its logits pass through ``stop_gradient``.
With ``distill.precomputed`` the teacher is not loaded at all: each batch carries the stored
top-k logits of its windows (``distill/precompute.py``). The student's validation loss is the
plain next-token cross-entropy, comparable with runs trained from scratch.

The DistilBERT recipe (docs/encoders.md): ``distill.loss: triple`` (distill/loss.py) and
``distill.init: every_other_layer`` (distill/student_init.py); with ``train.objective: mlm`` an
encoder student and an encoder teacher read the same masked windows (training/mlm.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import grain
import jax
import numpy as np

from slm_jax.config import Config, replace
from slm_jax.data.pipeline import READ_OPTIONS, RandomWindowBatches, eval_batches
from slm_jax.data.source import load_dataset
from slm_jax.distill.loss import make_distill_loss_fn, make_triple_loss_fn
from slm_jax.distill.precompute import TopkWindowBatches, check_same_vocabulary, open_store, tokenizer_identity
from slm_jax.distill.student_init import every_other_layer
from slm_jax.errors import ConfigError
from slm_jax.inference.run import load_run
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM, abstract_params
from slm_jax.rundir.checkpoint import Checkpointer
from slm_jax.rundir.files import write_config, write_tokenizer
from slm_jax.rundir.run_lock import run_lock
from slm_jax.training.loop import LoopParts, run_loop
from slm_jax.training.mlm import mask_batch
from slm_jax.training.optim import make_optimizer
from slm_jax.training.parallel import make_parallel
from slm_jax.training.step import init_state, make_eval_step, make_train_step
from slm_jax.training.train import check_resumable, default_run_dir, warm_start_params, with_data_vocab


def distill(
    cfg: Config,
    teacher_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    *,
    until_step: int | None = None,
    progress: bool = True,
) -> dict:
    """Distill ``teacher_dir`` (default ``distill.teacher``) into the student ``cfg`` in ``run_dir``; the summary."""
    kd = cfg.distill
    teacher_dir = str(teacher_dir or kd.teacher)
    if not teacher_dir and not kd.precomputed:
        raise ConfigError(
            "No teacher to distill from; pass --teacher RUN_DIR, or set distill.teacher or distill.precomputed."
        )
    if cfg.train.parallel.strategy != "none":
        raise ConfigError(
            f"slm distill runs on one device, but train.parallel.strategy is {cfg.train.parallel.strategy!r}; "
            "set it to none."
        )
    if cfg.train.curriculum:
        raise ConfigError("slm distill has no curriculum; clear train.curriculum.")
    if cfg.data.task.name:
        raise ConfigError(
            f"Distillation trains on text, but data.task.name is {cfg.data.task.name!r}; "
            "set data.path to a text corpus."
        )
    if cfg.data.pack:
        raise ConfigError("slm distill reads plain windows, not packed rows; set data.pack to false.")

    needs_live = [n for n, on in (("distill.loss=triple", kd.loss == "triple"), ("distill.init", kd.init)) if on]
    needs_live += ["train.objective=mlm"] if cfg.train.objective == "mlm" else []
    if kd.precomputed and needs_live:
        raise ConfigError(
            f"{needs_live[0]} needs the teacher run itself, not precomputed logits; clear distill.precomputed."
        )
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    with run_lock(run_dir):  # one writer per run directory (rundir/run_lock.py)
        return _distill_locked(cfg, teacher_dir, run_dir, until_step, progress)


def _distill_locked(cfg: Config, teacher_dir: str, run_dir: Path, until_step: int | None, progress: bool) -> dict:
    """The body of :func:`distill`, run while holding the lock of ``run_dir``."""
    kd = cfg.distill
    # ---------------------------------------------------------------- run directory, data & teacher
    data = load_dataset(cfg.data)
    cfg = replace(with_data_vocab(cfg, data), **{"distill.teacher": teacher_dir})
    tc = cfg.train
    teacher, store = None, None
    if kd.precomputed:  # the stored logits carry the teacher's vocabulary; its parameters are not needed
        store = open_store(kd.precomputed, data.train, data.tokenizer, cfg.model.vocab_size, teacher_dir)
        if kd.top_k > store.meta["top_k"]:
            raise ConfigError(
                f"distill.top_k is {kd.top_k} but {kd.precomputed} stores only the top {store.meta['top_k']}; "
                "lower distill.top_k or re-run the precompute."
            )
    else:
        teacher = load_run(teacher_dir, best=kd.best)
        check_same_vocabulary(
            teacher_dir,
            tokenizer_identity(teacher.tokenizer),
            teacher.cfg.model.vocab_size,
            data.tokenizer,
            cfg.model.vocab_size,
        )
    _check_recipe(cfg, teacher, teacher_dir)
    # DistilBERT: teacher layers 0, 2, 4, ... (checked before anything is written; used on a fresh run only)
    recipe_start = every_other_layer(teacher.params, teacher.cfg.model, cfg.model) if kd.init else None
    ckpt = Checkpointer(
        run_dir,
        cfg.checkpoint.every,
        cfg.checkpoint.keep,
        cfg.checkpoint.keep_best,
        cfg.checkpoint.async_save,
        owner=True,
    )
    check_resumable(run_dir, cfg, ckpt.latest_step() is not None)
    write_config(run_dir, cfg)
    write_tokenizer(run_dir, data.tokenizer)

    # ---------------------------------------------------------------- student, optimizer, state
    model = CausalLM(cfg.model)
    init = lambda opt: init_state(model, opt, tc.seed, tc.seq_len)
    if tc.init_from and ckpt.latest_step() is None:  # recovery of a pruned run: start from its weights
        start = warm_start_params(tc.init_from, cfg)
        init = lambda opt: {**init_state(model, opt, tc.seed, tc.seq_len), "params": start}
    if recipe_start is not None and ckpt.latest_step() is None:
        init = lambda opt: {**init_state(model, opt, tc.seed, tc.seq_len), "params": recipe_start}
    optimizer, schedule = make_optimizer(cfg.optim, tc.steps, abstract_params(cfg.model))
    par = make_parallel(tc, jax.eval_shape(lambda: init(optimizer)))  # one device (checked above)
    data_state = None
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(par.abstract_state(jax.eval_shape(lambda: init(optimizer))))
        state = par.place(state)
    else:
        state = par.init(init, optimizer)

    # ---------------------------------------------------------------- data: windows (+ stored teacher rows)
    windows = RandomWindowBatches(data.train, tc.batch_size, tc.seq_len, tc.seed)
    batch_spec = jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len + 1), np.int32)
    if store is not None:
        windows = TopkWindowBatches(windows, store)
        k = store.meta["top_k"]
        batch_spec = {
            "tokens": batch_spec,
            "values": jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len, k), store.values.dtype),
            "indices": jax.ShapeDtypeStruct((tc.batch_size, tc.seq_len, k), np.int32),
        }
    batches = iter(grain.MapDataset.source(windows).to_iter_dataset(READ_OPTIONS))
    if data_state:
        batches.set_state(data_state)
    val_batches = eval_batches(data.val, cfg.eval.batch_size or tc.batch_size, tc.seq_len, cfg.eval.batches)
    to_step_batch, mlm = (lambda batch: batch), tc.objective == "mlm"
    if mlm:  # masked windows, the same for student and teacher, scored only where masked (training/mlm.py)
        to_step_batch = lambda batch: mask_batch(batch, tc, cfg.model.vocab_size)
        batch_spec = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), to_step_batch(np.zeros(batch_spec.shape, np.int32))
        )
        val_batches = [to_step_batch(b) for b in val_batches]
    unit = {"char": "char", "byte": "byte"}.get(data.meta.get("tokenizer"), "token")

    # ---------------------------------------------------------------- compile (timed apart)
    t0 = time.perf_counter()
    if kd.loss == "triple":
        weights = (kd.alpha_ce, kd.alpha_mlm, kd.alpha_cos)
        loss_fn = make_triple_loss_fn(model, teacher.model, kd.temperature, *weights, top_k=kd.top_k)
    else:
        loss_fn = make_distill_loss_fn(model, teacher and teacher.model, kd.alpha, kd.temperature, kd.top_k)
    step = jax.jit(
        make_train_step(model, optimizer, schedule, grad_accum=tc.grad_accum, loss_fn=loss_fn), donate_argnums=0
    )
    frozen = (teacher.params,) if teacher else ()  # an input of the step: never differentiated, never updated
    compiled = step.lower(state, batch_spec, *frozen).compile()
    step_fn = lambda state, batch: compiled(state, batch, *frozen)
    eval_fn = jax.jit(make_eval_step(model))
    compile_s = time.perf_counter() - t0

    # ---------------------------------------------------------------- accounting & loop
    info = accounting.summary(cfg.model, tc.seq_len)
    if teacher is not None:  # its forward pass is part of every step's cost
        info["flops_per_token"] += accounting.forward_flops_per_token(teacher.cfg.model, tc.seq_len)
        info["teacher_params"] = accounting.param_count(teacher.cfg.model)
    info["compile_s"] = compile_s
    extra = ("ce", "kl", "cos") if kd.loss == "triple" else ("ce", "kl")
    parts = LoopParts(step_fn, batches, eval_fn, {"": val_batches}, unit, info, to_step_batch, mlm, extra)
    return run_loop(cfg, run_dir, ckpt, state, parts, par=par, until_step=until_step, progress=progress)


def _check_recipe(cfg: Config, teacher, teacher_dir: str) -> None:
    """Refuse what the DistilBERT recipe and masked-LM distillation need but this setup lacks (one sentence each)."""
    kd, tc = cfg.distill, cfg.train
    if tc.objective == "mlm" and teacher.cfg.model.causal:
        raise ConfigError(
            f"The student trains with train.objective=mlm, but the teacher {teacher_dir} is a causal model, whose "
            "logits are next-token predictions; distill an encoder student from an encoder teacher."
        )
    if kd.loss == "triple" and kd.alpha_cos and teacher.cfg.model.d_model != cfg.model.d_model:
        raise ConfigError(
            f"distill.alpha_cos compares final hidden states, but the teacher's d_model is "
            f"{teacher.cfg.model.d_model} and the student's {cfg.model.d_model}; "
            "set distill.alpha_cos=0 or give the student the teacher's width."
        )
