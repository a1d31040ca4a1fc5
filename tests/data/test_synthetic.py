"""Synthetic tasks: layouts and labels, the MQAR gap law, determinism, grain batches and their state, errors."""

import json

import numpy as np
import pytest

from slm_jax.data.synthetic import (
    TASKS,
    TaskSource,
    exact_match,
    make_example,
    scored_accuracy,
    task_batches,
    task_eval_batches,
    task_options,
)
from slm_jax.errors import ConfigError, DataError

OPTIONS = {"mqar": {"n_pairs": 4}, "selective_copying": {"n_tokens": 4}, "induction_heads": {}}


def examples(task, n, seq_len, vocab_size, split="train", seed=0, **options):
    return [make_example(task, seed, split, i, seq_len, vocab_size, **options) for i in range(n)]


@pytest.mark.parametrize("random_filler", [False, True])
@pytest.mark.parametrize("seq_len", [16, 33, 64])
def test_mqar_layout_and_labels(random_filler, seq_len):
    vocab, d = 40, 4
    filler = []
    for ex in examples("mqar", 50, seq_len, vocab, n_pairs=d, random_filler=random_filler):
        x, y = ex["inputs"], ex["targets"]
        assert x.shape == y.shape == (seq_len,) and x.dtype == y.dtype == np.int32
        keys, values = x[0 : 2 * d : 2], x[1 : 2 * d : 2]  # the context is k1 v1 ... kD vD
        assert np.all((1 <= keys) & (keys < vocab // 2)) and np.all((vocab // 2 <= values) & (values < vocab))
        assert len(set(keys.tolist())) == d
        value_of = dict(zip(keys.tolist(), values.tolist()))
        query = np.flatnonzero(y >= 0)  # scored positions are exactly the query keys
        assert len(query) == d
        assert np.all(query >= 2 * d) and np.all((query - 2 * d) % 2 == 0)
        assert sorted(x[query].tolist()) == sorted(keys.tolist())  # every key queried exactly once
        assert all(y[p] == value_of[x[p]] and x[p + 1] == value_of[x[p]] for p in query)
        assert np.all(y[y != -1] >= vocab // 2)
        used = np.zeros(seq_len, bool)
        used[: 2 * d] = used[query] = used[query + 1] = True
        filler.append(x[~used])
        if random_filler:
            assert np.all((0 <= x) & (x < vocab))
            # No filler token is a key: each key occurs only in its pair and its query.
            assert all(np.count_nonzero(x == k) == 2 for k in keys)
        else:
            assert np.all(x[~used] == 0)
    filler = np.concatenate(filler)
    assert len(filler) == 50 * (seq_len - 4 * d)
    if random_filler and len(filler):  # the filler really is random, not zeros
        assert len(np.unique(filler)) > vocab // 2


def test_mqar_gap_follows_power_law():
    alpha, n_slots = 0.01, 8
    # One pair: the query's slot is a single draw from p(s) ~ (s + 1) ** (alpha - 1).
    exs = examples("mqar", 3000, 2 + 2 * n_slots, 20, n_pairs=1, alpha=alpha)
    slots = np.array([(np.flatnonzero(ex["targets"] >= 0)[0] - 2) // 2 for ex in exs])
    freq = np.bincount(slots, minlength=n_slots) / len(slots)
    expected = np.arange(1, n_slots + 1) ** (alpha - 1.0)
    expected /= expected.sum()  # ~[0.37, 0.19, 0.12, ..., 0.05]
    assert np.abs(freq - expected).max() < 0.03
    assert np.abs(np.full(n_slots, 1 / n_slots) - expected).max() > 0.2  # a uniform sampler fails the check above
    # Several pairs (slots drawn without replacement): early slots are still used far more often.
    exs = examples("mqar", 500, 8 + 2 * 16, 40, n_pairs=4, alpha=alpha)
    counts = np.bincount(np.concatenate([(np.flatnonzero(ex["targets"] >= 0) - 8) // 2 for ex in exs]), minlength=16)
    assert counts[0] > 3 * counts[-1] and counts[:4].sum() > 2 * counts[-4:].sum()


def test_selective_copying_layout():
    seq_len, vocab, n = 40, 10, 6
    region = seq_len - n
    for ex in examples("selective_copying", 50, seq_len, vocab, n_tokens=n):
        x, y = ex["inputs"], ex["targets"]
        assert x.dtype == y.dtype == np.int32
        assert np.all(x[region:] == 1) and not np.any(x[:region] == 1)  # markers only at the end
        data = x[:region][x[:region] != 0]  # the data tokens, in order of position
        assert len(data) == n and np.all((2 <= data) & (data < vocab))
        np.testing.assert_array_equal(y[region:], data)  # marker j outputs data token j
        assert np.all(y[:region] == -1)


@pytest.mark.parametrize("seq_len", [3, 16, 257, 2048])  # longer lengths are the extrapolation sets
def test_induction_heads_layout(seq_len):
    vocab = 8
    for ex in examples("induction_heads", 30, seq_len, vocab):
        x, y = ex["inputs"], ex["targets"]
        special = np.flatnonzero(x == 1)
        assert len(special) == 2 and special[1] == seq_len - 1 and special[0] < seq_len // 2
        assert np.all((2 <= np.delete(x, special)) & (np.delete(x, special) < vocab))
        assert np.flatnonzero(y >= 0).tolist() == [seq_len - 1]
        assert y[-1] == x[special[0] + 1]


@pytest.mark.parametrize("task", list(TASKS))
def test_examples_are_pure_and_splits_disjoint(task):
    def get(seed=0, split="train", index=0):
        return make_example(task, seed, split, index, 64, 32, **OPTIONS[task])

    a, b = get(), get()
    assert all(np.array_equal(a[k], b[k]) for k in ("inputs", "targets"))
    for other in (get(index=1), get(split="val"), get(seed=1)):
        assert not np.array_equal(a["inputs"], other["inputs"])
    train = {get(index=i)["inputs"].tobytes() for i in range(30)}
    val = {get(split="val", index=i)["inputs"].tobytes() for i in range(30)}
    assert not train & val


def test_task_options_and_errors():
    assert list(task_options("mqar")) == ["n_pairs", "alpha", "random_filler"]
    with pytest.raises(ConfigError, match="one of: mqar, selective_copying, induction_heads"):
        make_example("mqr", 0, "train", 0, 64, 32)
    with pytest.raises(ConfigError, match="no option 'n_tokens'; its options are: n_pairs, alpha, random_filler"):
        make_example("mqar", 0, "train", 0, 64, 32, n_pairs=4, n_tokens=3)
    with pytest.raises(ConfigError, match="needs option 'n_pairs'"):
        make_example("mqar", 0, "train", 0, 64, 32)
    with pytest.raises(ConfigError, match="its options are: none"):
        make_example("induction_heads", 0, "train", 0, 64, 32, n_pairs=4)
    with pytest.raises(ConfigError, match="train, val"):
        make_example("induction_heads", 0, "test", 0, 64, 32)
    with pytest.raises(DataError, match="non-negative"):
        make_example("induction_heads", -1, "train", 0, 64, 32)
    bad = [
        ("mqar", 15, 32, {"n_pairs": 4}, "seq_len >= 4"),
        ("mqar", 64, 9, {"n_pairs": 4}, "vocab_size >= 2"),
        ("mqar", 64, 32, {"n_pairs": 0}, "n_pairs >= 1"),
        ("mqar", 64, 32, {"n_pairs": 4, "alpha": 0.0}, "alpha > 0"),
        ("selective_copying", 7, 32, {"n_tokens": 4}, "seq_len >= 2"),
        ("selective_copying", 64, 2, {"n_tokens": 4}, "vocab_size must be >= 3"),
        ("induction_heads", 2, 32, {}, "seq_len >= 3"),
        ("induction_heads", 64, 2, {}, "vocab_size must be >= 3"),
    ]
    for task, seq_len, vocab, options, message in bad:
        with pytest.raises(ConfigError, match=message):
            make_example(task, 0, "train", 0, seq_len, vocab, **options)
    with pytest.raises(ConfigError, match="seq_len >= 4"):  # a source fails when built, not mid-run
        TaskSource("mqar", 0, "train", 10, 15, 32, n_pairs=4)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_task_batches_epochs_and_state_round_trip():
    source = TaskSource("mqar", 0, "train", 8, 32, 64, n_pairs=4)
    assert (
        repr(source)
        == "TaskSource('mqar', seed=0, split='train', num_examples=8, seq_len=32, vocab_size=64, n_pairs=4)"
    )
    index_of = {source[i]["inputs"].tobytes(): i for i in range(len(source))}
    assert len(index_of) == 8

    def order(batches):
        return [index_of[row.tobytes()] for b in batches for row in b["inputs"]]

    batches = take(task_batches(source, 4, seed=1), 6)  # three epochs
    for b in batches:
        assert b["inputs"].shape == b["targets"].shape == (4, 32) and b["targets"].dtype == np.int32
    epochs = [order(batches[i : i + 2]) for i in (0, 2, 4)]
    assert all(sorted(e) == list(range(8)) for e in epochs)  # each epoch sees every example once
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled per epoch
    assert order(take(task_batches(source, 4, seed=1, shuffle=False), 2)) == list(range(8))

    it = task_batches(source, 4, seed=1)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
    resumed = task_batches(source, 4, seed=1)
    resumed.set_state(state)
    for x, y in zip(take(resumed, 3), batches[3:]):
        assert all(np.array_equal(x[k], y[k]) for k in ("inputs", "targets"))


def test_task_eval_batches():
    source = TaskSource("selective_copying", 0, "val", 10, 16, 8, n_tokens=3)
    batches = task_eval_batches(source, 4, 5)
    assert len(batches) == 2  # 10 examples hold two full batches of 4
    np.testing.assert_array_equal(batches[1]["inputs"][2], source[6]["inputs"])
    again = task_eval_batches(source, 4, 5)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(batches, again) for k in ("inputs", "targets"))
    with pytest.raises(DataError, match="does not fit"):
        task_eval_batches(source, 11, 1)


def test_scored_accuracy_and_exact_match():
    targets = np.array([[-1, 5, -1, 7], [3, -1, -1, -1], [-1, -1, -1, -1]])
    predictions = np.array([[0, 5, 0, 6], [3, 0, 0, 0], [1, 1, 1, 1]])  # unscored positions are ignored
    assert scored_accuracy(predictions, targets) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(exact_match(predictions, targets), [False, True, True])
    with pytest.raises(DataError, match="No scored positions"):
        scored_accuracy(predictions[2:], targets[2:])


def test_min_len_mixes_lengths_left_padded_with_the_scored_positions_at_the_end():
    source = TaskSource("induction_heads", 0, "train", 200, 64, 16, min_len=8)
    lengths = []
    for i in range(200):
        ex = source[i]
        assert ex["inputs"].shape == (64,) and ex["targets"][-1] >= 2  # scored last position kept
        assert (ex["targets"] >= 0).sum() == 1
        nonpad = np.flatnonzero(ex["inputs"])  # induction heads never emits token 0, so 0 is padding
        lengths.append(64 - nonpad[0])
        assert (ex["inputs"][nonpad[0] :] > 0).all() and (ex["targets"][: nonpad[0]] == -1).all()
    lengths = np.array(lengths)
    assert lengths.min() >= 8 and lengths.max() >= 56
    assert 0.35 < (lengths <= 23).mean() < 0.65  # log-uniform: the geometric midpoint sqrt(8 * 64) ~ 23 splits it
    assert (
        source[5]["inputs"].tolist()
        == make_example("induction_heads", 0, "train", 5, 64, 16, min_len=8)["inputs"].tolist()
    )


def test_min_len_errors_name_the_key():
    with pytest.raises(ConfigError, match="min_train_len"):
        TaskSource("induction_heads", 0, "train", 4, 32, 16, min_len=40)
    with pytest.raises(ConfigError, match="min_train_len=6 is too short"):
        TaskSource("selective_copying", 0, "train", 4, 32, 16, min_len=6, n_tokens=4)
