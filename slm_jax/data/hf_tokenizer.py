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
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

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
