"""The run directory's owner: params restored without an optimizer, old train states, atomic run writes."""

import json

import jax
import numpy as np
import optax
import pytest

from slm_jax.cli import main
from slm_jax.config import config_from_dict, to_dict
from slm_jax.data.prepare import prepare
from slm_jax.data.tokenizers import CharTokenizer
from slm_jax.errors import CheckpointError
from slm_jax.finetune import train as finetune_train
from slm_jax.inference.run import load_run
from slm_jax.interop import convert
from slm_jax.interop.convert import export_hf
from slm_jax.interop.safetensors_io import write_checkpoint
from slm_jax.models.lm import CausalLM
from slm_jax.quant import run as quant_run
from slm_jax.rundir.checkpoint import Checkpointer
from slm_jax.rundir.files import new_run_dir, write_config, write_tokenizer
from slm_jax.rundir.params import restore_params
from slm_jax.training.optim import make_optimizer

TEXT = "abcdefgh:aa.\n" * 40


def tiny_cfg(vocab: int = 16):
    model = {"preset": "transformer", "n_layers": 1, "d_model": 16, "n_heads": 2, "vocab_size": vocab}
    return config_from_dict({"name": "tiny", "model": model, "train": {"seq_len": 8, "batch_size": 2, "steps": 2}})


def random_params(cfg, seed=0):
    return CausalLM(cfg.model).init(jax.random.key(seed), np.zeros((1, 4), np.int32))


def same(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def make_run(run_dir, cfg, params, step=3, tokenizer=True):
    """A run directory with a full train state (params, AdamW state, step and the old ``rng`` item) at ``step``."""
    run_dir.mkdir(parents=True)
    write_config(run_dir, cfg)
    if tokenizer:
        write_tokenizer(run_dir, CharTokenizer.from_text(TEXT))
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps, params)
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": np.asarray(step, np.int32),
        "rng": np.zeros(2, np.uint32),  # what train states held before it was dropped
    }
    with Checkpointer(run_dir, 1, 3, keep_best=False, async_save=False) as ckpt:
        ckpt.save(step, state, {}, to_dict(cfg), force=True)
    return run_dir


def test_restore_params_reads_weights_without_an_optimizer(tmp_path, monkeypatch):
    cfg = tiny_cfg()
    params = random_params(cfg)
    make_run(tmp_path / "run", cfg, params)

    def no_optimizer(*args, **kwargs):
        raise AssertionError("restoring parameters built an optimizer")

    monkeypatch.setattr(optax, "adamw", no_optimizer)
    got, step = restore_params(tmp_path / "run", cfg)
    assert step == 3 and same(got, params)
    run = load_run(tmp_path / "run")
    assert (
        run.step == 3
        and same(run.params, params)
        and run.tokenizer.vocab_size == CharTokenizer.from_text(TEXT).vocab_size
    )


def test_restore_params_from_a_path_relative_to_the_working_directory(tmp_path, monkeypatch):
    # Orbax reads only absolute paths; `slm eval runs/x` and train.init_from=runs/x pass relative ones.
    cfg = tiny_cfg()
    params = random_params(cfg)
    make_run(tmp_path / "run", cfg, params)
    monkeypatch.chdir(tmp_path)
    got, step = restore_params("run", cfg)
    assert step == 3 and same(got, params)


def test_old_train_state_with_rng_resumes_into_one_without(tmp_path):
    cfg = tiny_cfg()
    params = random_params(cfg)
    make_run(tmp_path / "run", cfg, params)
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps, params)
    abstract = jax.eval_shape(
        lambda: {"params": params, "opt_state": optimizer.init(params), "step": np.zeros((), np.int32)}
    )
    with Checkpointer(tmp_path / "run", 1, 3, async_save=False) as ckpt:
        state, _, config = ckpt.restore(abstract)
    assert set(state) == {"params", "opt_state", "step"} and int(state["step"]) == 3
    assert same(state["params"], params) and config["name"] == "tiny"


def test_a_model_that_does_not_fit_is_still_refused(tmp_path):
    make_run(tmp_path / "run", tiny_cfg(), random_params(tiny_cfg()))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_params(tmp_path / "run", tiny_cfg(vocab=20))


def test_new_run_dir_renames_when_complete_and_leaves_nothing_on_failure(tmp_path):
    with new_run_dir(tmp_path / "ok") as tmp:
        assert not (tmp_path / "ok").exists()
        (tmp / "config.yaml").write_text("name: x\n")
    assert (tmp_path / "ok" / "config.yaml").is_file()
    with pytest.raises(RuntimeError), new_run_dir(tmp_path / "failed") as tmp:
        (tmp / "config.yaml").write_text("name: x\n")
        raise RuntimeError("injected")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
    with pytest.raises(CheckpointError, match="already holds a run"), new_run_dir(tmp_path / "ok"):
        pass


def _hf_dir(tmp_path, cfg):
    hf_config, tensors = export_hf(cfg, random_params(cfg), "llama")
    hf_dir = tmp_path / "hf"
    write_checkpoint(hf_dir, tensors)
    (hf_dir / "config.json").write_text(json.dumps(hf_config))
    return hf_dir


def _boom(*args, **kwargs):
    raise OSError(28, "No space left on device (injected)")


def test_convert_failure_mid_write_leaves_no_run(tmp_path, monkeypatch):
    hf_dir = _hf_dir(tmp_path, tiny_cfg())
    monkeypatch.setattr(convert, "save_params", _boom)
    with pytest.raises(OSError, match="injected"):
        convert.from_hf(hf_dir, tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_quantize_failure_mid_write_leaves_no_run(tmp_path, monkeypatch):
    cfg = tiny_cfg()
    make_run(tmp_path / "run", cfg, random_params(cfg))
    monkeypatch.setattr(quant_run, "save_params", _boom)
    with pytest.raises(OSError, match="injected"):
        quant_run.quantize_run(tmp_path / "run", tmp_path / "q", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_finetune_failure_mid_write_leaves_no_run(tmp_path, monkeypatch):
    tok = CharTokenizer.from_text(TEXT)
    cfg = tiny_cfg(tok.vocab_size)
    make_run(tmp_path / "run", cfg, random_params(cfg))
    data = tmp_path / "ft.jsonl"
    data.write_text("".join(json.dumps({"prompt": "abc:", "completion": "aa."}) + "\n" for _ in range(4)))
    monkeypatch.setattr(finetune_train, "save_params", _boom)
    options = finetune_train.FinetuneOptions(steps=1, batch_size=2)
    with pytest.raises(OSError, match="injected"):
        finetune_train.finetune(tmp_path / "run", data, tmp_path / "ft", options, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.jsonl", "run"]


def test_converted_run_without_tokenizer_loads_and_generate_says_what_is_missing(tmp_path, capsys):
    tok = CharTokenizer.from_text(TEXT)
    cfg = tiny_cfg(tok.vocab_size)
    hf_dir = _hf_dir(tmp_path, cfg)
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    assert run.tokenizer is None and run.step == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompt", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no tokenizer.json" in err[0] and "--data" in err[0] and "Traceback" not in err[0]
    (tmp_path / "corpus.txt").write_text(TEXT * 10)  # the converted run keeps the default seq_len of 64
    prepare(tmp_path / "corpus.txt", "char", tmp_path / "prepared")
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "prepared"), "--batches", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 0 and np.isfinite(result["val_loss"]) and result["val_tokens"] > 0
