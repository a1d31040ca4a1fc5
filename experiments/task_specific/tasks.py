"""The two labelled tasks of experiments/task_specific, generated deterministically from Tiny Shakespeare.

The corpus is a sequence of blocks separated by blank lines; a speech is a block made of a
``NAME:`` line and its verse or prose lines (a few blocks are a heading alone, whose text the
corpus dropped). Splits interleave through the file so that every play is in each of them: the
file is cut into ``SPLIT_CHUNK``-character chunks, and a block belongs to the split of the chunk
its first character is in: chunk ``k`` is test when ``k % 10 == 9``, val when ``k % 10 == 8``,
train otherwise. The language models are pretrained only on the train blocks
(``pretraining_text``), so no model has read a val or test speech, but each has read other
scenes of the same plays. (A split by position, test = the file's last 10%, puts two plays in
test that no training example names: the answers of the QA task then share almost no name with
the training answers, and a fine-tuned model that has not learned to copy a name out of its
prompt scores zero exact match, which is what the first run of this experiment measured.)

- ``sentiment``: passages (consecutive whole lines of one speech, at most ``MAX_CHARS``
  characters) labelled by a lexicon scorer, in run.py VADER's compound score (Hutto & Gilbert
  2014, the ``vaderSentiment`` package's own lexicon): ``positive`` at >= 0.3, ``negative`` at
  <= -0.3, ``neutral`` below 0.05 in magnitude; the passages in between are dropped. Each split
  keeps the same number of every class (a seeded sample of the larger classes), so chance is 1/3.
- ``next_speaker`` (short-answer QA): the prompt shows the last line of each of two consecutive
  speeches under their speaker headings and asks ``Who speaks next?``; the answer is the heading
  of the speech that follows, e.g. ``JULIET``. The three speeches are consecutive blocks of the
  file, all in one split.

Rows carry ``position`` (character offset of the first speech they read), so a test can check
that the splits never share a speech.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

MAX_CHARS = 100  # longest sentiment passage
SPLIT_CHUNK = 10_000  # characters per chunk of the interleaved split (about 65 speeches)
SPLITS = ("train", "val", "test")
POSITIVE_AT, NEGATIVE_AT, NEUTRAL_BELOW = 0.3, -0.3, 0.05
LABELS = ("negative", "neutral", "positive")
QUESTION = "Who speaks next?"
HEADING = re.compile(r"[A-Z][A-Za-z',.&\- ]*:")


@dataclass(frozen=True)
class Speech:
    """One speech: the character offset of its heading, the speaker's name, its lines and its block number."""

    offset: int
    speaker: str
    lines: tuple[str, ...]
    block: int = 0


def blocks(text: str) -> list[tuple[int, str]]:
    """(character offset, text) of every non-empty block of the corpus between blank lines, in file order."""
    out, offset = [], 0
    for block in text.split("\n\n"):
        stripped = block.lstrip("\n")  # a third newline in a row starts the next block
        if stripped.strip():
            out.append((offset + len(block) - len(stripped), stripped.rstrip("\n")))
        offset += len(block) + 2
    return out


def speeches(text: str) -> list[Speech]:
    """The speeches of the corpus in file order (blocks that are not a ``NAME:`` line with text are skipped)."""
    out = []
    for i, (offset, block) in enumerate(blocks(text)):
        head, _, body = block.partition("\n")
        if HEADING.fullmatch(head) and body.strip():
            out.append(Speech(offset, head[:-1], tuple(body.split("\n")), i))
    return out


def split_of(offset: int) -> str:
    """The split of a block whose first character is at ``offset``: test / val / train by its chunk (docstring)."""
    chunk = offset // SPLIT_CHUNK % 10
    return "test" if chunk == 9 else "val" if chunk == 8 else "train"


def pretraining_text(text: str) -> str:
    """The corpus without its val and test blocks: what the language models are trained on."""
    return "\n\n".join(block for offset, block in blocks(text) if split_of(offset) == "train") + "\n"


def passages(speech: Speech, max_chars: int = MAX_CHARS) -> list[str]:
    """The speech's lines grouped greedily, in order, into passages of at most ``max_chars`` characters."""
    out, current = [], ""
    for line in speech.lines:
        if len(line) > max_chars:  # never in this corpus (its longest line is far shorter); skipped, not cut
            continue
        joined = f"{current}\n{line}" if current else line
        if len(joined) > max_chars:
            out.append(current)
            joined = line
        current = joined
    return out + ([current] if current else [])


def sentiment_label(score: float) -> str | None:
    """The class of a compound score in [-1, 1], or None inside the dropped bands."""
    if score >= POSITIVE_AT:
        return "positive"
    if score <= NEGATIVE_AT:
        return "negative"
    if abs(score) < NEUTRAL_BELOW:
        return "neutral"
    return None


def sentiment_task(text: str, score: Callable[[str], float], seed: int = 0) -> dict[str, list[dict]]:
    """{split: [{"text", "label", "position"}]}: balanced three-way sentiment of passages, in file order.

    ``score(passage) -> compound score in [-1, 1]``; every class of a split is cut to its smallest
    class by a sample seeded with ``seed``.
    """
    by_split: dict[str, dict[str, list[dict]]] = {name: {label: [] for label in LABELS} for name in SPLITS}
    for speech in speeches(text):
        for passage in passages(speech):
            label = sentiment_label(score(passage))
            if label is not None:
                row = {"text": passage, "label": label, "position": speech.offset}
                by_split[split_of(speech.offset)][label].append(row)
    rng = random.Random(seed)
    out = {}
    for name, classes in by_split.items():
        n = min(len(rows) for rows in classes.values())
        kept = [row for rows in classes.values() for row in rng.sample(rows, n)]
        out[name] = sorted(kept, key=lambda r: (r["position"], r["text"]))
    return out


def context(speech: Speech) -> str:
    """A speech as the QA prompt shows it: its heading and its last line."""
    return f"{speech.speaker}:\n{speech.lines[-1]}"


def next_speaker_task(text: str) -> dict[str, list[dict]]:
    """{split: [{"prompt", "completion", "position"}]}: who speaks after two given speeches, in file order."""
    all_speeches = speeches(text)
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for before, last, answer in zip(all_speeches, all_speeches[1:], all_speeches[2:]):
        split = split_of(before.offset)
        if answer.block != before.block + 2 or split != split_of(answer.offset):
            continue  # not three consecutive blocks (a heading without text between them), or two splits
        prompt = f"{context(before)}\n\n{context(last)}\n\n{QUESTION}"
        out[split].append({"prompt": prompt, "completion": answer.speaker, "position": before.offset})
    return out


def speaker_two_back(prompt: str) -> str:
    """The rule-of-thumb answer: the first speaker shown (dialogue alternates between two people)."""
    return prompt.split(":\n", 1)[0]
