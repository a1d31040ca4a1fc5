"""A run directory with seeded random weights (no training), for pruning tests: config, tokenizer, one checkpoint."""

from pathlib import Path

import jax
import jax.numpy as jnp

from slm_jax.config import Config, config_from_dict
from slm_jax.data.tokenizers import CharTokenizer
from slm_jax.models.lm import CausalLM
from slm_jax.rundir.files import new_run_dir, write_config, write_tokenizer
from slm_jax.rundir.params import save_params

TEXT = "the cat sat on the mat. a dog ran to the log! " * 40


def perturbed_params(cfg: Config, seed: int = 0):
    """``CausalLM(cfg.model)`` params, every leaf (norm scales included) randomly scaled so no two channels tie."""
    params = CausalLM(cfg.model).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(
        tree, [x * jax.random.uniform(k, x.shape, x.dtype, 0.5, 1.5) for x, k in zip(leaves, keys)]
    )


def make_run(tmp: Path, overrides: list[str], name: str = "run", seed: int = 0) -> Path:
    """A char-level run on ``TEXT`` in ``tmp / name`` whose model is ``overrides`` (e.g. model.preset=griffin)."""
    text = tmp / "corpus.txt"
    text.write_text(TEXT)
    tok = CharTokenizer.from_text(TEXT)
    raw = {
        "model": {"n_layers": 3, "d_model": 32, "n_heads": 4, "vocab_size": tok.vocab_size},
        "data": {"path": str(text), "cache_dir": str(tmp / "cache")},
        "train": {"steps": 2, "batch_size": 2, "seq_len": 16, "log_every": 1},
        "eval": {"every": 2, "batches": 1},
        "checkpoint": {"every": 2, "async_save": False},
        "optim": {"warmup_steps": 1},
    }
    cfg = config_from_dict(raw, overrides)
    run_dir = tmp / name
    with new_run_dir(run_dir) as out:
        write_config(out, cfg)
        write_tokenizer(out, tok)
        save_params(out, cfg, perturbed_params(cfg, seed), 7)
    return run_dir
