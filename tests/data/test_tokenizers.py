"""Tokenizers: round trips, the out-of-vocabulary error, JSON save/load."""

import json

import numpy as np
import pytest

from slm_jax.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)
from slm_jax.errors import DataError

TEXT = "Hello, wörld! ½ — ünïcödé 日本語 🙂\nnew line\ttab"


def test_char_round_trip_non_ascii():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and ids.shape == (len(TEXT),)
    assert tok.vocab_size == len(set(TEXT))
    assert tok.decode(ids) == TEXT
    # ids follow the sorted vocabulary
    assert list(tok.encode("".join(sorted(set(TEXT))))) == list(range(tok.vocab_size))


def test_char_unknown_char_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match=r"'z'.*another corpus.*byte"):
        tok.encode("abz")


def test_char_decode_out_of_range_is_replacement():
    tok = CharTokenizer.from_text("ab")
    assert tok.decode([0, 5, 1]) == "a\ufffdb"


def test_byte_round_trip_non_ascii():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and len(ids) == len(TEXT.encode("utf-8"))
    assert ids.max() < 256 and tok.vocab_size == 256
    assert tok.decode(ids) == TEXT
    assert tok.decode(tok.encode("a🙂")[:3]) == "a\ufffd"  # a cut multi-byte character


@pytest.mark.parametrize("name", ["char", "byte"])
def test_save_load_round_trip(tmp_path, name):
    tok = build_tokenizer(name, TEXT)
    path = save_tokenizer(tok, tmp_path)
    assert path.name == "tokenizer.json"
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["type"] == name
    loaded = load_tokenizer(tmp_path)
    assert loaded.to_dict() == tok.to_dict() == tokenizer_from_dict(d).to_dict()
    assert loaded.decode(loaded.encode(TEXT)) == TEXT


def test_unknown_tokenizer_name():
    with pytest.raises(DataError, match="char, byte"):
        build_tokenizer("bpe", "x")
