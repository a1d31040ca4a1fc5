"""The slm command end to end: config show, data prepare, train, eval, generate, and its errors."""

import json

import pytest
import yaml

from tests.tiny_runs import run_cli as run


def test_config_show_resolves_overrides(capsys):
    code, out, _ = run(
        capsys, "config", "show", "configs/experiments/shakespeare_char.yaml", "--set", "model.n_layers=2"
    )
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["model"]["n_layers"] == 2 and cfg["train"]["steps"] == 2000


@pytest.mark.parametrize(
    "override, message",
    [("model.n_layer=2", "model.n_layers"), ("train.steps=ten", "train.steps"), ("model.n_heads=3", "n_heads")],
)
def test_user_mistakes_print_one_line_and_exit_2(capsys, override, message):
    code, out, err = run(capsys, "config", "show", "configs/experiments/shakespeare_char.yaml", "--set", override)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_prepare_train_eval_generate(capsys, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat. " * 400)
    code, out, _ = run(
        capsys, "data", "prepare", "--input", str(text), "--tokenizer", "char", "--out", str(tmp_path / "prep")
    )
    assert code == 0 and json.loads(out)["vocab_size"] == len(set("the cat sat on the mat. "))
    run_dir = tmp_path / "run"
    overrides = [
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "train.steps=30",
        "train.batch_size=4",
        "train.seq_len=16",
        "eval.every=30",
        "eval.batches=2",
        "checkpoint.every=30",
        f"data.path={tmp_path / 'prep'}",
    ]
    args = ["train", "configs/experiments/shakespeare_char.yaml", "--run-dir", str(run_dir), "--no-progress"]
    code, out, _ = run(capsys, *args, *sum((["--set", o] for o in overrides), []))
    summary = json.loads(out[out.index("{") :])
    assert code == 0 and summary["step"] == 30 and summary["val_loss"] < 2.5

    code, out, _ = run(capsys, "eval", str(run_dir), "--batches", "2")
    assert code == 0 and json.loads(out)["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-4)

    code, out, _ = run(
        capsys, "generate", str(run_dir), "--prompt", "the ", "--max-new-tokens", "12", "--temperature", "0"
    )
    assert code == 0 and out.startswith("the ") and len(out.rstrip("\n")) == 4 + 12
    assert set(out.rstrip("\n")) <= set("the cat sat on the mat. ")


def test_eval_of_a_missing_run_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "eval", str(tmp_path / "nope"))
    assert code == 2 and "slm train" in err
