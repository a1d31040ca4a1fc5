"""Packed rows (issue #19): document indexes from prepare, packed batches, and the loss they give."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import DataConfig, ModelConfig
from slm_jax.data.pipeline import eval_batches, pack_windows, train_batches
from slm_jax.data.prepare import prepare
from slm_jax.data.source import load_dataset, open_dataset
from slm_jax.data.token_files import META_FILE, docs_path, load_data_tokenizer, load_doc_starts, load_split
from slm_jax.errors import DataError
from slm_jax.models.lm import CausalLM
from slm_jax.training.step import make_loss_fn
from tests.tiny_runs import run_cli

# Each gets a newline from prepare (char / byte): 4, 8, 18, 5 and 10 tokens, starting at 0, 4, 12, 30, 35 of 45.
DOCS = ["one", "two two", "three three three", "four", "five five"]


def take(it, n):
    return [next(it) for _ in range(n)]


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.mark.parametrize(
    "val_fraction, train_starts, val_starts",
    [(0.2, [0, 4, 12, 30, 35], [0]), (0.22, [0, 4, 12, 30], [0]), (0.5, [0, 4, 12], [0, 8, 13])],
)
@pytest.mark.parametrize("tokenizer, shard_tokens", [("char", 0), ("byte", 0), ("char", 7)])
def test_prepare_records_jsonl_documents(tmp_path, val_fraction, train_starts, val_starts, tokenizer, shard_tokens):
    # 0.2 cuts the last document (val is its tail), 0.22 cuts at its start (n_train = 35), 0.5 inside the third.
    out = tmp_path / "out"
    meta = prepare([write_jsonl(tmp_path / "d.jsonl", DOCS)], tokenizer, out, val_fraction, shard_tokens=shard_tokens)
    assert meta["documents"] == {"train": len(train_starts), "val": len(val_starts)}
    np.testing.assert_array_equal(load_doc_starts(out, "train"), train_starts)
    np.testing.assert_array_equal(load_doc_starts(out, "val"), val_starts)
    assert not list(out.glob(".*"))  # no temp files left


def test_prepare_records_directory_documents(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("aaaa\naa\n")  # one document per file, whatever its lines
    (tmp_path / "d" / "b.txt").write_text("bbbbbbbbbb\n")
    (tmp_path / "d" / "sub" / "c.txt").write_text("cc")
    meta = prepare([tmp_path / "d"], "char", tmp_path / "out", val_fraction=0.2)  # 8 + 11 + 2 = 21: train 16
    assert meta["documents"] == {"train": 2, "val": 2}
    np.testing.assert_array_equal(load_doc_starts(tmp_path / "out", "train"), [0, 8])
    np.testing.assert_array_equal(load_doc_starts(tmp_path / "out", "val"), [0, 3])


def test_prepare_bpe_documents_follow_end_of_text(tmp_path):
    out = tmp_path / "out"
    docs = [f"document number {i} " * (1 + i % 3) for i in range(12)]
    prepare([write_jsonl(tmp_path / "d.jsonl", docs)], "bpe", out, 0.3, vocab_size=300)
    train, val = load_split(out, "train"), load_split(out, "val")
    ids, n_train = np.concatenate([train, val]), len(train)
    after_eos = np.flatnonzero(ids[:-1] == load_data_tokenizer(out).eos_id) + 1  # every document ends with it
    assert len(after_eos) == len(docs) - 1
    np.testing.assert_array_equal(load_doc_starts(out, "train"), [0, *after_eos[after_eos < n_train]])
    np.testing.assert_array_equal(load_doc_starts(out, "val"), [0, *(after_eos[after_eos > n_train] - n_train)])


def test_pack_windows_known_answer():
    tokens = np.arange(20, dtype=np.int32)
    doc_starts = np.array([0, 3, 4, 10])
    offsets = np.array([2, 8])
    batch = pack_windows(np.stack([tokens[o : o + 6] for o in offsets]), offsets, doc_starts)
    np.testing.assert_array_equal(batch["inputs"], [[2, 3, 4, 5, 6], [8, 9, 10, 11, 12]])
    np.testing.assert_array_equal(batch["targets"], [[-1, -1, 5, 6, 7], [9, -1, 11, 12, 13]])
    np.testing.assert_array_equal(batch["segment_ids"], [[0, 1, 2, 2, 2], [0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(batch["positions"], [[0, 0, 0, 1, 2], [0, 1, 0, 1, 2]])  # 0 at the window start
    assert all(v.dtype == np.int32 for v in batch.values())


TOKENS = np.arange(3000, dtype=np.uint16)
STARTS = np.unique(np.random.default_rng(0).integers(0, 3000, 300)).astype(np.int64)
STARTS[0] = 0


def test_packed_train_batches_are_the_windows_deterministic_and_resumable():
    plain = take(train_batches(TOKENS, 4, 16, seed=3), 6)
    packed = take(train_batches(TOKENS, 4, 16, seed=3, doc_starts=STARTS), 6)
    for w, p in zip(plain, packed):
        np.testing.assert_array_equal(p["inputs"], w[:, :-1])
        kept = p["targets"] >= 0
        np.testing.assert_array_equal(p["targets"][kept], w[:, 1:][kept])
        np.testing.assert_array_equal(~kept, np.isin(w[:, 1:], STARTS))  # TOKENS[i] == i
    it = train_batches(TOKENS, 4, 16, seed=3, doc_starts=STARTS)
    take(it, 3)
    resumed = train_batches(TOKENS, 4, 16, seed=3, doc_starts=STARTS)
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    for x, y in zip(take(resumed, 3), packed[3:]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    shards = [next(train_batches(TOKENS, 4, 16, 3, p, 2, STARTS)) for p in range(2)]
    for k in packed[0]:
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), packed[0][k])


def test_packed_eval_batches():
    plain, packed = eval_batches(TOKENS, 4, 16, 3), eval_batches(TOKENS, 4, 16, 3, STARTS)
    assert len(plain) == len(packed) == 3
    for w, p in zip(plain, packed):
        np.testing.assert_array_equal(p["inputs"], w[:, :-1])
        np.testing.assert_array_equal(p["targets"] < 0, np.isin(w[:, 1:], STARTS))


def test_packed_loss_equals_documents_run_alone():
    cfg = ModelConfig(preset="transformer", vocab_size=50, n_layers=2, d_model=16, n_heads=2)
    model = CausalLM(cfg)
    tokens = np.random.default_rng(1).integers(0, 50, 200).astype(np.int32)
    doc_starts = np.array([0, 7, 8, 30, 41, 45, 90])
    offsets = np.array([3, 25, 40])
    packed = pack_windows(np.stack([tokens[o : o + 25] for o in offsets]), offsets, doc_starts)
    # Every document (or window-cut piece of one) alone in a row of its own, right-padded with unscored tokens.
    docs = [(r, packed["segment_ids"][r] == s) for r in range(3) for s in np.unique(packed["segment_ids"][r])]
    assert len(docs) == 10  # 3 + 4 + 3, a one-token document among them
    alone = {"inputs": np.zeros((10, 24), np.int32), "targets": np.full((10, 24), -1, np.int32)}
    for i, (r, doc) in enumerate(docs):
        for k in alone:
            alone[k][i, : doc.sum()] = packed[k][r, doc]
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 24), jnp.int32))
    loss_fn = jax.jit(make_loss_fn(model))  # gradients are the mixers' contract tests' business
    loss, metrics = loss_fn(params, packed)
    loss_alone, metrics_alone = loss_fn(params, alone)
    assert float(metrics["tokens"]) == float(metrics_alone["tokens"]) == (packed["targets"] >= 0).sum()
    np.testing.assert_allclose(float(loss), float(loss_alone), rtol=1e-5)


def test_pack_needs_a_document_index(tmp_path):
    out = tmp_path / "old"
    prepare([write_jsonl(tmp_path / "d.jsonl", DOCS)], "char", out, 0.2)
    meta = json.loads((out / META_FILE).read_text())
    del meta["documents"]  # as prepared before document indexes existed
    (out / META_FILE).write_text(json.dumps(meta))
    for split in ("train", "val"):
        docs_path(out, split).unlink()
    assert open_dataset(out).train_docs is None  # without pack it opens as before
    with pytest.raises(DataError, match=r"has no document index .* re-run `slm data prepare`"):
        load_dataset(DataConfig(path=str(out), pack=True))


def test_packed_training_and_eval_through_the_cli(tmp_path, capsys):
    """`slm train` with data.pack on a jsonl, then `slm eval` of the run: its val tokens are exactly the
    targets that are not a document's first token; distillation and federated training refuse packing."""
    docs = [f"doc {i}: " + "abcdefg"[: 1 + i % 7] * (1 + i % 5) for i in range(120)]
    data = write_jsonl(tmp_path / "docs.jsonl", docs)
    sets = [f"data.path={data}", "data.pack=true", f"data.cache_dir={tmp_path / 'cache'}", "model.d_model=16"]
    sets += ["model.n_layers=1", "model.n_heads=2", "train.steps=3", "train.seq_len=32", "train.batch_size=4"]
    sets += ["eval.batches=2", "train.log_every=1"]
    argv = ["train", "configs/experiments/shakespeare_char.yaml", "--run-dir", tmp_path / "run", "--no-progress"]
    assert run_cli(capsys, *argv, *sum((["--set", s] for s in sets), []))[0] == 0
    code, out, _ = run_cli(capsys, "eval", tmp_path / "run")
    assert code == 0
    dataset = load_dataset(DataConfig(path=str(data), cache_dir=str(tmp_path / "cache"), val_fraction=0.1, pack=True))
    want = sum(int((b["targets"] >= 0).sum()) for b in eval_batches(dataset.val, 4, 32, 2, dataset.val_docs))
    assert want < 2 * 4 * 32 and json.loads(out)["val_tokens"] == want
    for cmd in (["distill", "--teacher", tmp_path / "run"], ["train"]):
        extra = (
            ["--set", "train.federated.algorithm=fedavg", "--set", "train.federated.n_clients=2"]
            if cmd == ["train"]
            else []
        )
        code, _, err = run_cli(
            capsys,
            *cmd,
            "configs/experiments/shakespeare_char.yaml",
            "--no-progress",
            *extra,
            "--run-dir",
            tmp_path / "x",
            *sum((["--set", s] for s in sets), []),
        )
        assert code == 2 and "not packed rows; set data.pack to false" in err
