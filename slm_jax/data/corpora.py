"""Deterministic generated text corpora for offline demos and tests.

Each corpus is a pure function of a seed, so a demo needs no download and two machines
generate the same bytes. They are small (a few hundred KB) and have structure a tiny
character model can partly learn in minutes on a CPU, which makes them good smoke tests
for a whole training run:

    text = generate_corpus("arithmetic", seed=0)   # "417+38=455\\n..."
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from slm_jax.errors import DataError


@dataclass(frozen=True)
class Corpus:
    """A named generator: ``generate(rng) -> text`` plus a one-line description."""

    generate: Callable[[np.random.Generator], str]
    description: str


def _arithmetic(rng: np.random.Generator, n_lines: int = 30_000) -> str:
    """Lines "a+b=c\\n" with operands uniform in 0-999 (~350 KB).

    The left side is noise to the model; the sum is learnable, digits of the answer from
    right to left are increasingly hard (carries), which gives a graded signal.
    """
    ab = rng.integers(0, 1000, size=(n_lines, 2))  # (n, 2)
    c = ab.sum(axis=1)  # (n,)
    return "".join(f"{a}+{b}={s}\n" for (a, b), s in zip(ab.tolist(), c.tolist()))


def _reverse(rng: np.random.Generator, n_lines: int = 25_000) -> str:
    """Lines "word>drow\\n" with random lowercase words of 3-10 letters (~400 KB).

    The second half is a deterministic function of the first: a copy task that needs
    attention (or a large enough recurrent state) over up to 10 tokens.
    """
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 11, size=n_lines)  # (n,)
    chars = letters[rng.integers(0, 26, size=int(lengths.sum()))]  # (sum of lengths,)
    words = np.split(chars, np.cumsum(lengths)[:-1])
    return "".join(f"{''.join(w)}>{''.join(w[::-1])}\n" for w in words)


CORPORA: dict[str, Corpus] = {
    "arithmetic": Corpus(_arithmetic, "3-digit additions, one per line: '417+38=455'"),
    "reverse": Corpus(_reverse, "random words and their reversal, one per line: 'abc>cba'"),
}


def generate_corpus(name: str, seed: int = 0) -> str:
    """Generates corpus ``name`` deterministically from ``seed``.

    Args:
        name: a key of ``CORPORA``.
        seed: seed of the numpy generator; the same (name, seed) always gives the same text.

    Returns:
        The corpus text (UTF-8, newline-terminated lines).
    """
    if name not in CORPORA:
        raise DataError(f"Unknown synthetic corpus {name!r}; use one of: {', '.join(sorted(CORPORA))}.")
    return CORPORA[name].generate(np.random.default_rng(seed))
