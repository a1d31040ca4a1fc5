"""Byte-level BPE: training, the Hugging Face tokenizer.json round trip, and prepare -> train -> generate."""

import functools
import json
import resource

import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.data.hf_tokenizer import (
    _SPACE_SAFE_PATTERNS,
    END_OF_TEXT,
    HFTokenizer,
    WordCache,
    _word_text,
    _words,
    fast_encode_batch,
    train_bpe,
    word_cache_obstacle,
)
from slm_jax.data.prepare import prepare
from slm_jax.data.token_files import load_data_tokenizer, load_split
from slm_jax.data.tokenizers import load_tokenizer, save_tokenizer
from slm_jax.errors import DataError

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "to", "a", "hat", "über", "naïve"]


def corpus(n_lines: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) + ".\n" for _ in range(n_lines))


def test_train_bpe_round_trips_and_compresses():
    text = corpus(300)
    tok = train_bpe([text], vocab_size=300)
    assert (
        257 < tok.vocab_size <= 300 and tok.eos_id == 0
    )  # fewer when the corpus runs out of pairs and tok.decode([tok.eos_id]) == END_OF_TEXT
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2  # merges learnt: far fewer ids than bytes
    assert tok.decode(tok.encode("zebra ☃")) == "zebra ☃"  # unseen bytes still encode (byte-level)


def test_bpe_vocab_too_small():
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(["abc"], vocab_size=100)


def test_tokenizer_json_is_hugging_face_format(tmp_path):
    tok = train_bpe([corpus(100)], vocab_size=280)
    path = save_tokenizer(tok, tmp_path)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert "model" in d and d["model"]["type"] == "BPE" and "type" not in d
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(path))  # the library reads our file as is
    text = "the naïve cat"
    assert hf.encode(text).ids == tok.encode(text).tolist()
    loaded = load_tokenizer(path)
    assert isinstance(loaded, HFTokenizer) and loaded.to_dict() == tok.to_dict()


def test_prepare_bpe_and_with_a_tokenizer_file(tmp_path):
    docs = tmp_path / "docs.jsonl"
    lines = [corpus(5, seed=i) for i in range(20)]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    meta = prepare([docs], "bpe", tmp_path / "a", vocab_size=320)
    tok = load_data_tokenizer(tmp_path / "a")
    assert (
        meta["tokenizer"] == "bpe" and 257 < meta["vocab_size"] == tok.vocab_size <= 320 and meta["dtype"] == "uint16"
    )
    ids = np.concatenate([load_split(tmp_path / "a", s) for s in ("train", "val")])
    assert np.sum(ids == tok.eos_id) == len(lines)  # one <|endoftext|> after every document
    assert tok.decode(ids) == "".join(t + END_OF_TEXT for t in lines)
    # any tokenizer.json: the same file gives the same ids
    meta_b = prepare([docs], str(tmp_path / "a" / "tokenizer.json"), tmp_path / "b")
    ids_b = np.concatenate([load_split(tmp_path / "b", s) for s in ("train", "val")])
    assert meta_b["tokenizer"] == "hf" and np.array_equal(ids, ids_b)
    with pytest.raises(DataError, match="--vocab-size"):
        prepare([docs], "bpe", tmp_path / "c")


