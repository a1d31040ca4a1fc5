"""The task generators of experiments/task_specific (tasks.py): deterministic, balanced, split by interleaved chunks."""

import importlib.util
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared/data/tinyshakespeare.txt"
QA_SIZES = [5451, 678, 705]  # next_speaker questions in train, val, test of Tiny Shakespeare


def load_tasks():
    spec = importlib.util.spec_from_file_location("task_specific_tasks", ROOT / "experiments/task_specific/tasks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tasks = load_tasks()
GOOD, BAD = {"good", "sweet", "love", "fair"}, {"death", "foul", "hate", "woe"}


def toy_score(text: str) -> float:
    """A stand-in for VADER: +0.5 per good word, -0.5 per bad word, clipped to [-1, 1]; 0.2 for 'maybe'."""
    words = re.findall(r"[a-z]+", text.lower())
    if "maybe" in words:
        return 0.2  # inside the dropped band
    return max(-1.0, min(1.0, 0.5 * sum(w in GOOD for w in words) - 0.5 * sum(w in BAD for w in words)))


def synthetic_play(n_speeches: int = 1000, seed: int = 0) -> tuple[str, list[tuple[int, str, list[str]]]]:
    """A corpus of ``NAME:`` speeches and, for checking, (offset, speaker, lines) of each speech."""
    rng = random.Random(seed)
    names = ["ROMEO", "JULIET", "Nurse", "KING RICHARD III"]
    vocab = sorted(GOOD | BAD) + ["the", "sir", "my", "lord", "and", "maybe", "night", "come"]
    blocks, truth, offset = [], [], 0
    for _ in range(n_speeches):
        name = rng.choice(names)
        lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 9))).capitalize() for _ in range(1, 5)]
        lines = lines[: rng.randint(1, 4)]
        block = f"{name}:\n" + "\n".join(lines)
        truth.append((offset, name, lines))
        blocks.append(block)
        offset += len(block) + 2
    return "\n\n".join(blocks) + "\n", truth


def test_speeches_parse_headings_offsets_and_lines():
    text, truth = synthetic_play()
    got = tasks.speeches(text)
    assert [(s.offset, s.speaker, list(s.lines)) for s in got] == truth
    assert all(text[s.offset :].startswith(s.speaker + ":\n") for s in got)


def test_passages_are_whole_consecutive_lines_within_the_limit():
    speech = tasks.Speech(0, "A", ("x" * 40, "y" * 50, "z" * 30, "w" * 90, "v" * 5))
    assert tasks.passages(speech, 100) == ["x" * 40 + "\n" + "y" * 50, "z" * 30, "w" * 90 + "\n" + "v" * 5]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 400 characters, so the ~77k-character synthetic play has every split many times over."""
    monkeypatch.setattr(tasks, "SPLIT_CHUNK", 400)


def test_split_of_interleaves_chunks():
    c = tasks.SPLIT_CHUNK
    assert [tasks.split_of(k * c) for k in range(10)] == ["train"] * 8 + ["val", "test"]
    assert tasks.split_of(19 * c + c - 1) == "test" and tasks.split_of(20 * c) == "train"


def test_sentiment_task_is_deterministic_balanced_and_split_by_chunk(small_chunks):
    text, _ = synthetic_play()
    first, again = tasks.sentiment_task(text, toy_score), tasks.sentiment_task(text, toy_score)
    assert first == again
    assert tasks.sentiment_task(text, toy_score, seed=1) != first  # the class sample depends on the seed
    for split, rows in first.items():
        counts = Counter(r["label"] for r in rows)
        assert set(counts) == set(tasks.LABELS) and len(set(counts.values())) == 1, (split, counts)
        for r in rows:
            assert tasks.split_of(r["position"]) == split
            # the passage is whole lines of the speech whose heading starts at its position
            speech = text[r["position"] :].split("\n\n", 1)[0]
            assert ("\n" + r["text"] + "\n") in ("\n" + speech.split("\n", 1)[1] + "\n")
            score = toy_score(r["text"])
            expected = "positive" if score >= 0.3 else "negative" if score <= -0.3 else "neutral"
            assert abs(score) < 0.05 or abs(score) >= 0.3
            assert r["label"] == expected
    positions = {split: {r["position"] for r in rows} for split, rows in first.items()}
    assert not positions["train"] & positions["test"] and not positions["val"] & positions["test"]
    every = [(r["position"], r["text"]) for rows in first.values() for r in rows]
    assert len(set(every)) == len(every)  # no passage twice


def test_next_speaker_answers_are_the_heading_two_speeches_later(small_chunks):
    text, truth = synthetic_play()
    first = tasks.next_speaker_task(text)
    assert first == tasks.next_speaker_task(text)
    assert all(first[split] for split in tasks.SPLITS)
    index = {offset: i for i, (offset, _, _) in enumerate(truth)}
    n = 0
    for split, rows in first.items():
        for r in rows:
            i = index[r["position"]]
            (_, a, a_lines), (_, b, b_lines), (end, answer, _) = truth[i : i + 3]
            assert r["completion"] == answer
            assert r["prompt"] == f"{a}:\n{a_lines[-1]}\n\n{b}:\n{b_lines[-1]}\n\nWho speaks next?"
            assert tasks.split_of(r["position"]) == tasks.split_of(end) == split
            assert tasks.speaker_two_back(r["prompt"]) == a
            n += 1
    # every window of three speeches inside one split is a question; the windows that straddle a chunk of
    # another split are not
    assert n == sum(tasks.split_of(truth[i][0]) == tasks.split_of(truth[i + 2][0]) for i in range(len(truth) - 2))


def test_pretraining_text_holds_exactly_the_train_blocks(small_chunks):
    text, truth = synthetic_play()
    kept = tasks.pretraining_text(text)
    for offset, speaker, lines in truth:
        block = f"{speaker}:\n" + "\n".join(lines)
        assert (("\n\n" + block + "\n") in ("\n\n" + kept)) == (tasks.split_of(offset) == "train"), block


@pytest.mark.skipif(not CORPUS.is_file(), reason="needs ../shared/data/tinyshakespeare.txt")
def test_tasks_on_tiny_shakespeare_have_the_documented_sizes_and_no_shared_speech():
    text = CORPUS.read_text()
    sentiment = tasks.sentiment_task(text, toy_score)
    qa = tasks.next_speaker_task(text)
    for split in ("train", "val", "test"):
        counts = Counter(r["label"] for r in sentiment[split])
        assert len(set(counts.values())) == 1 and min(counts.values()) >= 10, (split, counts)
    assert [len(qa[s]) for s in ("train", "val", "test")] == QA_SIZES
    for rows in (qa, sentiment):
        train_positions = {r["position"] for r in rows["train"]}
        assert not train_positions & {r["position"] for r in rows["test"] + rows["val"]}
    # the QA test answers are names the training questions also answer (both splits read every play)
    train_names = {r["completion"] for r in qa["train"]}
    assert sum(r["completion"] in train_names for r in qa["test"]) >= 0.9 * len(qa["test"])
