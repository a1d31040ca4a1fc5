"""``train_federated(cfg, run_dir)``: ``slm train`` when ``train.federated.algorithm`` is set; rounds instead of steps.

The run directory reads like a centralized run's: ``config.yaml``, ``tokenizer.json``,
``run.json``, ``metrics.jsonl`` (one line per round: loss, clients, bytes up/down and their
totals, epsilon under DP, and val loss every ``eval.every`` rounds) and Orbax checkpoints every
``checkpoint.every`` rounds, whose state holds ``params`` and ``step`` (= the round) so that
``slm generate`` and ``slm eval`` read it as any other run. Re-running resumes from the last
checkpoint and repeats the uninterrupted run's rounds.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.config import Config, to_dict
from slm_jax.data.pipeline import eval_batches
from slm_jax.data.source import load_dataset
from slm_jax.errors import ConfigError, DataError
from slm_jax.eval.perplexity import evaluate
from slm_jax.federated import privacy, rounds, server
from slm_jax.federated.partition import Client, dirichlet_clients, iid_clients, role_clients, size_stats
from slm_jax.models import accounting
from slm_jax.models.lm import CausalLM
from slm_jax.rundir.checkpoint import Checkpointer
from slm_jax.rundir.files import write_config, write_tokenizer
from slm_jax.rundir.record import write_run_record
from slm_jax.rundir.run_lock import run_lock
from slm_jax.training.loop import StopRequest
from slm_jax.training.step import init_state, make_eval_step
from slm_jax.training.tracking import MetricsLog, Progress
from slm_jax.training.train import check_resumable, with_data_vocab


def load_clients(cfg: Config) -> tuple[Config, list[Client], object, str]:
    """``(cfg with the data's vocabulary, clients, tokenizer, unit)`` for ``train.federated.partition``."""
    f, t = cfg.train.federated, cfg.train
    if cfg.data.task.name:
        raise ConfigError(
            "train.federated trains on text only for now; unset data.task.name and set data.path or data.synthetic."
        )
    if cfg.data.pack:
        raise ConfigError("train.federated reads plain windows, not packed rows; set data.pack to false.")
    data = load_dataset(cfg.data)
    cfg = with_data_vocab(cfg, data)
    if f.partition == "role":
        if not Path(cfg.data.path).is_file():
            raise ConfigError(
                "train.federated.partition=role splits a raw text file by speaking role; set data.path to "
                "a Tiny Shakespeare text file (not a prepared directory or a synthetic corpus)."
            )
        text = Path(cfg.data.path).read_text(encoding="utf-8")
        clients = role_clients(text, data.tokenizer, cfg.data.val_fraction, t.seq_len + 1, f.n_clients)
    elif f.partition == "dirichlet":
        clients = dirichlet_clients(
            data.train, data.val, newline_id(data.tokenizer), f.n_clients, f.dirichlet_alpha, t.seq_len + 1, t.seed
        )
    else:
        clients = iid_clients(data.train, data.val, f.n_clients, 16 * (t.seq_len + 1), t.seq_len + 1, t.seed)
    unit = {"char": "char", "byte": "byte"}.get(data.meta.get("tokenizer"), "token")
    return cfg, clients, data.tokenizer, unit


def newline_id(tokenizer) -> int:
    """The newline's token id (Dirichlet partitions deal lines), or one sentence saying to pick another partition."""
    try:
        ids = tokenizer.encode("\n")
    except DataError:
        ids = ()
    if len(ids) != 1:
        raise ConfigError(
            "train.federated.partition=dirichlet deals lines of text, but the data has no newline token; "
            "use partition=iid or line-structured text (e.g. data.synthetic=reverse)."
        )
    return int(ids[0])


def train_federated(
    cfg: Config, run_dir: str | Path | None = None, *, until_round: int | None = None, progress: bool = True
) -> dict:
    """Run ``train.federated.rounds`` rounds in ``run_dir`` (default ``runs/<name>``); return a summary.

    ``until_round`` stops after that round with a checkpoint (as a preemption would); the next
    call resumes. The run directory is locked for the whole call.
    """
    run_dir = Path(run_dir) if run_dir else Path("runs") / cfg.name
    with run_lock(run_dir, jax.process_index() == 0):
        ck = cfg.checkpoint
        ckpt = Checkpointer(run_dir, ck.every, ck.keep, ck.keep_best, ck.async_save, owner=True)
        try:
            return _train_locked(cfg, run_dir, ckpt, until_round, progress)
        finally:
            ckpt.close()


def _train_locked(cfg: Config, run_dir: Path, ckpt: Checkpointer, until_round: int | None, progress: bool) -> dict:
    # ---------------------------------------------------------------- data: one partition per client
    cfg, clients, tokenizer, unit = load_clients(cfg)
    f, tc = cfg.train.federated, cfg.train
    fresh = ckpt.latest_step() is None
    check_resumable(run_dir, cfg, not fresh)
    write_config(run_dir, cfg)
    write_tokenizer(run_dir, tokenizer)
    val_tokens = np.concatenate([c.val for c in clients])
    val_sets = eval_batches(val_tokens, cfg.eval.batch_size or tc.batch_size, tc.seq_len, cfg.eval.batches)

    # ---------------------------------------------------------------- model, optimizers, round state
    model = CausalLM(cfg.model)
    params = init_state(model, optax.identity(), tc.seed, tc.seq_len)["params"]
    plan = rounds.make_plan(cfg, len(clients))
    client_tx = rounds.make_client_optimizer(cfg, params)
    server_tx = server.make_server_optimizer(f)
    fed = rounds.Federation(model, plan, client_tx, server_tx, f.mu, tc.z_loss)
    state = {**rounds.init_round_state(params, plan, client_tx, server_tx), "step": jnp.zeros((), jnp.int32)}
    start, totals = 0, {"bytes_up_total": 0, "bytes_down_total": 0}
    if not fresh:
        state, saved, _ = ckpt.restore(state)
        start, totals = int(state["step"]), {k: int(saved[k]) for k in totals}
    if until_round is not None and until_round <= start:
        raise ConfigError(f"--until-step {until_round} must be above round {start}, which this run already reached.")
    end = min(f.rounds, until_round or f.rounds)
    eval_fn = jax.jit(make_eval_step(model))

    # ---------------------------------------------------------------- rounds
    stats = size_stats(clients)
    info = {
        **accounting.summary(cfg.model, tc.seq_len),
        "partition": f.partition,
        **stats,
        "clients_per_round": plan.per_round,
    }
    write_run_record(run_dir, {**info, "resumed_from": start, "federated": f.algorithm})
    log = MetricsLog(run_dir, resume_step=start)
    bar = Progress(f.rounds, initial=start, disable=not (progress and jax.process_index() == 0))
    bar.write(
        f"{cfg.name}: {f.algorithm}, {stats['clients']} clients ({f.partition}; {stats['tokens_min']:,} to "
        f"{stats['tokens_max']:,} tokens), {plan.per_round} per round"
        + (f", resuming at round {start}" if start else "")
    )
    stop = StopRequest()
    metrics, val, stopped_reason, reached = {}, {}, None, False
    try:
        for r in range(start + 1, end + 1):
            eps = privacy.epsilon(r, plan.sampling_rate, f.dp_noise, f.dp_delta) if f.dp_noise else None
            if f.dp_epsilon and eps > f.dp_epsilon:
                stopped_reason = _budget_stop(r, eps, f.dp_epsilon, f.dp_delta)
                if r == 1:
                    raise ConfigError(stopped_reason)
                bar.write(stopped_reason)
                break
            t0 = time.perf_counter()
            state, metrics = fed.run_round(state, r, clients)
            state["step"] = jnp.asarray(r, jnp.int32)
            totals = {k: totals[k] + metrics[k.removesuffix("_total")] for k in totals}
            metrics = {**metrics, **totals, "round_s": time.perf_counter() - t0}
            if eps is not None:
                metrics["epsilon"] = eps
            log.write(r, **metrics)
            if metrics["failed"]:
                bar.write(
                    f"round {r}: {metrics['failed']} client(s) failed (non-finite update); it went on without them."
                )
            bar.update(r, loss=f"{metrics['loss']:.4f}", clients=metrics["clients"])
            final = r == end or stop.requested
            val = {}
            if (cfg.eval.every and r % cfg.eval.every == 0) or r == f.rounds:
                val = evaluate(eval_fn, state["params"], val_sets, unit)
                log.write(r, **val)
                bar.write(f"round {r}: val_loss {val['val_loss']:.4f} ({val[f'val_bits_per_{unit}']:.3f} bits/{unit})")
                if f.target_accuracy and val["val_accuracy"] >= f.target_accuracy:
                    stopped_reason = (
                        f"reached val_accuracy {val['val_accuracy']:.4f} >= {f.target_accuracy:g} at round {r}"
                    )
                    bar.write(f"Stopped: {stopped_reason}.")
                    final = reached = True
            ckpt.save(r, state, {**totals, "round": r}, to_dict(cfg), val_loss=val.get("val_loss"), force=final)
            if stop.requested:
                bar.write(f"Stopped at round {r} with a checkpoint; run the same command again to resume.")
                break
            if stopped_reason:
                break
        if stopped_reason and not reached and int(state["step"]) > start:  # the budget stop (a target stop saved)
            ckpt.save(int(state["step"]), state, {**totals, "round": int(state["step"])}, to_dict(cfg), force=True)
    finally:
        stop.restore()
        log.close()
        bar.close()
    return {
        "run_dir": str(run_dir),
        "step": int(state["step"]),
        "round": int(state["step"]),
        "loss": metrics.get("loss"),
        **val,
        **totals,
        "epsilon": metrics.get("epsilon"),
        "stopped_by": stop.signal,
        "stopped_reason": stopped_reason,
        **info,
    }


def _budget_stop(r: int, eps: float, budget: float, delta: float) -> str:
    return (
        f"Stopped before round {r}: it would spend epsilon {eps:.3f} at delta {delta:g}, over the budget "
        f"train.federated.dp_epsilon={budget:g}; raise the budget or train.federated.dp_noise to train longer."
    )
