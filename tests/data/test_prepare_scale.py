"""A corpus larger than memory prepares in bounded memory (issue #19): a ~2 GB generated text file.

Slow (minutes each): ``pytest -m slow tests/data/test_prepare_scale.py -s`` prints each prepare's seconds, MB/s
and peak RSS. The corpus is written once, streamed, from 16 distinct ~1 MB blocks in a random order, so the
expected token count is a sum over blocks, each encoded on its own (a block ends in a newline and starts with a
letter, where a byte-level BPE never joins two pre-tokens).
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from slm_jax.data.hf_tokenizer import HFTokenizer
from slm_jax.data.token_files import load_data_tokenizer, load_meta

CORPUS_BYTES = 2 * 10**9
MAX_PEAK_RSS_MB = 1024
N_BLOCKS = 16
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyzäöüéñ"))
# Runs prepare and prints its seconds and peak RSS: VmHWM, the child's own (ru_maxrss would count the RSS of
# the forked parent too).
CHILD = """
import json, re, sys, time
from slm_jax.data.prepare import prepare
start = time.perf_counter()
meta = prepare([sys.argv[1]], sys.argv[2], sys.argv[3], vocab_size=int(sys.argv[4]), shard_tokens=1 << 26)
seconds = time.perf_counter() - start
rss_mb = int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mb": rss_mb, "tokens": meta["train_tokens"] + meta["val_tokens"]}))
"""


def text_blocks(seed: int = 0) -> list[str]:
    """``N_BLOCKS`` blocks of ~1 MB: Zipf-distributed pseudo-words, a line every ~12 words, ending in a newline."""
    rng = np.random.default_rng(seed)
    vocab = np.array(["".join(rng.choice(LETTERS, size=n)) for n in rng.integers(1, 10, size=20_000)])
    blocks = []
    for _ in range(N_BLOCKS):
        words = vocab[np.minimum(rng.zipf(1.2, size=150_000), len(vocab)) - 1]
        ends = np.where(rng.random(len(words)) < 0.08, "\n", " ")
        ends[-1] = "\n"
        blocks.append("".join(np.char.add(words, ends).tolist()))
    return blocks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(path, blocks, order): the corpus file on disk, written block by block, never held in memory."""
    folder = tmp_path_factory.mktemp("scale")
    free = shutil.disk_usage(folder).free
    if free < 7 * CORPUS_BYTES:  # the corpus, and up to 2 bytes per byte of it as uint16 ids
        pytest.skip(f"{folder} has {free / 1e9:.1f} GB free; this test needs {7 * CORPUS_BYTES / 1e9:.0f} GB.")
    blocks = text_blocks()
    raw = [b.encode("utf-8") for b in blocks]
    rng = np.random.default_rng(1)
    order, size = [], 0
    path = folder / "corpus.txt"
    with path.open("wb") as f:
        while size < CORPUS_BYTES:
            order.append(int(rng.integers(N_BLOCKS)))
            f.write(raw[order[-1]])
            size += len(raw[order[-1]])
    yield path, blocks, order
    path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["byte", "char", "bpe"])
def test_two_gigabyte_corpus_prepares_in_bounded_memory(corpus, tmp_path, tokenizer):
    path, blocks, order = corpus
    out = tmp_path / "out"
    argv = [sys.executable, "-c", CHILD, str(path), tokenizer, str(out), "8192" if tokenizer == "bpe" else "0"]
    result = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    size_mb = path.stat().st_size / 1e6
    print(f"\n{tokenizer}: {size_mb:.0f} MB in {result['seconds']:.1f} s", end=" ")
    print(f"({size_mb / result['seconds']:.1f} MB/s), peak RSS {result['peak_rss_mb']:.0f} MB")
    tok = load_data_tokenizer(out)
    if tokenizer == "byte":
        per_block = [len(b.encode("utf-8")) for b in blocks]
    elif tokenizer == "char":
        per_block = [len(b) for b in blocks]
    else:  # the plain encode of each block, not the word cache prepare used; one <|endoftext|> at the end
        assert isinstance(tok, HFTokenizer)
        per_block = [len(ids) for ids in tok.encode_batch(blocks)]
    expected = sum(per_block[i] for i in order) + (tokenizer == "bpe")
    meta = load_meta(out)
    assert result["tokens"] == meta["train_tokens"] + meta["val_tokens"] == expected
    assert result["peak_rss_mb"] < MAX_PEAK_RSS_MB
    shutil.rmtree(out)
