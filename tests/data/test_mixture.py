"""Weighted mixtures of sources (``data.mixture``, issue #19): rows drawn by weight, deterministic, exactly
resumable, sharded like one source; per-source validation metrics; one BPE tokenizer across sources."""

import json
import math

import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.data.pipeline import MixtureBatches, RandomWindowBatches, mixture_batches, pack_windows
from slm_jax.data.prepare import prepare
from slm_jax.data.source import load_sources
from slm_jax.errors import DataError
from slm_jax.eval.perplexity import mixture_metrics
from slm_jax.presets import PRESETS, is_encoder
from slm_jax.training.tracking import read_metrics
from slm_jax.training.train import train
from tests.sampling import default_sample
from tests.tiny_runs import run_cli

# Source k's token at offset i is 1000 * k + i: a row names its source and its offset.
A, B = np.arange(900, dtype=np.int32), np.arange(500, dtype=np.int32) + 1000
A_DOCS, B_DOCS = np.array([0, 7, 40, 41, 800]), np.array([0, 3, 250])


def take(it, n):
    return [next(it) for _ in range(n)]


def test_rows_come_from_each_source_by_weight_as_whole_windows():
    batches = take(mixture_batches([(A, None), (B, None)], [3.0, 1.0], 64, 15, seed=1), 60)
    rows = np.concatenate(batches)  # (3840, 16)
    from_b = rows[:, 0] >= 1000
    share = from_b.mean()
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(rows)), share  # binomial, 4 sigma
    np.testing.assert_array_equal(np.diff(rows, axis=1), 1)  # contiguous windows of one source
    assert rows[~from_b].max() < len(A) and rows[from_b].max() < 1000 + len(B)
    # Offsets cover each source (not only its start): the last windows of both occur.
    assert rows[~from_b, 0].max() > len(A) - 200 and rows[from_b, 0].max() > 1000 + len(B) - 40


def test_a_mixture_is_deterministic_resumable_and_sharded_like_one_source():
    sources = [(A, None), (B, None)]
    first = take(mixture_batches(sources, [1, 1], 8, 15, seed=4), 6)
    again = take(mixture_batches(sources, [1, 1], 8, 15, seed=4), 6)
    other = take(mixture_batches(sources, [1, 1], 8, 15, seed=5), 6)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))
    it = mixture_batches(sources, [1, 1], 8, 15, seed=4)
    take(it, 3)
    resumed = mixture_batches(sources, [1, 1], 8, 15, seed=4)
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    assert all(np.array_equal(x, y) for x, y in zip(take(resumed, 3), first[3:]))
    shards = [next(mixture_batches(sources, [1, 1], 8, 15, 4, p, 2)) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(shards), first[0])


def test_packed_mixture_rows_are_each_sources_packed_windows():
    batch = next(mixture_batches([(A, A_DOCS), (B, B_DOCS)], [1, 2], 16, 15, seed=2))
    for r in range(16):
        first = int(batch["inputs"][r, 0])
        tokens, docs, base = (B, B_DOCS, 1000) if first >= 1000 else (A, A_DOCS, 0)
        offset = np.array([first - base])
        alone = pack_windows(tokens[offset[0] : offset[0] + 16][None], offset, docs)
        for key in alone:
            np.testing.assert_array_equal(batch[key][r], alone[key][0], err_msg=key)
    assert (batch["targets"] == -1).any()  # some row crosses a document start


def test_mixture_repr_names_every_source_and_weight():
    sources = [RandomWindowBatches(t, 4, 7, 0) for t in (A, B)]
    text = repr(MixtureBatches(sources, [1, 3]))
    assert text == f"MixtureBatches(0.25*{sources[0]!r}, 0.75*{sources[1]!r})"
    with pytest.raises(DataError, match="one positive weight per source"):
        MixtureBatches(sources, [1, 0])


def test_mixture_metrics_are_the_weighted_means_of_the_sources():
    m = {"val_loss/a": 1.0, "val_accuracy/a": 0.5, "val_tokens/a": 10}
    m |= {"val_loss/b": 2.5, "val_accuracy/b": 0.2, "val_tokens/b": 30}
    out = mixture_metrics(m, {"/a": 3.0, "/b": 1.0}, "byte")
    assert out["val_loss"] == pytest.approx((3 * 1.0 + 2.5) / 4)
    assert out["val_accuracy"] == pytest.approx((3 * 0.5 + 0.2) / 4)
    assert out["val_ppl"] == pytest.approx(math.exp(out["val_loss"]))
    assert out["val_bits_per_byte"] == pytest.approx(out["val_loss"] / math.log(2)) and out["val_tokens"] == 40


