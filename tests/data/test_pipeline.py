"""Training and eval batches: determinism, state round trip, process sharding, real windows."""

import json

import numpy as np
import pytest

from slm_jax.data.pipeline import eval_batches, train_batches
from slm_jax.errors import DataError

# Distinct values (mod 2**16) so that a window identifies its offset.
TOKENS = np.arange(5000, dtype=np.uint16)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_real_windows(batch, tokens):
    for row in batch:
        start = int(row[0])  # TOKENS[i] == i
        np.testing.assert_array_equal(row, tokens[start : start + len(row)])


def test_shapes_dtype_and_real_windows():
    batches = take(train_batches(TOKENS, 8, 31, seed=0), 3)
    for b in batches:
        assert b.shape == (8, 32) and b.dtype == np.int32
        assert_real_windows(b, TOKENS)


def test_deterministic_by_seed():
    a = take(train_batches(TOKENS, 4, 16, seed=1), 4)
    b = take(train_batches(TOKENS, 4, 16, seed=1), 4)
    c = take(train_batches(TOKENS, 4, 16, seed=2), 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], a[1])  # batches differ from step to step


def test_state_round_trip():
    full = take(train_batches(TOKENS, 4, 16, seed=3), 6)
    it = train_batches(TOKENS, 4, 16, seed=3)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
    it2 = train_batches(TOKENS, 4, 16, seed=3)
    it2.set_state(state)
    for x, y in zip(take(it2, 3), full[3:]):
        np.testing.assert_array_equal(x, y)


def test_process_sharding_union_is_single_process_batch():
    single = take(train_batches(TOKENS, 8, 16, seed=5), 2)
    shards = [take(train_batches(TOKENS, 8, 16, seed=5, process_index=p, process_count=4), 2) for p in range(4)]
    for i in range(2):
        assert all(s[i].shape == (2, 17) for s in shards)
        np.testing.assert_array_equal(np.concatenate([s[i] for s in shards]), single[i])


def test_train_errors():
    with pytest.raises(DataError, match=r"61.*60 tokens.*seq_len"):
        train_batches(TOKENS[:60], 4, 60, seed=0)
    with pytest.raises(DataError, match="not divisible"):
        train_batches(TOKENS, 6, 16, seed=0, process_count=4)
    assert next(train_batches(TOKENS[:17], 2, 16, seed=0)).shape == (2, 17)  # exactly one window fits


def test_eval_batches_deterministic_and_in_range():
    a = eval_batches(TOKENS, 4, 15, n_batches=5)
    b = eval_batches(TOKENS, 4, 15, n_batches=5)
    assert len(a) == 5 and all(x.shape == (4, 16) and x.dtype == np.int32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for x in a:
        assert_real_windows(x, TOKENS)
    starts = np.concatenate([x[:, 0] for x in a])
    assert starts[0] == 0 and starts[-1] == len(TOKENS) - 16 and np.all(np.diff(starts) > 0)


def test_eval_batches_small_split():
    few = eval_batches(TOKENS[:100], 4, 15, n_batches=10)  # 6 windows: one batch
    assert len(few) == 1 and few[0].shape == (4, 16)
    tiny = eval_batches(TOKENS[:20], 4, 15, n_batches=10)  # 1 window: overlapping windows, still 1 batch
    assert len(tiny) == 1 and tiny[0].shape == (4, 16)
    assert_real_windows(tiny[0], TOKENS)
    with pytest.raises(DataError, match="seq_len"):
        eval_batches(TOKENS[:10], 4, 15, n_batches=1)


def test_shakespeare_windows(shakespeare_path, tmp_path):
    from slm_jax.data.prepare import resolve_data_dir
    from slm_jax.data.token_files import load_data_tokenizer, load_split

    d = resolve_data_dir(shakespeare_path, "char", 0.1, tmp_path)
    train, tok = load_split(d, "train"), load_data_tokenizer(d)
    text = open(shakespeare_path, encoding="utf-8").read()
    batch = next(train_batches(train, 4, 64, seed=0))
    for row in batch:
        assert tok.decode(row) in text
