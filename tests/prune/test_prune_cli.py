"""slm prune end to end: the pruned run is an ordinary run (eval, generate, quantize, decode, recovery by train and
distill with train.init_from), and bad requests are one sentence with nothing written."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.inference.run import load_run
from tests.models.test_lm import decode_logits
from tests.prune.runs import TEXT, make_run
from tests.tiny_runs import run_cli as run

GRIFFIN = ["model.preset=griffin", "model.mixers.rglru.n_heads=2", "model.mixers.local_attention.window=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prune")
    return tmp, {
        "transformer": make_run(tmp, ["model.n_kv_heads=2"], name="transformer"),
        "griffin": make_run(tmp, GRIFFIN, name="griffin"),
        "mamba": make_run(tmp, ["model.preset=mamba", "model.mixers.mamba.d_state=3"], name="mamba"),
    }


def prune(capsys, source, out, corpus, *sets):
    args = ["prune", source, "--out", out, "--calib", corpus, "--calib-tokens", 64]
    return run(capsys, *args, *sum((["--set", s] for s in sets), []))


def test_pruned_transformer_evals_generates_quantizes_and_recovers(runs, capsys):
    tmp, sources = runs
    corpus, out = tmp / "corpus.txt", tmp / "t_pruned"
    yaml = tmp / "prune.yaml"
    yaml.write_text("prune:\n  n_layers: 2\n  d_ff: 48\n")
    code, stdout, err = run(
        capsys, "prune", sources["transformer"], "--out", out, "--config", yaml, "--calib", corpus,
        "--calib-tokens", 64, "--set", "prune.d_model=24", "--set", "prune.n_heads=2", "--set", "prune.n_kv_heads=1",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["params"]["after"] < summary["params"]["before"]
    m = load_run(out).cfg.model
    assert (m.n_layers, m.d_model, m.d_ff, m.n_heads, m.n_kv_heads, m.head_dim) == (2, 24, 48, 2, 1, 8)
    code, stdout, err = run(capsys, "eval", out, "--data", corpus, "--batches", 1)
    assert code == 0 and np.isfinite(json.loads(stdout)["val_loss"]), err
    code, stdout, err = run(capsys, "generate", out, "--prompt", "the ", "--max-new-tokens", 4)
    assert code == 0 and stdout.startswith("the "), err
    code, _, err = run(capsys, "quantize", out, "--bits", 8, "--out", tmp / "t_int8")
    assert code == 0, err
    code, _, err = run(capsys, "export", out, "--out", tmp / "t_export", "--max-len", 32)
    assert code == 0 and (tmp / "t_export").is_dir(), err
    assert load_run(out).cfg.name == "t_pruned"  # not the source's name: default run dirs never collide
    # Recovery: slm train, and slm distill with the original as teacher, both start from the pruned weights.
    config = out / "config.yaml"
    for cmd, extra in (("train", []), ("distill", ["--teacher", sources["transformer"]])):
        code, _, err = run(
            capsys, cmd, config, "--set", f"train.init_from={out}", "--run-dir", tmp / f"recover_{cmd}",
            "--no-progress", *extra,
        )  # fmt: skip
        assert code == 0, err
        assert load_run(tmp / f"recover_{cmd}").step == 2


@pytest.mark.parametrize(
    "name,sets",
    [
        ("griffin", ["prune.d_model=24", "prune.rglru_width=20", "prune.n_heads=2", "prune.d_ff=64"]),
        ("mamba", ["prune.d_model=24", "prune.n_layers=2", "prune.depth_metric=loss"]),
    ],
)
def test_pruned_recurrent_models_decode_like_the_full_pass(runs, capsys, name, sets):
    tmp, sources = runs
    out = tmp / f"{name}_pruned"
    code, _, err = prune(capsys, sources[name], out, tmp / "corpus.txt", *sets)
    assert code == 0, err
    pruned = load_run(out)
    toks = jnp.asarray(pruned.tokenizer.encode(TEXT[:19]))[None]
    full, _ = pruned.model.apply(pruned.params, toks)
    stepped, _ = decode_logits(pruned.model, pruned.params, toks, split=6)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name,sets,message",
    [
        ("transformer", ["prune.n_heads=8"], "more attention heads than the model has"),
        ("transformer", ["prune.n_heads=3", "prune.n_kv_heads=2"], "do not divide"),
        ("griffin", ["prune.rglru_width=21"], "divisible by the RG-LRU gate heads"),
        ("griffin", ["prune.n_layers=2", "prune.depth_unit=period"], "a pattern cannot be emptied"),
        ("mamba", ["prune.rglru_width=8"], "no rglru layer"),
        ("transformer", ["prune.la_heads=2"], "no GLA, DeltaNet, Gated DeltaNet or mLSTM layer"),
        ("mamba", ["prune.d_modle=8"], "did you mean prune.d_model"),
    ],
)
def test_impossible_shapes_are_one_sentence_and_nothing_is_written(runs, capsys, name, sets, message):
    tmp, sources = runs
    out = tmp / "never"
    code, _, err = prune(capsys, sources[name], out, tmp / "corpus.txt", *sets)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_calibration_data_in_another_vocabulary_is_refused(runs, capsys):
    tmp, sources = runs
    other = tmp / "other.txt"
    other.write_text("ZYXWVUTSRQ " * 50)
    prepared = tmp / "other_prepared"
    assert main(["data", "prepare", "--input", str(other), "--out", str(prepared)]) == 0
    capsys.readouterr()
    code, _, err = prune(capsys, sources["transformer"], tmp / "never2", prepared, "prune.d_ff=48")
    assert code == 2 and "another vocabulary" in err, err
    assert not (tmp / "never2").exists()


def test_linear_attention_heads_and_d_model_are_pruned_end_to_end(runs, capsys):
    tmp, _ = runs
    source = make_run(tmp, ["model.preset=gla", "model.mixers.gla.chunk_size=4"], name="gla")
    out = tmp / "gla_pruned"
    code, _, err = prune(capsys, source, out, tmp / "corpus.txt", "prune.d_model=24", "prune.la_heads=2")
    assert code == 0, err
    pruned = load_run(out)  # the config states the new widths: 2 heads of key width 4 and value width 8
    assert pruned.cfg.model.mixers.gla.n_heads == 2 and pruned.cfg.model.d_model == 24
    assert pruned.params["params"]["layers_0"]["mixer"]["out_proj"]["kernel"].shape == (16, 24)
    toks = jnp.asarray(pruned.tokenizer.encode(TEXT[:13]))[None]
    full, _ = pruned.model.apply(pruned.params, toks)
    stepped, _ = decode_logits(pruned.model, pruned.params, toks, split=6)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)