def documents(path, seed, n, words):
    rng = np.random.default_rng(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(4, 30)))}) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def bpe_sources(tmp_path_factory):
    """Two prepared sources of documents, one byte-level BPE: trained on the first, reused for the second."""
    tmp = tmp_path_factory.mktemp("mix")
    web = documents(tmp / "web.jsonl", 0, 300, ["the", "cat", "sat", "on", "a", "mat", "and", "ran"])
    code = documents(tmp / "code.jsonl", 1, 200, ["def", "f(x):", "return", "x", "+", "1", "the", "cat"])
    prepare(web, "bpe", tmp / "web", vocab_size=300)
    prepare(code, str(tmp / "web" / "tokenizer.json"), tmp / "code")
    return tmp


def mixture_cfg(root, preset="transformer", *overrides):
    model = {"preset": preset, "d_model": 24, "n_heads": 2, "n_layers": 2}
    model["mixers"] = {"mamba2": {"head_dim": 8, "chunk_size": 4}}
    raw = {
        "model": model,
        "data": {"mixture": {str(root / "web"): 0.7, str(root / "code"): 0.3}, "pack": True},
        "train": {"steps": 4, "batch_size": 4, "seq_len": 16, "log_every": 1},
        "eval": {"every": 2, "batches": 2},
        "checkpoint": {"every": 2, "keep": 3},
    }
    return config_from_dict(raw, list(overrides))


def test_a_mixture_run_resumes_exactly_and_reports_each_source(bpe_sources, tmp_path, capsys):
    cfg = mixture_cfg(bpe_sources)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", until_step=2, progress=False)
    train(cfg, tmp_path / "split", progress=False)
    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    loss = lambda ms: {m["step"]: m["loss"] for m in ms if "loss" in m}
    assert sorted(loss(split)) == [1, 2, 3, 4] and loss(split) == pytest.approx(loss(full), rel=1e-6)
    val = [m for m in full if "val_loss" in m][-1]
    assert val["val_loss"] == pytest.approx(0.7 * val["val_loss/web"] + 0.3 * val["val_loss/code"])
    assert val["val_loss/web"] != val["val_loss/code"]
    # slm eval scores each source's split (packed, as trained; or with sliding windows) and their mixture.
    capsys.readouterr()  # the training runs' lines
    for extra in ([], ["--stride", 8]):
        code, out, _ = run_cli(capsys, "eval", tmp_path / "full", "--batches", 2, *extra)
        s = json.loads(out)
        assert code == 0 and s["val_loss"] == pytest.approx(0.7 * s["val_loss/web"] + 0.3 * s["val_loss/code"])
    assert s["val_tokens/code"] > 0 and s["val_tokens"] == s["val_tokens/web"] + s["val_tokens/code"]


# Every preset trains on a BPE-tokenized, packed, two-source mixture (issue #19's "done when"); by default two.
DECODERS = sorted(p for p in PRESETS if not is_encoder(p))


@pytest.mark.parametrize("preset", default_sample(DECODERS, {"transformer", "gated_deltanet"}))
def test_every_preset_trains_on_a_packed_bpe_mixture(bpe_sources, tmp_path, preset):
    summary = train(mixture_cfg(bpe_sources, preset), tmp_path / preset, progress=False)
    val = [m for m in read_metrics(tmp_path / preset) if "val_loss" in m][-1]
    assert summary["step"] == 4 and all(math.isfinite(val[k]) for k in ("val_loss", "val_loss/web", "val_loss/code"))


def test_mixture_sources_must_share_a_tokenizer_and_have_distinct_names(tmp_path):
    for d, text in (("a", "abc abc\n"), ("b", "xyz xyz\n")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.txt").write_text(text * 50)
    (tmp_path / "b" / "y.txt").write_text("xyz xyz\n" * 50)
    mix = lambda *paths: (
        config_from_dict(
            {"data": {"mixture": {str(tmp_path / p): 1.0 for p in paths}, "cache_dir": str(tmp_path / "cache")}}
        ).data
    )
    with pytest.raises(DataError, match="share a name"):
        load_sources(mix("a/x.txt", "b/x.txt"))
    with pytest.raises(DataError, match="different tokenizers; prepare them with one"):
        load_sources(mix("a/x.txt", "b/y.txt"))  # two char vocabularies
    both = load_sources(mix("b/x.txt", "b/y.txt"))  # one vocabulary (same characters)
    assert list(both) == ["x", "y"]
