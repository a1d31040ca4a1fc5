"""Hugging Face ``tokenizer.json`` tokenizers behind our interface, and byte-level BPE training.

One wrapper serves both a BPE trained by ``slm data prepare --tokenizer bpe`` and the tokenizer of a
model converted from Hugging Face (``slm convert from-hf``): ``HFTokenizer`` reads any
``tokenizer.json`` (only the JSON, never Python code) and has the ``encode`` / ``decode`` /
``vocab_size`` / ``to_dict`` surface of the char and byte tokenizers. ``to_dict`` is the
``tokenizer.json`` itself, so saving one writes the Hugging Face format and two tokenizers
compare equal exactly when their files do.

``train_bpe`` is GPT-2's byte-level BPE (Radford et al. 2019): text is split by GPT-2's
pre-tokenization regex, mapped to 256 printable stand-ins for the bytes, and merges are learnt
(Sennrich et al. 2016) until the vocabulary has ``vocab_size`` entries, one of them ``<|endoftext|>``.

``fast_encode_batch`` is what ``prepare`` encodes with: for the tokenizers where it is exact (GPT-2, Llama 3
and Qwen2 style byte-level BPEs without a normalizer; ``word_cache_obstacle`` says why not otherwise), a
``WordCache`` encodes each distinct word once and gathers the ids of the rest, which gives the ids of
``encode_batch`` several times faster on natural (Zipfian) text; otherwise it is ``encode_batch`` itself.
"""

from __future__ import annotations

import json
from itertools import repeat
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tokenizers

from slm_jax.errors import DataError

