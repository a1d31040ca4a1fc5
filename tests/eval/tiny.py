"""A run directory around a randomly initialised 1-layer char transformer, and by-hand log-probabilities."""

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.config import config_from_dict, to_yaml
from slm_jax.data.tokenizers import CharTokenizer, save_tokenizer
from slm_jax.models.lm import CausalLM
from slm_jax.rundir.params import save_params


def make_char_run(run_dir: Path, text: str, seq_len: int):
    """Config, char tokenizer over ``text``'s characters and step-0 parameters, saved in ``run_dir``."""
    tok = CharTokenizer.from_text(text)
    model = {"preset": "transformer", "n_layers": 1, "d_model": 32, "n_heads": 2, "vocab_size": tok.vocab_size}
    model["init_std"] = 0.3  # spread-out logits, so the choices' scores differ clearly
    cfg = config_from_dict({"name": "tiny", "model": model, "train": {"seq_len": seq_len, "batch_size": 3}})
    params = CausalLM(cfg.model).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    save_tokenizer(tok, run_dir)
    save_params(run_dir, cfg, params, 0)
    return CausalLM(cfg.model), params, tok


PAD = 64  # by-hand forward passes read contexts right-padded to this length: one compiled shape


@partial(jax.jit, static_argnums=0)
def _logits(model, params, tokens):
    return model.apply(params, tokens)[0]


def next_logprobs(model, params, context) -> np.ndarray:
    """log p(. | context) f32[v] from one forward pass over ``context`` alone (right padding comes after the last
    context token, so a causal model's output there cannot see it)."""
    context = np.asarray(context, np.int32)
    assert 0 < len(context) <= PAD
    padded = np.zeros((1, PAD), np.int32)
    padded[0, : len(context)] = context
    return np.asarray(jax.nn.log_softmax(_logits(model, params, padded)[0, len(context) - 1].astype(jnp.float32)))


def logprob(model, params, context, token: int) -> float:
    """log p(token | context)."""
    return float(next_logprobs(model, params, context)[token])
