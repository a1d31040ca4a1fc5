"""Pseudo-perplexity of a masked-LM encoder (Salazar et al. 2020, "Masked Language Model Scoring", arXiv:1910.14659).

Each valid position i of a sequence s is masked once and scored: PLL(s) = sum_i log p(s_i | s with s_i masked),
and PPPL = exp(-sum_s PLL(s) / number of scored tokens). A row of t tokens becomes t copies, copy i with token i
replaced by the mask id (``vocab_size``, the extra embedding row of an encoder: training/mlm.py); the copies of all
rows run ``chunk`` at a time, with the logits computed only at the masked position (``logit_positions``), so
memory is bounded by ``chunk`` x t x d whatever the number of sequences. It costs t forward passes per sequence.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import PyTree
from slm_jax.errors import ConfigError


def masked_nll_fn(model) -> Callable:
    """Jitted ``(params, tokens i32[c, t], positions i32[c], lengths i32[c]) -> f32[c]``: the negative log-probability
    of ``tokens[j, positions[j]]`` when that token is replaced by the mask id."""
    mask_id = model.cfg.vocab_size

    def nll(params: PyTree, tokens: jax.Array, positions: jax.Array, lengths: jax.Array) -> jax.Array:
        rows = jnp.arange(tokens.shape[0])
        masked = tokens.at[rows, positions].set(mask_id)
        logits, _ = model.apply(params, masked, logit_positions=positions[:, None], lengths=lengths)  # [c, 1, v]
        logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)  # [c, v]
        return -logp[rows, tokens[rows, positions]]

    return jax.jit(nll)


def pseudo_log_likelihood(
    model, params: PyTree, tokens: np.ndarray, lengths: np.ndarray | None = None, chunk: int = 64
) -> np.ndarray:
    """tokens i32[n, t] right-padded to ``lengths`` i32[n] (None: all t valid) -> -log p f32[m] of every valid token,
    row by row (m = sum of lengths), each scored with itself masked."""
    if model.cfg.causal:
        raise ConfigError(
            "Pseudo-perplexity masks tokens and needs a masked-LM encoder (model.causal: false); "
            "a decoder's perplexity is val_ppl."
        )
    tokens = np.asarray(tokens, np.int32)
    n, t = tokens.shape
    lengths = np.full((n,), t, np.int32) if lengths is None else np.asarray(lengths, np.int32)
    row = np.repeat(np.arange(n), lengths)  # [m]: the (row, position) of every scored token, row by row
    pos = np.concatenate([np.arange(k) for k in lengths]).astype(np.int32)
    m = len(row)
    chunk = min(chunk, m)
    pad = -m % chunk  # the last chunk repeats its first pair; those results are dropped
    row, pos = np.concatenate([row, np.repeat(row[-1:], pad)]), np.concatenate([pos, np.repeat(pos[-1:], pad)])
    fn = masked_nll_fn(model)
    out = [
        np.asarray(fn(params, tokens[row[i : i + chunk]], pos[i : i + chunk], lengths[row[i : i + chunk]]))
        for i in range(0, len(row), chunk)
    ]
    return np.concatenate(out)[:m]


def pseudo_perplexity(
    model, params: PyTree, tokens: np.ndarray, lengths: np.ndarray | None = None, chunk: int = 64, unit: str = "token"
) -> dict:
    """{"val_pseudo_perplexity", "val_pseudo_bits_per_<unit>", "val_pseudo_tokens", "val_pseudo_seqs"} of ``tokens``."""
    nll = pseudo_log_likelihood(model, params, tokens, lengths, chunk)
    mean = float(nll.mean())
    return {
        "val_pseudo_perplexity": math.exp(min(mean, 50.0)),
        f"val_pseudo_bits_per_{unit}": mean / math.log(2),
        "val_pseudo_tokens": len(nll),
        "val_pseudo_seqs": len(tokens),
    }
