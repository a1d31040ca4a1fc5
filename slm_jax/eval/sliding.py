"""Sliding-window perplexity for long token streams (the strided evaluation of Press et al. 2021,
"Shortformer", https://arxiv.org/abs/2012.15832, as in the Hugging Face perplexity guide).

Each window holds ``context`` input tokens and advances by ``stride``; it scores only the targets no
earlier window scored (all of them in the first window), so every target is scored exactly once with
at least ``context - stride`` tokens before it. ``stride == context`` tiles the stream with
non-overlapping windows (today's eval); smaller strides give each token more context at
``context / stride`` times the cost.
"""

from typing import Iterator

import numpy as np

from slm_jax.errors import DataError


def window_plan(n_tokens: int, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each window starts and which of its positions it scores.

    Window ``i`` reads inputs ``tokens[s_i : s_i + context]`` and targets ``tokens[s_i + 1 : s_i + context + 1]``;
    it scores target positions ``first_i ..< context``. The last window is moved back so that it ends at the
    stream's end, which keeps every window ``context`` long (one compiled shape).

    Returns:
        starts i64[w] and first i64[w] (the first scored position of each window).
    """
    if context < 1 or not 1 <= stride <= context:
        raise DataError(f"The stride must be between 1 and the context ({context}) tokens, got {stride}; fix --stride.")
    if n_tokens < context + 1:
        raise DataError(
            f"A window of context + 1 = {context + 1} tokens does not fit in {n_tokens} tokens; "
            "pass a smaller --context or more data."
        )
    n_targets = n_tokens - 1  # token 0 has nothing before it and is never a target
    n_windows = 1 + -(-(n_targets - context) // stride)  # ceil division
    i = np.arange(n_windows)
    starts = np.minimum(i * stride, n_targets - context)
    scored_before = np.where(i == 0, 0, context + (i - 1) * stride)  # targets 1..scored_before are done
    first = np.where(i == 0, 0, scored_before - starts)  # window position p predicts token starts + p + 1
    return starts, first


def sliding_batches(tokens: np.ndarray, batch_size: int, context: int, stride: int) -> Iterator[dict]:
    """Labelled batches ``{"inputs": i32[b, context], "targets": i32[b, context]}`` covering the whole stream.

    A target of -1 is not scored (training/step.py's task-batch form), so ``make_eval_step`` sums each target
    once. The last batch is padded with rows that score nothing.
    """
    tokens = np.asarray(tokens, np.int32)
    starts, first = window_plan(len(tokens), context, stride)
    offsets = np.arange(context + 1)
    scored = offsets[None, :-1] >= first[:, None]  # bool[w, context]
    for lo in range(0, len(starts), batch_size):
        windows = tokens[starts[lo : lo + batch_size, None] + offsets]  # [<= b, context + 1]
        targets = np.where(scored[lo : lo + batch_size], windows[:, 1:], -1)
        pad = batch_size - len(windows)
        yield {
            "inputs": np.pad(windows[:, :-1], ((0, pad), (0, 0))),
            "targets": np.pad(targets, ((0, pad), (0, 0)), constant_values=-1),
        }