END_OF_TEXT = "<|endoftext|>"
# Special tokens that end a document in common Hugging Face tokenizers (GPT-2, Llama 2/3, Gemma, T5).
_EOS_NAMES = (END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>")
MIN_BPE_VOCAB = 257  # 256 byte tokens + <|endoftext|>


def is_hf_tokenizer(d: Any) -> bool:
    """Whether a parsed tokenizer.json is a Hugging Face ``tokenizers`` file (ours carry a ``type`` key)."""
    return isinstance(d, dict) and "model" in d and "type" not in d


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` behind our tokenizer interface; ids are int32 numpy arrays.

    Args:
        json_text: the text of a Hugging Face ``tokenizer.json``.
    """

    name = "hf"

    def __init__(self, json_text: str):
        try:
            self._tok = tokenizers.Tokenizer.from_str(json_text)
        except Exception as e:  # the Rust side raises plain Exceptions
            raise DataError(
                f"This tokenizer.json cannot be read by the tokenizers library ({e}); use another one."
            ) from None
        self.json_text = json_text

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        """Id of the special token that ends a document (``<|endoftext|>``, ``</s>``, ...), None without one."""
        for name in _EOS_NAMES:
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        return None

    def encode(self, text: str) -> np.ndarray:
        """Text -> (t,) int32 ids, with the special tokens (e.g. BOS) the tokenizer's post-processor adds."""
        return np.asarray(self._tok.encode(text, add_special_tokens=True).ids, np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Pieces of documents -> their (t_i,) int32 ids without special tokens, encoded in parallel (Rust threads).

        ``encode_batch_fast`` (tokenizers >= 0.21) gives the same ids without tracking offsets.
        """
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [np.asarray(e.ids, np.int32) for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Any) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def to_dict(self) -> dict:
        return json.loads(self.json_text)

    @classmethod
    def from_dict(cls, d: dict) -> "HFTokenizer":
        return cls(json.dumps(d, ensure_ascii=False))

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Trains a byte-level BPE on a stream of texts (held only as word counts, not as text).

    Args:
        texts: pieces of the corpus, cut between words (see ``prepare``).
        vocab_size: largest vocabulary, >= 257 (256 bytes and ``<|endoftext|>``); training stops earlier
            when no pair of tokens occurs twice.

    Returns:
        The tokenizer; ``<|endoftext|>`` has id 0 and the 256 byte tokens follow.
    """
    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(
            f"--vocab-size {vocab_size} is too small for a byte-level BPE; use at least {MIN_BPE_VOCAB} "
            "(256 bytes and <|endoftext|>)."
        )
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok.to_str())


# Pre-tokenizer regexes (GPT-2's, Llama 3's, Qwen2's) under which no pre-token holds a non-space character and
# the space after it, nor a newline and the non-space character after it: cutting the text there keeps its ids.
_SPACE_SAFE_PATTERNS = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
MAX_CACHED_WORDS = 1 << 20  # a WordCache is emptied when it would hold more words than this
_MARK = b"\xff"  # never in UTF-8: marks a word that follows a newline (see _words)
# By its last two UTF-8 bytes (big-endian), whether a non-ASCII character may be whitespace to Python or to the
# regex engine (a few others share those bytes: harmless, they only lose a cut); every ASCII byte <= 0x20 and 0x7f
# counts as whitespace too. Tests check that this covers both.
_WIDE_SPACES = [c.encode("utf-8") for c in map(chr, range(0x80, 0x3001)) if c.isspace()]
_SPACE_ENDINGS = np.zeros(1 << 16, bool)
_SPACE_ENDINGS[[int.from_bytes(s[-2:], "big") for s in _WIDE_SPACES]] = True


def _byte_level(d: Any, use_regex: bool) -> bool:
    return (
        isinstance(d, dict)
        and d.get("type") == "ByteLevel"
        and d.get("add_prefix_space") is False
        and d.get("use_regex") is use_regex
    )


def _space_safe_pre_tokenizer(d: Any) -> bool:
    """Whether a tokenizer.json ``pre_tokenizer`` is GPT-2's byte level, or one of ``_SPACE_SAFE_PATTERNS`` then
    byte level (Llama 3, Qwen2), without an added prefix space."""
    if _byte_level(d, use_regex=True):
        return True
    steps = d.get("pretokenizers") if isinstance(d, dict) and d.get("type") == "Sequence" else None
    if not isinstance(steps, list) or len(steps) != 2:
        return False
    split = {"type": "Split", "behavior": "Isolated", "invert": False}
    return (
        isinstance(steps[0], dict)
        and {k: steps[0].get(k) for k in split} == split
        and steps[0].get("pattern") in [{"Regex": p} for p in _SPACE_SAFE_PATTERNS]
        and _byte_level(steps[1], use_regex=False)
    )


def word_cache_obstacle(d: dict) -> str:
    """Why a ``WordCache`` could give other ids than ``encode_batch`` for tokenizer.json ``d``; "" when it cannot."""
    if d.get("normalizer") is not None:
        return "it has a normalizer"
    if not _space_safe_pre_tokenizer(d.get("pre_tokenizer")):
        return "its pre-tokenizer is not a byte-level split known to keep a word and the space after it apart"
    model = d.get("model", {})
    if model.get("type") != "BPE" or model.get("dropout"):
        return "its model is not a BPE without dropout"
    if d.get("truncation") is not None or d.get("padding") is not None:
        return "it truncates or pads"
    for t in d.get("added_tokens", []):
        if any(c in t.get("content", " ") for c in " \n") or t.get("lstrip") or t.get("rstrip"):
            return f"its added token {t.get('content')!r} holds or strips spaces or newlines"
    return ""


def _after_whitespace(b: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(n,) bool: whether the UTF-8 character ending at byte ``at - 1`` of ``b`` may be whitespace, is a
    control character or is ``_MARK`` (which stands for a newline); ``at`` >= 2."""
    last = b[at - 1]
    ascii_space = (last <= 0x20) | (last == 0x7F) | (last == _MARK[0])
    return ascii_space | _SPACE_ENDINGS[(b[at - 2].astype(np.int32) << 8) | last]


def _words(raw: bytes) -> list[bytes]:
    """UTF-8 text -> its words: cut before every space that follows a non-space character, and after every
    newline between a non-space character and a printable ASCII one.

    Both cuts are where ``_SPACE_SAFE_PATTERNS`` end a pre-token whatever follows. A word after a space
    leaves that space out; one after a newline starts with ``_MARK`` instead (``_word_text`` undoes both),
    so ``raw.split(b" ")`` (fast) finds both cuts, and the pieces around a space that is no cut are joined.
    """
    marked = raw.replace(b"\n", b"\n " + _MARK)
    words = marked.split(b" ")
    if len(words) == 1:
        return words
    b = np.frombuffer(b"\0\0\0\0" + marked + b"\0\0", np.uint8)  # padded: every index below is in range
    spaces = np.flatnonzero(b == 32)  # space k separates words k and k + 1
    after_newline, next_byte = b[spaces + 1] == _MARK[0], b[spaces + 2]
    newline_cut = ~_after_whitespace(b, spaces - 1) & (next_byte >= 0x21) & (next_byte <= 0x7E)
    joins = np.flatnonzero(np.where(after_newline, ~newline_cut, _after_whitespace(b, spaces)))
    if not len(joins):
        return words
    breaks = np.diff(joins) > 1
    out, at = [], 0
    for first, last in zip(joins[np.r_[True, breaks]].tolist(), joins[np.r_[breaks, True]].tolist()):
        out += words[at:first]
        out.append(b" ".join(words[first : last + 2]).replace(b" " + _MARK, b""))
        at = last + 2
    return out + words[at:]


def _word_text(word: bytes) -> str:
    """A word of ``_words`` (not the first of its text) -> its text."""
    return (word[1:] if word[:1] == _MARK else b" " + word).decode("utf-8")


class WordCache:
    """Encodes texts to the ids of ``HFTokenizer.encode_batch``, each distinct word once (a word -> ids cache).

    Words are cut where the pre-tokenizer always ends a pre-token (see ``_words``): mostly a space and the
    text up to the next space. Natural text is Zipfian, so most words repeat and encoding becomes a dict
    lookup and a gather. It is exact for the tokenizers that ``word_cache_obstacle`` passes: no pre-token and
    no added token crosses a cut, so a text encodes as the concatenation of its words' encodings.

    Args:
        tok: the tokenizer.
        max_words: the cache is emptied when it would hold more words, which bounds its memory.
    """

    def __init__(self, tok: HFTokenizer, max_words: int = MAX_CACHED_WORDS):
        self.tok, self.max_words = tok, max_words
        self._clear()

    def _clear(self) -> None:
        self._index: dict[bytes, int] = {}  # word (without its leading space) -> its row
        self._ids = np.zeros(0, np.int32)  # every cached word's ids, concatenated
        self._starts = np.zeros(1, np.int64)  # (w + 1,): row i's ids are _ids[_starts[i] : _starts[i + 1]]

    def _add(self, words: list[bytes]) -> None:
        encoded = self.tok.encode_batch([_word_text(w) for w in words])
        self._index.update(zip(words, range(len(self._index), len(self._index) + len(words))))
        self._ids = np.concatenate([self._ids, *encoded])
        lengths = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self._starts = np.concatenate([self._starts, self._starts[-1] + lengths])

    def _rows(self, words: list[bytes]) -> np.ndarray:
        """(n,) int64 cache rows of ``words``, encoding the unseen ones in one batch."""
        rows = np.fromiter(map(self._index.get, words, repeat(-1)), np.int64, len(words))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            new = list(dict.fromkeys(words[i] for i in missing))
            if self._index and len(self._index) + len(new) > self.max_words:
                self._clear()
                return self._rows(words)
            self._add(new)
            rows[missing] = np.fromiter(map(self._index.__getitem__, (words[i] for i in missing)), np.int64)
        return rows

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Texts -> their (t_i,) int32 ids without special tokens, equal to ``tok.encode_batch(texts)``."""
        heads, words, counts = [], [], []  # a text's first word has no leading space: encoded, not cached
        for text in texts:
            w = _words(text.encode("utf-8"))
            heads.append(w[0].decode("utf-8"))
            words += w[1:]
            counts.append(len(w) - 1)
        rows = self._rows(words)
        starts = self._starts[rows]
        lengths = self._starts[rows + 1] - starts
        ends = np.cumsum(lengths)
        body = self._ids[np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - ends + lengths, lengths)]
        text_ends = np.r_[0, ends][np.cumsum(counts, dtype=np.int64)]
        bodies = np.split(body, text_ends[:-1])
        return [np.concatenate([h, b]) for h, b in zip(self.tok.encode_batch(heads), bodies)]


def fast_encode_batch(tok: HFTokenizer) -> Callable[[Sequence[str]], list[np.ndarray]]:
    """``tok.encode_batch``, or a ``WordCache``'s (the same ids, faster) when ``word_cache_obstacle`` finds none."""
    return tok.encode_batch if word_cache_obstacle(tok.to_dict()) else WordCache(tok).encode_batch
