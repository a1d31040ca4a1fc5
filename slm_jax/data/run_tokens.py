"""Token ids of text for an existing run, in the run's own vocabulary (``slm eval --data``, ``--calib``).

``data`` is a raw text file (encoded with the run's tokenizer), a prepared directory (whose tokenizer must equal the
run's; for a run without a tokenizer, whose vocabulary must fit the model) or empty (the run's own configured data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slm_jax.config import Config, replace
from slm_jax.data.source import load_dataset
from slm_jax.data.tokenizers import Tokenizer
from slm_jax.errors import DataError


def run_text_tokens(
    cfg: Config, tokenizer: Tokenizer | None, data: str, split: str, flag: str = "--data"
) -> np.ndarray:
    """(n,) token ids: all of a raw text file, else the ``split`` ("train" or "val") of a prepared data set."""
    if tokenizer is None and cfg.data.task.name:
        raise DataError(
            f"This run was trained on the generated task {cfg.data.task.name!r} and has no tokenizer for text; "
            f"drop {flag}."
        )
    if tokenizer is None and not (data and Path(data).is_dir()):
        raise DataError(
            "This run has no tokenizer.json to encode text with; "
            f"pass a prepared data directory in its vocabulary with {flag}."
        )
    if data and Path(data).is_file():
        return np.asarray(tokenizer.encode(Path(data).read_text(encoding="utf-8")), np.int32)
    dataset = load_dataset(replace(cfg, **{"data.path": data}).data if data else cfg.data)
    if tokenizer is None:  # a converted run without a tokenizer: the ids must at least fit its vocabulary
        if int(dataset.meta["vocab_size"]) > cfg.model.vocab_size:
            raise DataError(
                f"The data in {dataset.data_dir} has {dataset.meta['vocab_size']} token ids but the run only "
                f"{cfg.model.vocab_size}; pass a data directory prepared in the run's vocabulary with {flag}."
            )
        return getattr(dataset, split)
    if dataset.tokenizer.to_dict() != tokenizer.to_dict():
        raise DataError(
            f"The data in {dataset.data_dir} was tokenized with another vocabulary than the run; "
            f"pass a raw text file with {flag} instead."
        )
    return getattr(dataset, split)


def calibration_batches(tokens: np.ndarray, n_tokens: int, seq_len: int, batch_size: int = 8) -> list[np.ndarray]:
    """The first ``n_tokens`` of ``tokens`` as i32[<=batch_size, seq_len] rows (fewer tokens if the text is shorter)."""
    if n_tokens < seq_len:
        raise DataError(f"--calib-tokens {n_tokens} is below one sequence ({seq_len} tokens); pass at least {seq_len}.")
    n_rows = min(n_tokens, len(tokens)) // seq_len
    if not n_rows:
        raise DataError(
            f"The calibration text holds {len(tokens)} tokens, fewer than one sequence of {seq_len}; pass more text."
        )
    rows = np.asarray(tokens[: n_rows * seq_len], np.int32).reshape(n_rows, seq_len)
    return [rows[i : i + batch_size] for i in range(0, n_rows, batch_size)]
