"""The masked-LM objective (BERT, Devlin et al. 2019, arXiv:1810.04805) as a batch transform.

Each sequence gets exactly ``m = round(mask_rate * t)`` predicted positions (a static shape, like
BERT's ``max_predictions_per_seq``), drawn uniformly without replacement. At each, the input
token becomes the mask id ``vocab_size`` (the extra embedding row an encoder reserves,
models/lm.py) with probability ``mask_token_prob``, a uniformly random token with
``random_token_prob``, and stays as is otherwise (BERT's 80/10/10). The result is the compact
labelled batch of training/step.py, so the loss is taken, and the logits computed, only at the
predicted positions. The draw is seeded by ``train.seed`` and the window's own tokens, so a
resumed run and every validation pass see the same masks without carrying an RNG.
"""

import zlib

import numpy as np

from slm_jax.config import TrainConfig


def n_masked(seq_len: int, mask_rate: float) -> int:
    """Predicted positions per sequence of ``seq_len`` tokens (at least one)."""
    return max(1, round(mask_rate * seq_len))


def mask_batch(windows: np.ndarray, tc: TrainConfig, vocab_size: int) -> dict[str, np.ndarray]:
    """Text windows i32[b, >= t] -> ``{"inputs": i32[b, t], "label_positions": i32[b, m], "labels": i32[b, m]}``.

    Only the first ``t = tc.seq_len`` tokens are used (text windows carry one more for next-token
    targets); label positions are in increasing order.
    """
    tokens = np.asarray(windows)[:, : tc.seq_len]
    b, t = tokens.shape
    rng = np.random.default_rng([tc.seed, zlib.crc32(np.ascontiguousarray(tokens, np.int32).tobytes())])
    positions = np.sort(np.argsort(rng.random((b, t)), axis=1)[:, : n_masked(t, tc.mask_rate)], axis=1)
    labels = np.take_along_axis(tokens, positions, axis=1)
    u = rng.random(labels.shape)
    random_tokens = rng.integers(0, vocab_size, labels.shape)
    shown = np.where(
        u < tc.mask_token_prob,
        vocab_size,
        np.where(u < tc.mask_token_prob + tc.random_token_prob, random_tokens, labels),
    )
    inputs = tokens.copy()
    np.put_along_axis(inputs, positions, shown, axis=1)
    return {
        "inputs": inputs.astype(np.int32),
        "label_positions": positions.astype(np.int32),
        "labels": labels.astype(np.int32),
    }
