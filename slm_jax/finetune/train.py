"""``finetune(run_dir, data, out_dir, options)``: full or LoRA fine-tuning of a trained run on prompt/completion pairs.

Its own small trainer around the shared pieces (training/step.py's loss on task batches,
training/optim.py's AdamW): the step differentiates ``loss(combine(trainable))`` where
``trainable`` is the whole parameter tree (full fine-tuning) or the LoRA adapters, combined
with the frozen base weights by ``lora.merge`` (finetune/lora.py). Output:

  full:  ``out_dir`` is an ordinary run directory (config.yaml, tokenizer.json, checkpoint at
         the base run's step) that ``slm eval`` / ``slm generate`` read.
  LoRA:  ``out_dir`` holds only ``adapter.safetensors`` (A and B per target) and ``adapter.json``
         (LoRA settings, the base run's path and step); ``merge_adapters`` folds them into a
         new run directory.

Both also write ``finetune.json`` with the summary (trainable parameters, exact-match accuracy
before and after on ``eval_data``). Examples are laid out by a chat template (finetune/template.py)
before tokenisation; a non-plain one is stored as ``chat_template.json`` in ``out_dir`` and carried by the merge.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.array_typing import PyTree
from slm_jax.config import Config, config_from_dict
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.finetune import data as ft_data
from slm_jax.finetune import lora
from slm_jax.finetune import template as chat
from slm_jax.inference.run import LoadedRun, load_run
from slm_jax.interop.safetensors_io import read_safetensors, write_safetensors
from slm_jax.rundir.checkpoint import read_run_config
from slm_jax.rundir.files import check_new_run_dir, copy_run_files, discard_unused_run_dir, new_run_dir, write_config
from slm_jax.rundir.params import restore_params, save_params
from slm_jax.rundir.run_lock import run_lock
from slm_jax.training.optim import make_optimizer
from slm_jax.training.step import make_loss_fn

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_META = "adapter.json"


@dataclass(frozen=True)
class FinetuneOptions:
    """Options of ``slm finetune``; ``lora`` None means full fine-tuning."""

    lora: lora.LoraSpec | None = None
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    seed: int = 0
    max_len: int = 0  # 0 -> no limit on example length
    best: bool = False  # start from the base run's best checkpoint
    template: str = ""  # chat template name or file; "" -> the base run's own (plain when it has none)

    def __post_init__(self):
        for key in ("steps", "batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}.")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}.")


def exact_match(model, params: PyTree, data: dict[str, np.ndarray], batch_size: int = 256) -> dict:
    """Completion loss and exact-match accuracy: the share of examples whose every completion token is the argmax.

    Teacher-forced argmax on every completion token is exactly what greedy decoding would
    produce token by token, so this equals greedy exact match (up to ties) in one forward pass.
    """
    loss_fn = jax.jit(make_loss_fn(model))
    apply = jax.jit(lambda p, x: model.apply(p, x)[0].argmax(-1))
    correct, loss_sum, tokens = 0, 0.0, 0.0
    n = len(data["inputs"])
    for i in range(0, n, batch_size):
        batch = {k: jnp.asarray(v[i : i + batch_size]) for k, v in data.items()}
        pred = np.asarray(apply(params, batch["inputs"]))
        targets = np.asarray(batch["targets"])
        correct += int(np.all((pred == targets) | (targets < 0), axis=1).sum())
        _, m = loss_fn(params, batch)
        loss_sum += float(m["loss"]) * float(m["tokens"])
        tokens += float(m["tokens"])
    return {"exact_match": correct / n, "completion_loss": loss_sum / max(tokens, 1.0), "examples": n}


def make_step(model, optimizer: optax.GradientTransformation, combine, loss_fn=None):
    """``step(state, base, batch, key) -> (state, metrics)``; gradients only w.r.t. ``state["params"]``.

    ``loss_fn(params, batch) -> (loss, metrics)`` defaults to the completion loss of task batches.
    """
    loss_fn = loss_fn or make_loss_fn(model)

    def step(state, base, batch, key):
        loss = lambda trainable: loss_fn(combine(base, trainable, key), batch)
        (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
        }

    return step


def finetune(
    run_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    options: FinetuneOptions,
    eval_data: str | Path | None = None,
    log=print,
) -> dict:
    """Fine-tune the run in ``run_dir`` on ``data_path`` (JSONL) into ``out_dir``; return a summary (module docstring).

    ``out_dir`` is locked while this runs (rundir/run_lock.py): a second fine-tune into it stops at once. It is
    written atomically (rundir/files.py): a failure leaves no ``out_dir`` behind.
    """
    out_dir = Path(out_dir)
    return in_new_out_dir(out_dir, lambda: _finetune_locked(run_dir, data_path, out_dir, options, eval_data, log))


def in_new_out_dir(out_dir: Path, body):
    """``body()`` while holding the lock of the new directory ``out_dir``; a failure leaves no ``out_dir`` behind."""
    check_new_run_dir(out_dir)
    created = not out_dir.exists()
    with run_lock(out_dir):
        try:
            return body()
        except BaseException:
            if created:
                discard_unused_run_dir(out_dir)
            raise


def load_base(run_dir: str | Path, best: bool) -> LoadedRun:
    """The float run to fine-tune (a quantized one is refused)."""
    run = load_run(run_dir, best=best)
    if run.cfg.model.quant.bits:
        raise ConfigError(
            f"{run_dir} is quantized (int{run.cfg.model.quant.bits}); fine-tune the float run it was made from."
        )
    return run


def trainable_part(run: LoadedRun, spec: lora.LoraSpec | None, seed: int):
    """(LoRA target paths, initial trainable tree, ``combine(base, trainable, key) -> params``).

    Full fine-tuning trains the whole tree; LoRA trains adapters merged into the frozen base.
    """
    if spec is None:
        return [], run.params, lambda base, params, key: params
    paths = lora.target_paths(run.cfg.model, spec)
    adapters = lora.init_adapters(run.params, paths, spec, jax.random.key(seed))
    return paths, adapters, lambda base, adapters, key: lora.merge(base, adapters, spec, key)


def finetune_optimizer(run: LoadedRun, options: FinetuneOptions, trainable: PyTree) -> optax.GradientTransformation:
    """AdamW with a cosine schedule from ``options`` (the base run's other optimizer settings)."""
    optim_cfg = dataclasses.replace(
        run.cfg.optim,
        lr=options.lr,
        min_lr=options.lr / 10,
        schedule="cosine",
        warmup_steps=options.warmup_steps,
        weight_decay=options.weight_decay,
        frozen=(),
    )
    return make_optimizer(optim_cfg, options.steps, trainable)[0]


def run_steps(step_fn, state: PyTree, base: PyTree, batches, options: FinetuneOptions, log, what: str):
    """``options.steps`` steps; logs ``what`` loss and accuracy ten times; (state, last metrics, seconds)."""
    t0, key = time.perf_counter(), jax.random.key(options.seed + 1)
    for i in range(1, options.steps + 1):
        state, metrics = step_fn(state, base, next(batches), jax.random.fold_in(key, i))
        if i % max(options.steps // 10, 1) == 0 or i == options.steps:
            m = jax.device_get(metrics)
            log(f"step {i}: {what} loss {float(m['loss']):.4f}, accuracy {float(m['accuracy']):.3f}")
            if not np.isfinite(float(m["loss"])):
                raise ConfigError(f"The fine-tuning loss became {float(m['loss'])} at step {i}; lower --lr.")
    return state, metrics, time.perf_counter() - t0


def _finetune_locked(
    run_dir: str | Path,
    data_path: str | Path,
    out_dir: Path,
    options: FinetuneOptions,
    eval_data: str | Path | None,
    log,
) -> dict:
    """The body of :func:`finetune`, run while holding the lock of ``out_dir``."""
    run = load_base(run_dir, options.best)
    template = chat.resolve_template(options.template) if options.template else chat.run_template(run_dir)
    if run.tokenizer is not None:
        chat.check_encodable(template, run.tokenizer)

    def encode(path, max_len=0):
        examples = chat.format_examples(template, ft_data.read_jsonl(path), path)
        return ft_data.encode_examples(examples, run.tokenizer, max_len)

    train_set = encode(data_path, options.max_len)
    eval_set = encode(eval_data) if eval_data else None

    spec = options.lora
    paths, trainable, combine = trainable_part(run, spec, options.seed)
    optimizer = finetune_optimizer(run, options, trainable)
    step_fn = jax.jit(make_step(run.model, optimizer, combine), donate_argnums=0)
    state = {"params": trainable, "opt_state": optimizer.init(trainable)}
    n_trainable, n_total = lora.count_params(trainable), lora.count_params(run.params)
    summary = {
        "base_run": str(Path(run_dir).absolute()),
        "base_step": run.step,
        "method": "lora" if spec else "full",
        "trainable_params": n_trainable,
        "base_params": n_total,
        "trainable_fraction": n_trainable / n_total,
        "train_examples": len(train_set["inputs"]),
        "steps": options.steps,
        "template": template.name,
    }
    if spec is not None:
        summary["lora"] = {**dataclasses.asdict(spec), "target_paths": paths}
    if eval_set is not None:
        summary["before"] = exact_match(run.model, run.params, eval_set)

    batches = ft_data.batches(train_set, options.batch_size, options.seed)
    state, metrics, summary["train_seconds"] = run_steps(
        step_fn, state, run.params, batches, options, log, "completion"
    )
    summary["final_loss"] = float(metrics["loss"])

    tuned = combine(run.params, state["params"], None)
    if eval_set is not None:
        summary["after"] = exact_match(run.model, tuned, eval_set)
    with new_run_dir(out_dir) as tmp:
        if spec is not None:
            save_adapters(tmp, state["params"], spec, summary)
        else:
            write_run_dir(tmp, run.cfg, tuned, run.step, Path(run_dir))
        chat.save_template(tmp, template)
        (tmp / "finetune.json").write_text(json.dumps(summary, indent=1))
    return {"out_dir": str(out_dir), **summary}


def save_adapters(out_dir: Path, adapters: dict, spec: lora.LoraSpec, summary: dict) -> None:
    """``adapter.safetensors`` (float32 A and B) and ``adapter.json`` (settings, base run path and step)."""
    tensors = {k: np.asarray(v, np.float32) for k, v in lora.to_flat(jax.device_get(adapters)).items()}
    write_safetensors(out_dir / ADAPTER_FILE, tensors, {"format": "slm_jax-lora"})
    meta = {
        "base_run": summary["base_run"],
        "base_step": summary["base_step"],
        **dataclasses.asdict(spec),
        "target_paths": sorted(adapters),
        "trainable_params": summary["trainable_params"],
    }
    (out_dir / ADAPTER_META).write_text(json.dumps(meta, indent=1))


def load_adapters(adapter_dir: str | Path) -> tuple[dict, lora.LoraSpec, dict]:
    """(adapters, spec, metadata) saved by ``save_adapters``."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_META).is_file() or not (adapter_dir / ADAPTER_FILE).is_file():
        raise CheckpointError(
            f"{adapter_dir} has no {ADAPTER_META} and {ADAPTER_FILE}; "
            "pass the --out directory of `slm finetune --lora`."
        )
    meta = json.loads((adapter_dir / ADAPTER_META).read_text())
    spec = lora.LoraSpec(rank=meta["rank"], alpha=meta["alpha"], dropout=meta["dropout"], targets=meta["targets"])
    return lora.from_flat(read_safetensors(adapter_dir / ADAPTER_FILE)), spec, meta


def merge_adapters(adapter_dir: str | Path, out_dir: str | Path, base_run: str | Path | None = None) -> dict:
    """Fold LoRA adapters into their base run's weights: a new run directory at ``out_dir``.

    ``base_run`` overrides the base path stored in ``adapter.json`` (a moved run directory);
    its checkpoint must be at the step the adapters were trained from.
    """
    adapters, spec, meta = load_adapters(adapter_dir)
    base = Path(base_run or meta["base_run"])
    out_dir = Path(out_dir)
    check_new_run_dir(out_dir)
    if not base.is_dir():
        raise CheckpointError(
            f"The base run {str(base)!r} of these adapters does not exist; pass its new location with --base."
        )
    cfg = config_from_dict(read_run_config(base))
    params, step = _params_at(base, cfg, meta["base_step"])
    _check_adapters_fit(params, adapters, base)
    with new_run_dir(out_dir) as tmp:
        write_run_dir(tmp, cfg, lora.merge(params, adapters, spec), step, base)
        chat.save_template(tmp, chat.run_template(adapter_dir))
    return {"run_dir": str(out_dir), "base_run": str(base), "base_step": step, "merged_paths": sorted(adapters)}


def _params_at(base: Path, cfg: Config, step: int) -> tuple[PyTree, int]:
    """The base params at the adapters' step (latest or best must be it)."""
    for best in (False, True):
        try:
            params, got = restore_params(base, cfg, best)
        except CheckpointError:
            continue
        if got == step:
            return params, got
    raise CheckpointError(
        f"{base} has no checkpoint at step {step}, the step the adapters were trained from; "
        "pass the matching base run with --base."
    )


def _check_adapters_fit(params: PyTree, adapters: dict, base: Path) -> None:
    for path, ab in adapters.items():
        try:
            w = lora.kernel_at(params, path)
        except KeyError:
            raise CheckpointError(
                f"The base run {base} has no projection {path}; these adapters belong to another model."
            ) from None
        if ab["a"].shape[:-1] != w.shape[:-1] or ab["b"].shape[-1] != w.shape[-1]:
            raise CheckpointError(
                f"Adapter {path} has shapes {ab['a'].shape} x {ab['b'].shape} but the base kernel is {w.shape}; "
                "these adapters belong to another model."
            )


def write_run_dir(out_dir: Path, cfg: Config, params: PyTree, step: int, source: Path) -> None:
    """An ordinary run directory with ``params`` at ``step`` and a fresh optimizer state, so ``slm train`` can go on."""
    write_config(out_dir, cfg)
    copy_run_files(source, out_dir)
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps, params)
    save_params(out_dir, cfg, params, step, optimizer.init(params))
