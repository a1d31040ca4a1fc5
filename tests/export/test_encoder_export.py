"""slm export of encoders and classifiers: one graph (tokens, lengths) -> logits, run by runner.py's EncoderArtifact
with onnxruntime or jax, equal to the JAX model on a padded batch of unequal lengths."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from slm_jax.cli import main  # noqa: E402
from slm_jax.export.encoder import encoder_fn, write_encoder_export  # noqa: E402
from slm_jax.export.runner import EncoderArtifact  # noqa: E402
from slm_jax.export.runner import main as runner_main  # noqa: E402
from slm_jax.finetune.classify import class_logits, load_classifier  # noqa: E402
from slm_jax.inference.run import load_run  # noqa: E402
from slm_jax.modules.heads import TokenHead  # noqa: E402
from tests.export.test_onnx import assert_same  # noqa: E402
from tests.export.test_stablehlo import make_run  # noqa: E402

ROWS = ["the lazy dog", "fox", "the quick brown fox jumps", "a"]  # unequal lengths, padded to 32 in one call


def call(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def padded(tok, rows, t):
    ids = [tok.encode(r).tolist() for r in rows]
    tokens = np.zeros((len(ids), t), np.int32)
    for i, r in enumerate(ids):
        tokens[i, : len(r)] = r
    return ids, tokens, np.asarray([len(r) for r in ids], np.int32)


@pytest.fixture(scope="module")
def classify_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    lines = [{"text": t, "label": "dog" if "dog" in t else "other"} for t in ROWS * 4]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_take_along_axis_translates_as_gather_with_batch_dims():
    x = jnp.asarray(np.random.RandomState(0).randn(3, 5, 4), jnp.float32)
    index = jnp.asarray(np.random.RandomState(1).randint(0, 5, (3, 5, 1)), jnp.int32)
    assert_same(lambda x, i: jnp.take_along_axis(x, i, axis=1), x, index)


@pytest.mark.parametrize("preset, lora", [("distilbert_like", False), ("hybrid_encoder", False), ("bert_like", True)])
@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_classifier_export_equals_the_jax_classifier(tmp_path, capsys, classify_data, preset, lora, fmt):
    _, _, tok = make_run(tmp_path / "base", preset, n_layers=2 if preset == "bert_like" else 3)
    clf_dir = tmp_path / "clf"
    extra = ["--lora", "--rank", "2"] if lora else []
    argv = ["finetune", tmp_path / "base", "--task", "classify", "--data", classify_data, "--out", clf_dir]
    call(capsys, *argv, "--steps", "2", "--batch-size", "4", *extra)
    manifest = call(
        capsys, "export", clf_dir, "--format", fmt, "--out", tmp_path / "exp", "--max-len", 32, "--batch", 3
    )
    assert manifest["kind"] == "sequence" and manifest["labels"] == ["dog", "other"]
    assert manifest["batch"] == (3 if fmt == "onnx" else None)
    clf = load_classifier(clf_dir)
    ids, tokens, lengths = padded(tok, ROWS, 32)
    want = np.asarray(class_logits(clf.model, clf.head, clf.params, {"inputs": tokens, "lengths": lengths}))
    art = EncoderArtifact(tmp_path / "exp")
    got = art.logits(ids)  # 4 rows: two calls of 3 in onnx (the last filled), one call in stablehlo
    assert got.shape == (4, 2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert abs(want[:, 0] - want[:, 1]).max() > 1e-3  # the rows do differ: the comparison can fail
    runner_main([str(tmp_path / "exp"), "--prompt", ROWS[0]])
    out = json.loads(capsys.readouterr().out)
    assert out["label"] == ["dog", "other"][int(want[0].argmax())]
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("preset", ["modernbert_like", "bimamba_like"])
@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_masked_lm_export_equals_the_jax_encoder(tmp_path, capsys, preset, fmt):
    cfg, params, tok = make_run(tmp_path / "run", preset, mixers={"local_attention": {"window": 5}})
    manifest = call(capsys, "export", tmp_path / "run", "--format", fmt, "--out", tmp_path / "exp", "--batch", 4)
    assert manifest["kind"] == "mlm" and manifest["seq_len"] == cfg.train.seq_len
    assert manifest["mask_id"] == cfg.model.vocab_size
    ids, tokens, lengths = padded(tok, ROWS, cfg.train.seq_len)
    want, _ = load_run(tmp_path / "run").model.apply(params, jnp.asarray(tokens), lengths=jnp.asarray(lengths))
    got = EncoderArtifact(tmp_path / "exp").logits(ids)
    assert got.shape == (4, cfg.train.seq_len, cfg.model.vocab_size)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_encoder_exports_with_its_integer_weights(tmp_path, capsys, bits):
    make_run(tmp_path / "run", "distilbert_like", n_layers=2)
    q = tmp_path / "q"
    call(
        capsys, "quantize", tmp_path / "run", "--bits", bits, "--out", q, *(["--group-size", "16"] if bits == 4 else [])
    )
    run = load_run(q)
    tok = run.tokenizer
    ids, tokens, lengths = padded(tok, ROWS, 32)
    want = np.asarray(run.model.apply(run.params, jnp.asarray(tokens), lengths=jnp.asarray(lengths))[0])
    for fmt in ("onnx", "stablehlo"):
        manifest = call(capsys, "export", q, "--format", fmt, "--out", tmp_path / fmt, "--max-len", 32, "--batch", 4)
        assert manifest["quant_bits"] == bits
        stored = json.loads((tmp_path / fmt / "manifest.json").read_text())["weights"]["dtypes"]
        assert ("int8" if bits == 8 else "uint8") in stored  # int4: two values packed per byte
        got = EncoderArtifact(tmp_path / fmt).logits(ids)
        # int4: logits up to ~6 (init std 0.3) after a dequantization whose float rounding the graph orders differently
        np.testing.assert_allclose(got, want, atol=1e-5 if bits == 8 else 5e-5, rtol=1e-5)


def test_token_head_export(tmp_path):
    cfg, params, tok = make_run(tmp_path / "run", "hybrid_encoder")
    model = load_run(tmp_path / "run").model
    head = TokenHead(3)
    p = {"backbone": params, "head": head.init(jax.random.key(3), jnp.zeros((1, 1, cfg.model.d_model)))}
    ids, tokens, lengths = padded(tok, ROWS, 32)
    want = np.asarray(jax.jit(encoder_fn(model, head, jax.tree.structure(p)))(jax.tree.leaves(p), tokens, lengths))
    assert want.shape == (4, 32, 3)
    for fmt in ("onnx", "stablehlo"):
        manifest = write_encoder_export(tmp_path / fmt, model, p, head, fmt, 32, 2, {"labels": ["a", "b", "c"]})
        assert manifest["kind"] == "token"
        np.testing.assert_allclose(EncoderArtifact(tmp_path / fmt).logits(ids), want, atol=1e-5, rtol=1e-5)


def test_bad_export_options_are_one_sentence(tmp_path, capsys, classify_data):
    make_run(tmp_path / "dec", "transformer")
    assert main(["export", str(tmp_path / "dec"), "--out", str(tmp_path / "e1"), "--batch", "2"]) == 2
    assert "--batch 2 applies to encoder and classifier exports" in capsys.readouterr().err
    make_run(tmp_path / "enc", "distilbert_like", n_layers=1)
    clf = tmp_path / "clf"
    call(
        capsys, "finetune", tmp_path / "enc", "--task", "classify", "--data", classify_data, "--out", clf, "--steps", 1
    )
    assert main(["export", str(clf), "--out", str(tmp_path / "e2"), "--best"]) == 2
    assert "is a classifier, which holds one fine-tuned checkpoint; drop --best." in capsys.readouterr().err
    assert main(["export", str(clf), "--out", str(tmp_path / "e3"), "--max-len", "0"]) == 2
    assert "--max-len and --batch must be positive" in capsys.readouterr().err
