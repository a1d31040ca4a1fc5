"""Load a trained run directory: its resolved config, model, parameters and tokenizer."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.config import Config, config_from_dict
from slm_jax.errors import CheckpointError
from slm_jax.models.lm import CausalLM
from slm_jax.training.checkpoint import Checkpointer, read_run_config
from slm_jax.training.optim import make_optimizer
from slm_jax.training.step import init_state


@dataclass(frozen=True)
class LoadedRun:
    cfg: Config
    model: CausalLM
    params: PyTree
    tokenizer: Any  # None for a run trained on a generated task
    step: int


def load_run(run_dir: str | Path, best: bool = False, step: int | None = None) -> LoadedRun:
    """The latest (or best-by-validation, or ``step``'s) checkpoint of ``run_dir``.

    The tokenizer is ours (char/byte) or, in a run imported by ``slm convert from-hf``, the
    model's Hugging Face ``tokenizer.json`` (slm_jax/interop/hf_tokenizer.py).
    """
    from slm_jax.interop.hf_tokenizer import load_run_tokenizer

    run_dir = Path(run_dir)
    cfg = config_from_dict(read_run_config(run_dir))
    tok_path = run_dir / "tokenizer.json"
    if not tok_path.is_file() and not cfg.data.task.name:  # a generated task has token ids, no text
        raise CheckpointError(f"{run_dir} has no tokenizer.json; it is not a run directory written by `slm train`.")
    params, step = restore_params(run_dir, cfg, best, step)
    tokenizer = load_run_tokenizer(tok_path) if tok_path.is_file() else None
    return LoadedRun(cfg, CausalLM(cfg.model), params, tokenizer, step)


def restore_params(run_dir: str | Path, cfg: Config, best: bool = False, step: int | None = None) -> tuple[PyTree, int]:
    """(params, step) of the latest (or best, or ``step``'s) checkpoint of ``run_dir`` whose resolved config is ``cfg``.

    A damaged checkpoint is a CheckpointError naming it (training/checkpoint.py); nothing is moved.
    """
    run_dir = Path(run_dir)
    if best and step is not None:
        raise CheckpointError("Pass either --best or --step, not both.")
    model = CausalLM(cfg.model)
    ckpt = Checkpointer(run_dir, cfg.checkpoint.every, cfg.checkpoint.keep, cfg.checkpoint.keep_best, async_save=False)
    try:
        if step is None and (ckpt.best_step() if best else ckpt.latest_step()) is None:
            which = "best " if best else ""
            raise CheckpointError(f"{run_dir} has no {which}checkpoint yet; train it first with `slm train`.")
        tc = cfg.train
        if cfg.model.quant.bits:  # written by `slm quantize`: params (ints and scales) and step only
            from slm_jax.quant.params import abstract_quantized

            abstract = {"params": abstract_quantized(cfg.model), "step": jax.ShapeDtypeStruct((), np.int32)}
        else:
            abstract_params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, tc.seq_len), np.int32)))
            optimizer, _ = make_optimizer(cfg.optim, tc.steps, abstract_params)
            abstract = jax.eval_shape(lambda: init_state(model, optimizer, tc.seed, tc.seq_len))
        state, _, _ = ckpt.restore(abstract, step=step, best=best)
    finally:
        ckpt.close()
    return state["params"], int(state["step"])