def test_bpe_prepare_train_eval_generate(capsys, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(corpus(400), encoding="utf-8")
    prep, run_dir = tmp_path / "prep", tmp_path / "run"
    argv = ["data", "prepare", "--input", str(text), "--tokenizer", "bpe", "--vocab-size", "300", "--out", str(prep)]
    assert main(argv) == 0
    assert 257 < json.loads(capsys.readouterr().out)["vocab_size"] <= 300
    overrides = [
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "train.steps=3",
        "train.batch_size=2",
        "train.seq_len=16",
        "eval.every=3",
        "eval.batches=1",
        "checkpoint.every=3",
        f"data.path={prep}",
    ]
    args = ["train", "configs/experiments/shakespeare_char.yaml", "--run-dir", str(run_dir), "--no-progress"]
    assert main([*args, *sum((["--set", o] for o in overrides), [])]) == 0
    capsys.readouterr()
    assert isinstance(load_tokenizer(run_dir), HFTokenizer)
    assert main(["eval", str(run_dir), "--batches", "1"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["val_loss"])
    assert main(["eval", str(run_dir), "--batches", "1", "--data", str(text)]) == 0  # raw text, run's BPE
    capsys.readouterr()
    argv = ["generate", str(run_dir), "--prompt", "the cat", "--max-new-tokens", "5", "--temperature", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("the cat") and len(out) > len("the cat")


def test_bpe_sample_trains_on_at_most_the_sample(monkeypatch, tmp_path):
    from slm_jax.data import prepare as prepare_mod

    text = corpus(600)  # ~20 KB, with multi-byte characters
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    seen, real_train = [], prepare_mod.train_bpe

    def recording_train(texts, vocab_size):
        texts = list(texts)
        seen.append(sum(len(t.encode("utf-8")) for t in texts))
        return real_train(texts, vocab_size)

    monkeypatch.setattr(prepare_mod, "train_bpe", recording_train)
    prepare([path], "bpe", tmp_path / "sample", vocab_size=300, bpe_sample_mb=0.002)  # 2,000 bytes
    prepare([path], "bpe", tmp_path / "all", vocab_size=300, bpe_sample_mb=0)
    assert seen[0] <= 2000 < seen[1] == len(text.encode("utf-8"))
    sampled = load_data_tokenizer(tmp_path / "sample")
    expected = real_train([text.encode("utf-8")[:2000].decode("utf-8", "ignore")], 300)
    assert sampled.to_dict() == expected.to_dict() != load_data_tokenizer(tmp_path / "all").to_dict()
    ids = np.concatenate([load_split(tmp_path / "sample", s) for s in ("train", "val")])
    assert sampled.decode(ids) == text + END_OF_TEXT  # the sample trains; every byte is still encoded
    with pytest.raises(DataError, match="--bpe-sample-mb"):
        prepare([path], "bpe", tmp_path / "bad", vocab_size=300, bpe_sample_mb=-1)


def test_prepare_with_tokenizer_file_equals_whole_text_encoding(monkeypatch, tmp_path):
    from slm_jax.data import prepare as prepare_mod

    text = corpus(400, seed=1) + "  two  spaces\n\n\nand lines \n end"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    tok = train_bpe([corpus(200, seed=2)], vocab_size=300)
    tok_file = save_tokenizer(tok, tmp_path)
    monkeypatch.setattr(prepare_mod, "PIECE_CHARS", 200)  # many streamed pieces, cut between words
    monkeypatch.setattr(prepare_mod, "BATCH_CHARS", 1000)  # and many batches
    prepare([path], str(tok_file), tmp_path / "out")
    ids = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    assert np.array_equal(ids, np.append(tok.encode(text), tok.eos_id))  # one encode call on the whole text


@functools.lru_cache(maxsize=1)
def onig_whitespace() -> frozenset[str]:
    """Every character the tokenizers library's regex engine matches with \\s (Unicode has none past U+FFFF)."""
    tokenizers = pytest.importorskip("tokenizers")
    every = "".join(chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000)
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\s"), behavior="removed")
    return frozenset(every) - set("".join(p for p, _ in split.pre_tokenize_str(every)))


def adversarial_text(n_atoms: int, seed: int) -> str:
    """Random text of words, digits, punctuation, every kind of whitespace, special and added tokens."""
    atoms = [*WORDS, "Ωmega", "中文", "日本語", "e\u0301", "🙂", "foo", "<|x|>", END_OF_TEXT, "\u200b", "\x00"]
    atoms += ["1", "12345", "٣", "²", "Ⅻ", ".", ",", "'s", "'LL", "'t", "!?", "—", "…", "\x1c", "\x1f"]
    atoms += [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \n", "\n ", *sorted(onig_whitespace())]
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(atoms, size=n_atoms))


def hf_bpe(pre_tokenizer, text: str, normalizer=None) -> HFTokenizer:
    """A byte-level BPE with ``pre_tokenizer`` trained on ``text``, special tokens and an added token "foo"."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, tokenizers.decoders.ByteLevel()
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=[END_OF_TEXT, "<|x|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    tok.add_tokens(["foo"])
    return HFTokenizer(tok.to_str())


def byte_level_split(pattern: str):
    tokenizers = pytest.importorskip("tokenizers")
    pre = tokenizers.pre_tokenizers
    return pre.Sequence(
        [
            pre.Split(tokenizers.Regex(pattern), behavior="isolated"),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def plain_encode(tok: HFTokenizer, texts: list[str]) -> list[list[int]]:
    """The reference: the tokenizers library's own encode of each text, one call each."""
    tokenizers = pytest.importorskip("tokenizers")
    ref = tokenizers.Tokenizer.from_str(tok.json_text)
    return [ref.encode(t, add_special_tokens=False).ids for t in texts]


@pytest.mark.parametrize("pattern", [None, *_SPACE_SAFE_PATTERNS], ids=["gpt2", "gpt2_split", "llama3", "qwen2"])
def test_word_cache_equals_plain_encode(pattern):
    tokenizers = pytest.importorskip("tokenizers")
    pre = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False) if pattern is None else byte_level_split(pattern)
    tok = hf_bpe(pre, adversarial_text(3000, seed=0) + corpus(200))
    assert word_cache_obstacle(tok.to_dict()) == ""
    texts = [adversarial_text(n, seed=s) for s, n in enumerate([1, 2, 5, 50, 400, 2000])]
    texts += ["", " ", "  lead", "trail  ", "\n the cat", corpus(50), "a\u3000 b", "é b", "x" + "\u2029 " * 3]
    cache = WordCache(tok, max_words=300)  # small: emptied and refilled between the batches
    for _ in range(3):  # cold, then warm
        got = cache.encode_batch(texts)
        assert all(g.dtype == np.int32 for g in got)
        assert [g.tolist() for g in got] == plain_encode(tok, texts)
    assert 0 < len(cache._index) <= 300


def test_words_cut_only_after_a_non_space():
    for c in sorted((onig_whitespace() | {c for c in map(chr, range(0x3001)) if c.isspace()}) - {" "}):
        assert _words(f"a{c} b".encode()) == [f"a{c} b".encode()], repr(c)
        assert _words(f"a{c}\nb".encode()) == [f"a{c}\nb".encode()], repr(c)
        assert _words(f"a\n{c}b".encode()) == [f"a\n{c}b".encode()], repr(c)
    text = "a b  c é ½\t  d \u200b x\ny.\n\nz\n w\nü\n"
    words = _words(text.encode())
    assert [words[0].decode(), *map(_word_text, words[1:])] == [
        *["a", " b", "  c", " é", " ½\t  d", " \u200b", " x\n", "y.\n\nz\n w\nü\n"]
    ]  # no cut before a space after whitespace, nor after a newline before whitespace or a non-ASCII letter


def test_word_cache_falls_back_to_plain_encode(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    text = corpus(200, seed=3) + "  Über  ÜBER\n\n x"
    tok = hf_bpe(
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False), text, normalizer=tokenizers.normalizers.Lowercase()
    )
    assert word_cache_obstacle(tok.to_dict()) == "it has a normalizer" and fast_encode_batch(tok) == tok.encode_batch
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    tok_file = tmp_path / "tok" / "tokenizer.json"
    tok_file.parent.mkdir()
    tok_file.write_text(tok.json_text, encoding="utf-8")
    prepare([path], str(tok_file), tmp_path / "out")
    ids = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    assert ids.tolist() == plain_encode(tok, [text])[0] + [tok.eos_id]

    d = train_bpe([corpus(50)], vocab_size=280).to_dict()
    assert word_cache_obstacle(d) == ""
    changes = {
        "pre-tokenizer": {"pre_tokenizer": {**d["pre_tokenizer"], "add_prefix_space": True}},
        "model": {"model": {**d["model"], "dropout": 0.1}},
        "truncates": {"truncation": {"max_length": 8, "stride": 0, "strategy": "LongestFirst", "direction": "Right"}},
        "'a b'": {"added_tokens": [*d["added_tokens"], {**d["added_tokens"][0], "id": 280, "content": "a b"}]},
        "'<m>'": {"added_tokens": [{**d["added_tokens"][0], "content": "<m>", "rstrip": True}]},
        "'.\\n'": {"added_tokens": [{**d["added_tokens"][0], "content": ".\n"}]},
    }
    for reason, change in changes.items():
        assert reason in word_cache_obstacle({**d, **change})
    metaspace = json.loads(tokenizers.pre_tokenizers.Metaspace().__getstate__())
    assert "pre-tokenizer" in word_cache_obstacle({**d, "pre_tokenizer": metaspace})
    other_split = byte_level_split(r"\w+ \w+|\s+")
    assert "pre-tokenizer" in word_cache_obstacle({**d, "pre_tokenizer": json.loads(other_split.__getstate__())})


def test_prepare_bpe_shakespeare_equals_whole_text_encoding(shakespeare_path, tmp_path):
    meta = prepare([shakespeare_path], "bpe", tmp_path / "out", vocab_size=1000)
    tok = load_data_tokenizer(tmp_path / "out")
    assert word_cache_obstacle(tok.to_dict()) == "" and meta["vocab_size"] == 1000
    text = open(shakespeare_path, encoding="utf-8").read()
    ids = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    assert ids.tolist() == plain_encode(tok, [text])[0] + [tok.eos_id]


def test_parallel_encoding_writes_the_same_files(monkeypatch, tmp_path):
    """Two encoding processes (``workers=2``) write byte for byte what one writes: batches come back in order,
    documents (jsonl records, each ended by the end-of-text token) keep their offsets."""
    from slm_jax.data import prepare as prepare_mod

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": corpus(8, seed=s)}) + "\n" for s in range(60)), encoding="utf-8")
    monkeypatch.setattr(prepare_mod, "BATCH_CHARS", 2000)  # many batches in flight across the two workers
    children = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN))
    metas, cpu = {}, {}
    for w in (1, 2):
        before = children()
        metas[w] = prepare([path], "bpe", tmp_path / f"w{w}", vocab_size=300, workers=w)
        cpu[w] = children() - before
    assert cpu[1] == 0 and cpu[2] > 0  # the workers ran (and were joined) only with workers=2
    assert metas[1] == metas[2] and metas[1]["documents"]["train"] + metas[1]["documents"]["val"] >= 60
    names = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in names:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    assert prepare_mod.encode_workers("bpe", 10**9) >= 1 and prepare_mod.encode_workers("char", 10**9) == 1
    assert prepare_mod.encode_workers("bpe", 1000) == 1 and prepare_mod.encode_workers("bpe", 1000, 3) == 3
    with pytest.raises(DataError, match="--workers must be >= 0"):
        prepare([path], "bpe", tmp_path / "bad", vocab_size=300, workers=-1)
    assert not (tmp_path / "bad").exists()
