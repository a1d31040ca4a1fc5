"""Throughput and peak memory of ``slm data prepare`` (streaming, sharded) on a generated corpus.

    python benchmarks/prepare.py [--mb 50] [--tokenizers byte char bpe bpe-plain] [--vocab-size 8192]
                                 [--bpe-sample-mb 64] [--repeats 2]

The corpus is ``--mb`` MB of lines of Zipf-distributed pseudo-words (a 20,000-word vocabulary, a few
non-ASCII letters), written once to a temp directory. Each prepare runs in its own child process,
which reports its wall time, CPU time (user + system, all threads; less sensitive than wall time to other
load on the machine) and peak RSS (``VmHWM``); tokenizers are interleaved (A B C A B C ...)
``--repeats`` times and the median is kept. Throughput is input MB / wall seconds of the whole
prepare (both passes: building the tokenizer, BPE training on the first ``--bpe-sample-mb`` MB included,
then encoding and writing). ``bpe-plain`` is ``bpe`` with the word cache off (every piece through
``encode_batch``, as before the cache) and ``bpe-1proc`` is ``bpe`` encoding in one process (``bpe`` uses a
worker per core from 32 MB), for interleaved A/Bs on the same corpus; CPU seconds and peak RSS include the
workers (peak: the largest process).
Prints one JSON line per tokenizer, a markdown table (docs/data.md quotes it) and the load average.
"""

import argparse
import filecmp
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyzäöüéñ"))


def write_corpus(path: Path, mb: float, seed: int = 0) -> int:
    """Writes about ``mb`` MB of generated text to ``path`` in ~1 MB blocks; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 10, size=20_000)
    vocab = np.array(["".join(rng.choice(LETTERS, size=n)) for n in lengths])
    target = int(mb * 1e6)
    with path.open("w", encoding="utf-8") as f:
        while f.tell() < target:
            words = vocab[np.minimum(rng.zipf(1.2, size=150_000), len(vocab)) - 1]  # ~1 MB of words
            ends = np.where(rng.random(len(words)) < 0.08, "\n", " ")  # a line every ~12 words
            f.write("".join(np.char.add(words, ends).tolist()))
    return path.stat().st_size


def child(tokenizer: str, corpus: str, out: str, vocab_size: int, bpe_sample_mb: float) -> None:
    """Runs one prepare; prints {"seconds", "peak_rss_mb", "tokens"} as JSON."""
    from slm_jax.data import prepare as prepare_module
    from slm_jax.data.prepare import prepare

    workers = 0  # automatic: every core for BPE from 32 MB
    if tokenizer == "bpe-plain":  # the word cache off: every piece through encode_batch, in one process
        prepare_module.fast_encode_batch = lambda tok: tok.encode_batch
        tokenizer, workers = "bpe", 1
    if tokenizer == "bpe-1proc":  # the word cache in one process
        tokenizer, workers = "bpe", 1
    vocab = vocab_size if tokenizer == "bpe" else 0
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)  # children: the encoding workers
    before, start = [resource.getrusage(w) for w in who], time.perf_counter()
    meta = prepare(
        [corpus], tokenizer, out, vocab_size=vocab, shard_tokens=1 << 24, bpe_sample_mb=bpe_sample_mb, workers=workers
    )
    seconds, after = time.perf_counter() - start, [resource.getrusage(w) for w in who]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))  # all threads
    tokens, vocab = meta["train_tokens"] + meta["val_tokens"], meta["vocab_size"]
    peak = int(re.search(r"VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024  # own peak
    peak = max(peak, after[1].ru_maxrss / 1024)  # the largest worker's
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_rss_mb": peak, "tokens": tokens, "vocab": vocab}))


def run_child(tokenizer: str, corpus: Path, out: Path, vocab_size: int, bpe_sample_mb: float) -> dict:
    argv = [sys.executable, __file__, "--child", tokenizer, str(corpus), str(out), "--vocab-size", str(vocab_size)]
    argv += ["--bpe-sample-mb", str(bpe_sample_mb)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_files(a: Path, b: Path) -> bool:
    """Whether directories ``a`` and ``b`` hold the same files with the same bytes."""
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=50.0, help="corpus size in MB")
    p.add_argument(
        "--tokenizers", nargs="+", default=["byte", "char", "bpe"], help="byte, char, bpe, bpe-plain, bpe-1proc"
    )
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of the trained BPE")
    p.add_argument("--bpe-sample-mb", type=float, default=64.0, help="BPE training sample (MB; 0: all)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the median is reported")
    p.add_argument("--child", nargs=3, metavar=("TOKENIZER", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args.vocab_size, args.bpe_sample_mb)
        return
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        size = write_corpus(corpus, args.mb)
        runs: dict[str, list[dict]] = {t: [] for t in args.tokenizers}
        for _ in range(args.repeats):
            for t in args.tokenizers:
                runs[t].append(run_child(t, corpus, Path(tmp) / f"out-{t}", args.vocab_size, args.bpe_sample_mb))
        for other in ("bpe-plain", "bpe-1proc"):
            if {"bpe", other} <= runs.keys():
                same = same_files(Path(tmp) / "out-bpe", Path(tmp) / f"out-{other}")
                print(f"bpe and {other} wrote identical files: {same}")
    rows = []
    for t, rs in runs.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        row = {
            "tokenizer": t,
            "corpus_mb": round(size / 1e6, 1),
            "vocab_size": rs[0]["vocab"],
            "tokens": rs[0]["tokens"],
            "seconds": round(seconds, 2),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in rs), 2),
            "mb_per_s": round(size / 1e6 / seconds, 1),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs)),
        }
        rows.append(row)
        print(json.dumps(row))
    print("\n| tokenizer | corpus MB | vocab | tokens | seconds | CPU seconds | MB/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tokenizer']} | {r['corpus_mb']} | {r['vocab_size']} | {r['tokens']:,} | {r['seconds']} | "
            f"{r['cpu_s']} | {r['mb_per_s']} | {r['peak_rss_mb']} |"
        )
    print(f"\nload average (1 min) at the start {load:.1f}, at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
