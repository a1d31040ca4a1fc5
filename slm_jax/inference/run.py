"""Load a trained run directory: its resolved config, model, parameters and tokenizer.

Only the parameters are read (rundir/params.py): no optimizer and no train state are built.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_jax.array_typing import PyTree
from slm_jax.config import Config, config_from_dict
from slm_jax.data.tokenizers import load_tokenizer
from slm_jax.models.lm import CausalLM
from slm_jax.rundir.checkpoint import read_run_config
from slm_jax.rundir.files import TOKENIZER_FILE
from slm_jax.rundir.params import restore_params


@dataclass(frozen=True)
class LoadedRun:
    cfg: Config
    model: CausalLM
    params: PyTree
    tokenizer: Any  # None for a run trained on a generated task, or converted from a model without tokenizer.json
    step: int


def load_run(run_dir: str | Path, best: bool = False, step: int | None = None) -> LoadedRun:
    """The latest (or best-by-validation, or ``step``'s) checkpoint of ``run_dir``.

    The tokenizer is ours (char/byte) or, in a run imported by ``slm convert from-hf``, the
    model's Hugging Face ``tokenizer.json`` (slm_jax/data/hf_tokenizer.py); None when the run
    has no ``tokenizer.json`` (see :func:`missing_tokenizer` for what to tell the user).
    """
    run_dir = Path(run_dir)
    cfg = config_from_dict(read_run_config(run_dir))
    params, step = restore_params(run_dir, cfg, best, step)
    tok_path = run_dir / TOKENIZER_FILE
    tokenizer = load_tokenizer(tok_path) if tok_path.is_file() else None
    return LoadedRun(cfg, CausalLM(cfg.model), params, tokenizer, step)


def missing_tokenizer(run_dir: str | Path, cfg: Config) -> str:
    """The one sentence for a run that has no tokenizer to read a text prompt: why, and what to do instead."""
    if cfg.data.task.name:
        return (
            f"{run_dir} was trained on the generated task {cfg.data.task.name!r} and has no tokenizer to read "
            f"a text prompt; evaluate it with `slm eval {run_dir}`."
        )
    return (
        f"{run_dir} has no {TOKENIZER_FILE} to read a text prompt (a run converted from a model directory "
        f"without one); copy the model's {TOKENIZER_FILE} into {run_dir}, or evaluate it on a prepared data "
        f"directory with `slm eval {run_dir} --data DIR`."
    )
