"""Streaming, sharded prepare: the same ids as encoding the whole corpus at once, bounded memory, same batches."""

import tracemalloc

import numpy as np
import pytest

from slm_jax.data import prepare as prepare_mod
from slm_jax.data.pipeline import eval_batches, train_batches
from slm_jax.data.prepare import prepare
from slm_jax.data.source import open_dataset
from slm_jax.data.token_files import ShardedTokens, load_data_tokenizer, load_meta, load_split

WORDS = np.array(["alpha", "beta", "gamma", "delta", "köln", "ærø", "x", "yy", "  ", "\n", "\n\n", "-", "42"])


def generated_text(n_bytes: int, seed: int = 0) -> str:
    """Random words, spaces and (double) newlines: about ``n_bytes`` of UTF-8."""
    words = np.random.default_rng(seed).choice(WORDS, size=n_bytes // 4)
    return " ".join(words.tolist())


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "big.txt"
    path.write_text(generated_text(3_000_000), encoding="utf-8")  # ~3 MB: several 1 MiB reading pieces
    return path


def all_ids(out) -> np.ndarray:
    return np.concatenate([np.asarray(load_split(out, s)) for s in ("train", "val")])


@pytest.mark.parametrize("tokenizer", ["byte", "char", "bpe"])
def test_streamed_shards_equal_whole_corpus_encoding(tmp_path, corpus_file, tokenizer):
    vocab = {"vocab_size": 400} if tokenizer == "bpe" else {}
    single = prepare([corpus_file], tokenizer, tmp_path / "single", **vocab)
    sharded = prepare([corpus_file], tokenizer, tmp_path / "sharded", shard_tokens=250_000, **vocab)
    ids = all_ids(tmp_path / "single")
    assert np.array_equal(ids, all_ids(tmp_path / "sharded"))
    tok = load_data_tokenizer(tmp_path / "single")
    text = corpus_file.read_text(encoding="utf-8")
    whole = tok.encode(text)  # the non-streaming reference: one call on the whole text
    if tokenizer == "bpe":
        whole = np.append(whole, tok.eos_id)
    assert np.array_equal(ids, whole)
    assert {k: single[k] for k in ("train_tokens", "val_tokens", "vocab_size")} == {
        k: sharded[k] for k in ("train_tokens", "val_tokens", "vocab_size")
    }
    shards = load_meta(tmp_path / "sharded")["shards"]
    assert len(shards["train"]) > 1 and all(s["tokens"] <= 250_000 for s in shards["train"] + shards["val"])
    assert sum(s["tokens"] for s in shards["train"]) == sharded["train_tokens"]
    names = {p.name for p in (tmp_path / "sharded").iterdir()}
    assert names == {
        "meta.json",
        "tokenizer.json",
        "train.docs.npy",
        "val.docs.npy",
        *(s["file"] for s in shards["train"] + shards["val"]),
    }


def test_sharded_split_gives_the_same_batches(tmp_path):
    (tmp_path / "t.txt").write_text(generated_text(40_000), encoding="utf-8")
    prepare([tmp_path / "t.txt"], "byte", tmp_path / "one")
    prepare([tmp_path / "t.txt"], "byte", tmp_path / "many", shard_tokens=3_000)
    one, many = open_dataset(tmp_path / "one"), open_dataset(tmp_path / "many")
    assert isinstance(many.train, ShardedTokens) and len(many.train.shards) > 5
    it_one, it_many = train_batches(one.train, 8, 64, seed=3), train_batches(many.train, 8, 64, seed=3)
    for _ in range(5):  # 8 x 65 windows from 12 shards of 3,000: most batches cross a shard boundary
        assert np.array_equal(next(it_one), next(it_many))
    for a, b in zip(eval_batches(one.val, 4, 32, 3), eval_batches(many.val, 4, 32, 3)):
        assert np.array_equal(a, b)
    assert np.array_equal(many.train[100:7_000:7], one.train[100:7_000:7])


def _peak_bytes(path, out, tokenizer) -> int:
    tracemalloc.start()
    prepare([path], tokenizer, out, shard_tokens=200_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mod, "BATCH_CHARS", 1 << 18)
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text(generated_text(1_000_000), encoding="utf-8")
    large.write_text(generated_text(6_000_000, seed=1), encoding="utf-8")
    for tokenizer in ("char", "byte"):
        p_small = _peak_bytes(small, tmp_path / "s", tokenizer)
        p_large = _peak_bytes(large, tmp_path / "l", tokenizer)
        assert p_large < 1.3 * p_small + (1 << 20), (tokenizer, p_small, p_large)
        assert p_large < 64 << 20  # a few 1 MiB pieces and their ids, whatever the corpus size


def test_char_encode_ascii_fast_path_matches_unicode_path():
    from slm_jax.data.tokenizers import CharTokenizer
    from slm_jax.errors import DataError

    tok = CharTokenizer.from_text("ab c\né")
    ascii_ids = tok.encode("ab c\nba")  # ASCII: byte table
    assert np.array_equal(ascii_ids, tok.encode("ab c\nbaé")[:-1])  # non-ASCII: code point table
    assert tok.decode(ascii_ids) == "ab c\nba"
    for bad in ("abz", "ab☃"):
        with pytest.raises(DataError, match=repr(bad[-1])):
            tok.encode(bad)
