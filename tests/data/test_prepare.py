"""prepare / resolve_data_dir / prepare_synthetic / token files / load_dataset."""

import hashlib
import json

import numpy as np
import pytest

from slm_jax.config import DataConfig
from slm_jax.data.corpora import CORPORA, generate_corpus
from slm_jax.data.prepare import prepare, prepare_synthetic, resolve_data_dir
from slm_jax.data.source import load_dataset
from slm_jax.data.token_files import load_data_tokenizer, load_meta, load_split
from slm_jax.errors import DataError

TEXT = "to be or not to be, that is the question. ünïcode ok\n" * 20


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "input" / "corpus.txt"
    p.parent.mkdir()
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_prepare_writes_files_and_meta(tmp_path, text_file, tokenizer):
    out = tmp_path / "out"
    meta = prepare([text_file], tokenizer, out, val_fraction=0.1)
    assert {p.name for p in out.iterdir()} == {
        "train.bin",
        "val.bin",
        "train.docs.npy",
        "val.docs.npy",
        "tokenizer.json",
        "meta.json",
    }
    assert json.loads((out / "meta.json").read_text()) == meta == load_meta(out)
    blob = TEXT.encode("utf-8")
    n = len(TEXT) if tokenizer == "char" else len(blob)
    assert meta["tokenizer"] == tokenizer and meta["dtype"] == "uint16"
    assert meta["train_tokens"] == int(n * 0.9) and meta["train_tokens"] + meta["val_tokens"] == n
    assert meta["vocab_size"] == (len(set(TEXT)) if tokenizer == "char" else 256)
    assert meta["sources"] == [
        {"path": str(text_file.resolve()), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    ]
    # raw little-endian uint16, train then val == the whole corpus in order
    train = np.fromfile(out / "train.bin", dtype="<u2")
    val = load_split(out, "val")
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    tok = load_data_tokenizer(out)
    assert tok.decode(np.concatenate([train, val])) == TEXT
    if tokenizer == "char":
        assert tok.decode(val) == TEXT[-len(val) :]  # val is the last 10%


def test_prepare_concatenates_in_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aaaa\n"), b.write_text("bbbbbbbbbb\n")
    meta = prepare([a, b], "char", tmp_path / "out", val_fraction=0.25)
    ids = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    assert load_data_tokenizer(tmp_path / "out").decode(ids) == "aaaa\nbbbbbbbbbb\n"
    assert [s["path"] for s in meta["sources"]] == [str(a.resolve()), str(b.resolve())]


def test_prepare_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare([tmp_path / "missing.txt"], "char", tmp_path / "out")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        prepare([empty], "char", tmp_path / "out")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\xff\xfedef" * 10)
    with pytest.raises(DataError, match="not UTF-8.*--tokenizer byte"):
        prepare([binary], "char", tmp_path / "out")
    assert prepare([binary], "byte", tmp_path / "out")["train_tokens"] == 72  # bytes need no decoding
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abcdefghij")
    with pytest.raises(DataError, match="at least 2"):
        prepare([tiny], "char", tmp_path / "out2", val_fraction=0.1)  # 9 train, 1 val


def test_truncated_split_is_refused(tmp_path, text_file):
    out = tmp_path / "out"
    prepare([text_file], "char", out)
    data = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(data[:-2])
    with pytest.raises(DataError, match="truncated"):
        load_split(out, "train")


def test_resolve_caches_and_invalidates(tmp_path, text_file):
    cache = tmp_path / "cache"
    d1 = resolve_data_dir(text_file, "char", 0.1, cache)
    assert d1.parent == cache / "prepared" and d1.name.startswith("corpus-char-")
    assert not any(p.name.startswith(".") for p in d1.parent.iterdir())  # no temp dir left
    assert list(text_file.parent.iterdir()) == [text_file]  # nothing written next to the input
    mtime = (d1 / "meta.json").stat().st_mtime_ns
    assert resolve_data_dir(text_file, "char", 0.1, cache) == d1
    assert (d1 / "meta.json").stat().st_mtime_ns == mtime  # reused, not rewritten
    assert resolve_data_dir(text_file, "byte", 0.1, cache) != d1
    assert resolve_data_dir(text_file, "char", 0.2, cache) != d1
    text_file.write_text(TEXT + "changed!\n", encoding="utf-8")
    d2 = resolve_data_dir(text_file, "char", 0.1, cache)
    assert d2 != d1 and load_meta(d2)["train_tokens"] + load_meta(d2)["val_tokens"] == len(TEXT) + 9
    assert resolve_data_dir(d2, "byte", 0.5, cache) == d2  # a prepared dir is used as is


def test_resolve_env_cache_root(tmp_path, text_file, monkeypatch):
    monkeypatch.setenv("SLM_JAX_CACHE", str(tmp_path / "envcache"))
    assert resolve_data_dir(text_file).parent == tmp_path / "envcache" / "prepared"


def test_resolve_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope.txt", cache_dir=tmp_path)
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DataError, match="not a prepared data directory.*slm data prepare.*text file"):
        resolve_data_dir(tmp_path / "plain_dir", cache_dir=tmp_path)


def test_arithmetic_corpus():
    text = generate_corpus("arithmetic", seed=0)
    assert text == generate_corpus("arithmetic", seed=0) != generate_corpus("arithmetic", seed=1)
    assert 100_000 < len(text) < 1_000_000
    lines = text.splitlines()
    for line in lines[:200]:
        lhs, c = line.split("=")
        a, b = lhs.split("+")
        assert 0 <= int(a) < 1000 and 0 <= int(b) < 1000 and int(a) + int(b) == int(c)
    assert set(text) <= set("0123456789+=\n")


def test_unknown_corpus_lists_names():
    with pytest.raises(DataError, match="arithmetic"):
        generate_corpus("nope")
    assert "arithmetic" in CORPORA


def test_prepare_synthetic_cached(tmp_path):
    d = prepare_synthetic("arithmetic", cache_dir=tmp_path)
    assert prepare_synthetic("arithmetic", cache_dir=tmp_path) == d
    meta = load_meta(d)
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == 13


def test_load_dataset_choices(tmp_path, text_file):
    ds = load_dataset(DataConfig(path=str(text_file), cache_dir=str(tmp_path / "c")))
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val])) == TEXT
    assert not ds.train.flags.writeable and ds.meta["train_tokens"] == len(ds.train)
    syn = load_dataset(DataConfig(synthetic="arithmetic", cache_dir=str(tmp_path / "c")))
    assert syn.meta["vocab_size"] == 13
    with pytest.raises(DataError, match="No data.*data.path.*arithmetic"):
        load_dataset(DataConfig(cache_dir=str(tmp_path / "c")))
