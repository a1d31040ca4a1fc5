"""Bad input to every command: exit code 2 and exactly one line on stderr that names the cause, never a traceback.

Each case runs ``slm_jax.cli.main`` in-process. Paths in the table are templates filled from the
``env`` fixture: ``{tmp}`` (the fixture folder), ``{cfg}`` (a valid tiny config), ``{run}`` (a
trained tiny run: checkpoints at steps 2 and 4), ``{data}`` (a prepared data directory).
"""

import shutil

import pytest
import yaml

from slm_jax.cli import main
from tests.reliability.tiny import write_config

SWEEPS = {
    "sweep_empty_axis": {"base": "tiny.yaml", "grid": {"model.d_model": []}},
    "sweep_unknown_key": {"base": "tiny.yaml", "gird": {"model.d_model": [16]}},
    "sweep_no_base": {"grid": {"model.d_model": [16]}},
    "sweep_base_missing": {"base": "nowhere.yaml", "grid": {"model.d_model": [16]}},
    "sweep_bad_axis": {"base": "tiny.yaml", "grid": {"model.d_modle": [16]}},
    "sweep_bad_lrs": {"base": "tiny.yaml", "lrs": ["fast"]},
    "sweep_negative_lr": {"base": "tiny.yaml", "lrs": [-1.0e-3]},
    "sweep_grid_list": {"base": "tiny.yaml", "grid": ["model.d_model"]},
    "sweep_points_scalar": {"base": "tiny.yaml", "points": [16]},
    "sweep_set_string": {"base": "tiny.yaml", "set": "train.steps=3", "lrs": [1.0e-3]},
    "sweep_set_no_equals": {"base": "tiny.yaml", "set": ["train.steps"], "lrs": [1.0e-3]},
    "sweep_budget_match": {"base": "tiny.yaml", "grid": {"model.n_layers": [1]}, "budget": {"match": "speed"}},
    "sweep_budget_multiple": {
        "base": "tiny.yaml",
        "grid": {"model.n_layers": [1]},
        "budget": {"match": "params", "multiple": 0},
    },
    "sweep_nothing": {"base": "tiny.yaml"},
    "sweep_bad_value": {"base": "tiny.yaml", "grid": {"model.d_model": ["wide"]}},
}
TEXT_FILES = {
    "empty.yaml": "",
    "list.yaml": "- model\n- train\n",
    "dup_top.yaml": "name: a\nmodel:\n  d_model: 16\nmodel:\n  n_layers: 1\n",
    "dup_nested.yaml": "name: a\nmodel:\n  d_model: 16\n  d_model: 32\n",
    "malformed.yaml": "name: a\nmodel: [16, 32\n",
    "tabs.yaml": "name: a\nmodel:\n\td_model: 16\n",
    "unknown_top.yaml": "name: a\nmodle:\n  d_model: 16\n",
    "unknown_nested.yaml": "model:\n  d_modle: 16\n",
    "wrong_type.yaml": "train:\n  steps: ten\n",
    "section_scalar.yaml": "model: 3\n",
    "sweep_dup.yaml": "base: tiny.yaml\ngrid:\n  model.d_model: [16]\ngrid:\n  model.n_layers: [1]\n",
    "sweep_malformed.yaml": "base: tiny.yaml\ngrid: {model.d_model: [16\n",
    "empty.txt": "",
    "oov.txt": "QQQ ZZZ XXX " * 50,
    "ft_good.jsonl": '{"prompt": "the cat", "completion": " sat"}\n',
    "ft_bad_json.jsonl": '{"prompt": "the cat", "completion": " sat"}\n{"prompt": "the\n',
    "ft_missing_field.jsonl": '{"prompt": "the cat"}\n',
    "ft_wrong_type.jsonl": '{"prompt": "the cat", "completion": 3}\n',
    "ft_empty.jsonl": "\n\n",
    "ft_empty_prompt.jsonl": '{"prompt": "", "completion": " sat"}\n',
    "ft_oov.jsonl": '{"prompt": "QQQ", "completion": " ZZZ"}\n',
    "ft_list.jsonl": '["the cat", " sat"]\n',
    "afile": "a regular file, not a directory\n",
    "hf_garbage/config.json": "{",
    "hf_no_type/config.json": "{}",
    "has_export/manifest.json": "{}",
    "has_model/config.json": "{}",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Every file the table refers to, plus a trained tiny run and a prepared data directory."""
    tmp = tmp_path_factory.mktemp("bad_input")
    cfg = write_config(tmp)
    for name, text in TEXT_FILES.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00name")
    (tmp / "binary.txt").write_bytes(b"\xff\xfe\x00\x80" * 100)
    for name, sweep in SWEEPS.items():
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(sweep))
    (tmp / "not_prepared").mkdir()
    (tmp / "hf_empty").mkdir()
    (tmp / "nonempty").mkdir()
    (tmp / "nonempty" / "keep.txt").write_text("x")
    assert main(["train", str(cfg), "--run-dir", str(tmp / "run"), "--no-progress"]) == 0
    assert main(["data", "prepare", "--input", str(tmp / "tiny_corpus.txt"), "--out", str(tmp / "data")]) == 0
    assert main(["data", "prepare", "--input", str(tmp / "oov.txt"), "--out", str(tmp / "other_data")]) == 0
    write_config(tmp, name="other_vocab", corpus_text="QQQ ZZZ XXX " * 300)
    write_config(tmp, name="wide", model={"d_model": 32})
    write_config(tmp, name="quantized", model={"quant": {"bits": 8}})
    write_config(tmp, name="pmap", train={"parallel": {"strategy": "pmap"}})
    shutil.copytree(tmp / "run", tmp / "garbled_run")
    (tmp / "garbled_run" / "config.yaml").write_text("model: [1,\n")
    shutil.copytree(tmp / "run", tmp / "no_tokenizer_run")
    (tmp / "no_tokenizer_run" / "tokenizer.json").unlink()
    return {"tmp": tmp, "cfg": cfg, "run": tmp / "run", "data": tmp / "data"}


def T(*argv):
    return list(argv)


# (case id, argv template, a phrase the one-line error must contain)
CASES = [
    # ---------------------------------------------------------------- the command line itself
    ("no_command", T(), "required"),
    ("unknown_command", T("trian", "{cfg}"), "invalid choice"),
    ("unknown_option", T("train", "{cfg}", "--bogus"), "unrecognized arguments"),
    ("missing_config_arg", T("train"), "required"),
    ("until_step_zero", T("train", "{cfg}", "--until-step", "0"), "positive integer"),
    ("until_step_negative", T("train", "{cfg}", "--until-step", "-3"), "positive integer"),
    ("until_step_text", T("train", "{cfg}", "--until-step", "ten"), "positive integer"),
    # ---------------------------------------------------------------- config files and overrides
    ("config_missing", T("config", "show", "{tmp}/nowhere.yaml"), "does not exist"),
    ("config_is_directory", T("config", "show", "{tmp}/not_prepared"), "does not exist"),
    ("config_empty", T("config", "show", "{tmp}/empty.yaml"), "is empty"),
    ("config_list", T("config", "show", "{tmp}/list.yaml"), "mapping of sections"),
    ("config_binary", T("config", "show", "{tmp}/binary.yaml"), "not UTF-8"),
    ("config_duplicate_section", T("config", "show", "{tmp}/dup_top.yaml"), "'model' is given twice, on lines 2 and 4"),
    (
        "config_duplicate_key",
        T("config", "show", "{tmp}/dup_nested.yaml"),
        "'d_model' is given twice, on lines 3 and 4",
    ),
    ("config_malformed", T("config", "show", "{tmp}/malformed.yaml"), "malformed.yaml line 3, column 1"),
    ("config_tab_indent", T("config", "show", "{tmp}/tabs.yaml"), "tabs.yaml line 3"),
    ("config_unknown_section", T("config", "show", "{tmp}/unknown_top.yaml"), "'modle'; did you mean 'model'?"),
    ("config_unknown_key", T("config", "show", "{tmp}/unknown_nested.yaml"), "did you mean 'model.d_model'"),
    ("config_wrong_type", T("config", "show", "{tmp}/wrong_type.yaml"), "'train.steps' expects int"),
    ("config_section_scalar", T("config", "show", "{tmp}/section_scalar.yaml"), "is a section"),
    ("set_without_equals", T("config", "show", "{cfg}", "--set", "train.steps"), "has no '='"),
    ("set_unknown_key", T("config", "show", "{cfg}", "--set", "train.step=3"), "did you mean 'train.steps'"),
    ("set_malformed_value", T("config", "show", "{cfg}", "--set", "model.d_model=[1"), "--set"),
    ("set_wrong_type", T("config", "show", "{cfg}", "--set", "train.batch_size=big"), "expects int"),
    (
        "set_old_mixer_key",
        T("config", "show", "{cfg}", "--set", "model.rglru.width=32"),
        "did you mean 'model.mixers.rglru.width'",
    ),
    (
        "set_unknown_mixer_option",
        T("config", "show", "{cfg}", "--set", "model.mixers.gla.rank=4"),
        "Unknown config key 'model.mixers.gla.rank'",
    ),
    (
        "mixer_option_bad_size",
        T("config", "show", "{cfg}", "--set", "model.layer_pattern=[gla]", "--set", "model.mixers.gla.expand_k=0.01"),
        "model.mixers.gla.expand_k",
    ),
    (
        "mixer_option_bad_window",
        T(
            "config",
            "show",
            "{cfg}",
            "--set",
            "model.layer_pattern=[local_attention]",
            "--set",
            "model.mixers.local_attention.window=0",
        ),
        "window",
    ),
    ("heads_do_not_divide", T("config", "show", "{cfg}", "--set", "model.n_heads=3"), "divisible"),
    ("zero_layers", T("config", "show", "{cfg}", "--set", "model.n_layers=0"), "model.n_layers must be positive"),
    ("negative_vocab", T("config", "show", "{cfg}", "--set", "model.vocab_size=-1"), "model.vocab_size"),
    ("unknown_mixer", T("config", "show", "{cfg}", "--set", "model.layer_pattern=[attn]"), "attn"),
    (
        "bad_rope_scaling",
        T("config", "show", "{cfg}", "--set", "model.rope_scaling.kind=yarn"),
        "model.rope_scaling.kind",
    ),
    ("bad_dtype", T("config", "show", "{cfg}", "--set", "model.dtype=float64"), "float32, bfloat16"),
    ("bad_val_fraction", T("config", "show", "{cfg}", "--set", "data.val_fraction=1.5"), "data.val_fraction"),
    ("bad_schedule", T("config", "show", "{cfg}", "--set", "optim.schedule=linear"), "optim.schedule"),
    ("zero_lr", T("config", "show", "{cfg}", "--set", "optim.lr=0"), "optim.lr"),
    ("bad_strategy", T("config", "show", "{cfg}", "--set", "train.parallel.strategy=ddp"), "train.parallel.strategy"),
    ("zero_keep", T("config", "show", "{cfg}", "--set", "checkpoint.keep=0"), "checkpoint.keep"),
    ("bad_alpha", T("config", "show", "{cfg}", "--set", "distill.alpha=2"), "distill.alpha"),
    ("bad_curriculum", T("config", "show", "{cfg}", "--set", "train.curriculum=[[16]]"), "[seq_len, steps] pairs"),
    (
        "accum_does_not_divide",
        T("config", "show", "{cfg}", "--set", "train.grad_accum=3"),
        "divisible by train.grad_accum",
    ),
    # ---------------------------------------------------------------- train: data, run directory, resume
    (
        "train_data_missing",
        T("train", "{cfg}", "--set", "data.path={tmp}/nowhere.txt", "--run-dir", "{tmp}/r1"),
        "does not exist",
    ),
    ("train_data_empty", T("train", "{cfg}", "--set", "data.path={tmp}/empty.txt", "--run-dir", "{tmp}/r2"), "empty"),
    (
        "train_data_not_utf8",
        T("train", "{cfg}", "--set", "data.path={tmp}/binary.txt", "--run-dir", "{tmp}/r3"),
        "UTF-8",
    ),
    (
        "train_data_not_prepared",
        T("train", "{cfg}", "--set", "data.path={tmp}/not_prepared", "--run-dir", "{tmp}/r4"),
        "not a prepared data directory",
    ),
    ("train_no_data", T("train", "{cfg}", "--set", "data.path=", "--run-dir", "{tmp}/r5"), "No data"),
    (
        "train_unknown_corpus",
        T("train", "{cfg}", "--set", "data.path=", "--set", "data.synthetic=nope", "--run-dir", "{tmp}/r6"),
        "nope",
    ),
    (
        "train_vocab_too_small",
        T("train", "{cfg}", "--set", "model.vocab_size=3", "--run-dir", "{tmp}/r7"),
        "smaller than the data's vocabulary",
    ),
    (
        "train_mixture_two_tokenizers",
        T(
            "train",
            "{cfg}",
            "--set",
            "data.path=",
            "--set",
            "data.mixture={{{data}: 1, {tmp}/other_data: 1}}",
            "--run-dir",
            "{tmp}/r12",
        ),
        "use different tokenizers; prepare them with one",
    ),
    (
        "train_mixture_and_path",
        T("train", "{cfg}", "--set", "data.mixture={{{data}: 1}}", "--run-dir", "{tmp}/r10"),
        "leave data.path, data.synthetic and data.task.name empty",
    ),
    (
        "train_mixture_zero_weight",
        T("train", "{cfg}", "--set", "data.path=", "--set", "data.mixture={{{data}: 0}}", "--run-dir", "{tmp}/r11"),
        "drop a source instead of giving it weight 0",
    ),
    ("train_run_dir_is_file", T("train", "{cfg}", "--run-dir", "{tmp}/afile"), "is a file, not a directory"),
    ("train_run_dir_under_file", T("train", "{cfg}", "--run-dir", "{tmp}/afile/run"), "is a file, not a directory"),
    ("train_other_model", T("train", "{tmp}/wide.yaml", "--run-dir", "{run}"), "different model (model.d_model"),
    (
        "train_until_step_below",
        T("train", "{cfg}", "--run-dir", "{run}", "--until-step", "1"),
        "--until-step 1 is below step 4",
    ),
    ("train_quantized_config", T("train", "{tmp}/quantized.yaml", "--run-dir", "{tmp}/r8"), "cannot be trained"),
    (
        "train_init_from_missing",
        T("train", "{cfg}", "--set", "train.init_from={tmp}/nowhere", "--run-dir", "{tmp}/r9"),
        "not a run directory",
    ),
    # ---------------------------------------------------------------- data prepare
    ("prepare_missing_input", T("data", "prepare", "--input", "{tmp}/nowhere.txt", "--out", "{tmp}/p1"), "nowhere.txt"),
    ("prepare_empty_input", T("data", "prepare", "--input", "{tmp}/empty.txt", "--out", "{tmp}/p2"), "empty"),
    ("prepare_not_utf8", T("data", "prepare", "--input", "{tmp}/binary.txt", "--out", "{tmp}/p3"), "UTF-8"),
    (
        "prepare_val_fraction_zero",
        T("data", "prepare", "--input", "{tmp}/tiny_corpus.txt", "--out", "{tmp}/p4", "--val-fraction", "0"),
        "val",
    ),
    (
        "prepare_val_fraction_high",
        T("data", "prepare", "--input", "{tmp}/tiny_corpus.txt", "--out", "{tmp}/p5", "--val-fraction", "1.5"),
        "val",
    ),
    ("prepare_out_is_file", T("data", "prepare", "--input", "{tmp}/tiny_corpus.txt", "--out", "{tmp}/afile"), "afile"),
    (
        "prepare_bad_tokenizer",
        T("data", "prepare", "--input", "{tmp}/tiny_corpus.txt", "--out", "{tmp}/p6", "--tokenizer", "wordpiece"),
        "Unknown tokenizer 'wordpiece'",
    ),
    (
        "prepare_out_under_file",
        T("data", "prepare", "--input", "{tmp}/tiny_corpus.txt", "--out", "{tmp}/afile/p7"),
        "afile",
    ),
    # ---------------------------------------------------------------- generate
    ("generate_missing_run", T("generate", "{tmp}/nowhere", "--prompt", "the"), "not a run directory"),
    ("generate_data_dir_as_run", T("generate", "{data}", "--prompt", "the"), "not a run directory"),
    ("generate_no_tokenizer", T("generate", "{tmp}/no_tokenizer_run", "--prompt", "the"), "no tokenizer.json"),
    ("generate_empty_prompt", T("generate", "{run}", "--prompt", ""), "prompt is empty"),
    ("generate_prompt_out_of_vocab", T("generate", "{run}", "--prompt", "QQQ"), "Q"),
    (
        "generate_zero_tokens",
        T("generate", "{run}", "--prompt", "the", "--max-new-tokens", "0"),
        "--max-new-tokens must be positive",
    ),
    ("generate_bad_top_p", T("generate", "{run}", "--prompt", "the", "--top-p", "0"), "top_p"),
    ("generate_negative_temperature", T("generate", "{run}", "--prompt", "the", "--temperature", "-1"), "temperature"),
    ("generate_negative_top_k", T("generate", "{run}", "--prompt", "the", "--top-k", "-2"), "top_k"),
    ("generate_negative_chunk", T("generate", "{run}", "--prompt", "the", "--chunk", "-1"), "--chunk"),
    (
        "generate_missing_draft",
        T("generate", "{run}", "--prompt", "the", "--draft", "{tmp}/nowhere"),
        "not a run directory",
    ),
    (
        "generate_zero_draft_tokens",
        T("generate", "{run}", "--prompt", "the", "--draft", "{run}", "--draft-tokens", "0"),
        "draft",
    ),
    (
        "generate_missing_step",
        T("generate", "{run}", "--prompt", "the", "--step", "99"),
        "no checkpoint for step 99; pass one of the saved steps [2, 4]",
    ),
    (
        "generate_step_and_best",
        T("generate", "{run}", "--prompt", "the", "--step", "2", "--best"),
        "either --best or --step",
    ),
    ("generate_bad_cache_dtype", T("generate", "{run}", "--prompt", "the", "--cache-dtype", "int4"), "invalid choice"),
    # ---------------------------------------------------------------- eval
    ("eval_missing_run", T("eval", "{tmp}/nowhere"), "not a run directory"),
    ("eval_garbled_config", T("eval", "{tmp}/garbled_run"), "config.yaml is not valid YAML"),
    ("eval_data_missing", T("eval", "{run}", "--data", "{tmp}/nowhere.txt"), "does not exist"),
    ("prune_not_a_run", T("prune", "{tmp}/nowhere", "--out", "{tmp}/pruned"), "not a run directory"),
    (
        "prune_too_many_heads",
        T("prune", "{run}", "--out", "{tmp}/pruned2", "--set", "prune.n_heads=99"),
        "prune.n_heads",
    ),
    ("predict_not_a_classifier", T("predict", "{run}", "--text", "hi"), "has no classify.json"),
    (
        "partition_missing_config",
        T("data", "partition", "{tmp}/nowhere.yaml", "--out", "{tmp}/parts"),
        "does not exist",
    ),
    ("eval_data_not_prepared", T("eval", "{run}", "--data", "{tmp}/not_prepared"), "not a prepared data directory"),
    ("eval_data_out_of_vocab", T("eval", "{run}", "--data", "{tmp}/oov.txt"), "Q"),
    ("eval_data_other_vocab", T("eval", "{run}", "--data", "{tmp}/other_data"), "another vocabulary"),
    ("eval_zero_batches", T("eval", "{run}", "--batches", "0"), "positive integer"),
    ("eval_missing_step", T("eval", "{run}", "--step", "3"), "no checkpoint for step 3"),
    # ---------------------------------------------------------------- quantize
    ("quantize_bits_3", T("quantize", "{run}", "--bits", "3", "--out", "{tmp}/q1"), "--bits must be 4 or 8"),
    ("quantize_bits_text", T("quantize", "{run}", "--bits", "eight", "--out", "{tmp}/q2"), "invalid int value"),
    ("quantize_missing_run", T("quantize", "{tmp}/nowhere", "--bits", "8", "--out", "{tmp}/q3"), "not a run directory"),
    ("quantize_out_is_a_run", T("quantize", "{run}", "--bits", "8", "--out", "{run}"), "already holds a run"),
    ("quantize_out_is_file", T("quantize", "{run}", "--bits", "8", "--out", "{tmp}/afile"), "afile"),
    (
        "quantize_negative_group",
        T("quantize", "{run}", "--bits", "4", "--out", "{tmp}/q4", "--group-size", "-4"),
        "group",
    ),
    (
        "quantize_calib_with_rtn",
        T("quantize", "{run}", "--bits", "4", "--out", "{tmp}/q5", "--calib", "{tmp}/afile"),
        "--calib is read only by --method gptq or awq",
    ),
    (
        "quantize_too_few_calib_tokens",
        T("quantize", "{run}", "--bits", "4", "--out", "{tmp}/q6", "--method", "awq", "--calib-tokens", "2"),
        "is below one sequence",
    ),
    # ---------------------------------------------------------------- export
    ("export_bad_format", T("export", "{run}", "--out", "{tmp}/e1", "--format", "tflite"), "tflite"),
    ("export_missing_run", T("export", "{tmp}/nowhere", "--out", "{tmp}/e2"), "not a run directory"),
    ("export_zero_max_len", T("export", "{run}", "--out", "{tmp}/e3", "--max-len", "0"), "--max-len"),
    ("export_zero_prefill_chunk", T("export", "{run}", "--out", "{tmp}/e4", "--prefill-chunk", "0"), "--prefill-chunk"),
    ("export_over_an_export", T("export", "{run}", "--out", "{tmp}/has_export"), "already holds an export"),
    ("export_out_is_file", T("export", "{run}", "--out", "{tmp}/afile"), "afile"),
    # ---------------------------------------------------------------- convert
    ("from_hf_missing_dir", T("convert", "from-hf", "{tmp}/nowhere", "{tmp}/c1"), "nowhere"),
    ("from_hf_no_config", T("convert", "from-hf", "{tmp}/hf_empty", "{tmp}/c2"), "config.json"),
    ("from_hf_garbled_config", T("convert", "from-hf", "{tmp}/hf_garbage", "{tmp}/c3"), "config.json"),
    ("from_hf_no_model_type", T("convert", "from-hf", "{tmp}/hf_no_type", "{tmp}/c4"), "config.json"),
    ("to_hf_missing_run", T("convert", "to-hf", "{tmp}/nowhere", "{tmp}/c5"), "not a run directory"),
    ("to_hf_bad_family", T("convert", "to-hf", "{run}", "{tmp}/c6", "--family", "gpt9"), "gpt9"),
    ("to_hf_over_a_model", T("convert", "to-hf", "{run}", "{tmp}/has_model"), "already holds a model"),
    ("to_hf_out_is_file", T("convert", "to-hf", "{run}", "{tmp}/afile"), "afile"),
    ("from_hf_into_a_run", T("convert", "from-hf", "{tmp}/hf_no_type", "{run}"), "already holds a run"),
    # ---------------------------------------------------------------- finetune
    ("finetune_no_data", T("finetune", "{run}", "--out", "{tmp}/f1"), "--data"),
    (
        "finetune_data_missing",
        T("finetune", "{run}", "--data", "{tmp}/nowhere.jsonl", "--out", "{tmp}/f2"),
        "does not exist",
    ),
    (
        "finetune_malformed_jsonl",
        T("finetune", "{run}", "--data", "{tmp}/ft_bad_json.jsonl", "--out", "{tmp}/f3"),
        "Line 2",
    ),
    (
        "finetune_missing_field",
        T("finetune", "{run}", "--data", "{tmp}/ft_missing_field.jsonl", "--out", "{tmp}/f4"),
        "completion",
    ),
    (
        "finetune_wrong_type",
        T("finetune", "{run}", "--data", "{tmp}/ft_wrong_type.jsonl", "--out", "{tmp}/f5"),
        "completion",
    ),
    ("finetune_not_objects", T("finetune", "{run}", "--data", "{tmp}/ft_list.jsonl", "--out", "{tmp}/f6"), "Line 1"),
    (
        "finetune_empty_file",
        T("finetune", "{run}", "--data", "{tmp}/ft_empty.jsonl", "--out", "{tmp}/f7"),
        "no examples",
    ),
    (
        "finetune_empty_prompt",
        T("finetune", "{run}", "--data", "{tmp}/ft_empty_prompt.jsonl", "--out", "{tmp}/f8"),
        "empty prompt",
    ),
    (
        "finetune_out_of_vocab",
        T("finetune", "{run}", "--data", "{tmp}/ft_oov.jsonl", "--out", "{tmp}/f9"),
        "cannot be encoded",
    ),
    (
        "finetune_zero_steps",
        T("finetune", "{run}", "--data", "{tmp}/ft_good.jsonl", "--out", "{tmp}/f10", "--steps", "0"),
        "--steps",
    ),
    (
        "finetune_zero_lr",
        T("finetune", "{run}", "--data", "{tmp}/ft_good.jsonl", "--out", "{tmp}/f11", "--lr", "0"),
        "--lr",
    ),
    (
        "finetune_out_not_empty",
        T("finetune", "{run}", "--data", "{tmp}/ft_good.jsonl", "--out", "{tmp}/nonempty"),
        "not empty",
    ),
    (
        "finetune_out_is_file",
        T("finetune", "{run}", "--data", "{tmp}/ft_good.jsonl", "--out", "{tmp}/afile"),
        "is a file",
    ),
    (
        "finetune_missing_base",
        T("finetune", "{tmp}/nowhere", "--data", "{tmp}/ft_good.jsonl", "--out", "{tmp}/f12"),
        "not a run directory",
    ),
    (
        "finetune_max_len",
        T("finetune", "{run}", "--data", "{tmp}/ft_good.jsonl", "--out", "{tmp}/f13", "--max-len", "2"),
        "--max-len",
    ),
    (
        "finetune_zero_rank",
        T("finetune", "{run}", "--data", "{tmp}/ft_good.jsonl", "--out", "{tmp}/f14", "--lora", "--rank", "0"),
        "rank",
    ),
    (
        "finetune_bad_targets",
        T(
            "finetune",
            "{run}",
            "--data",
            "{tmp}/ft_good.jsonl",
            "--out",
            "{tmp}/f15",
            "--lora",
            "--targets",
            "nothing_matches",
        ),
        "nothing_matches",
    ),
    ("merge_missing_adapters", T("finetune", "merge", "{tmp}/nowhere", "--out", "{tmp}/m1"), "adapter.json"),
    (
        "merge_two_dirs",
        T("finetune", "merge", "{tmp}/a", "{tmp}/b", "--out", "{tmp}/m2"),
        "exactly one adapter directory",
    ),
    # ---------------------------------------------------------------- sweep
    ("sweep_missing_file", T("sweep", "{tmp}/nowhere.yaml", "--dry-run"), "does not exist"),
    ("sweep_empty_axis", T("sweep", "{tmp}/sweep_empty_axis.yaml", "--dry-run"), "Sweep axis 'model.d_model'"),
    ("sweep_unknown_key", T("sweep", "{tmp}/sweep_unknown_key.yaml", "--dry-run"), "did you mean 'grid'"),
    ("sweep_no_base", T("sweep", "{tmp}/sweep_no_base.yaml", "--dry-run"), "no 'base:'"),
    ("sweep_base_missing", T("sweep", "{tmp}/sweep_base_missing.yaml", "--dry-run"), "nowhere.yaml"),
    ("sweep_bad_axis", T("sweep", "{tmp}/sweep_bad_axis.yaml", "--dry-run"), "did you mean 'model.d_model'"),
    ("sweep_bad_lrs", T("sweep", "{tmp}/sweep_bad_lrs.yaml", "--dry-run"), "lrs:"),
    ("sweep_negative_lr", T("sweep", "{tmp}/sweep_negative_lr.yaml", "--dry-run"), "lrs:"),
    ("sweep_grid_list", T("sweep", "{tmp}/sweep_grid_list.yaml", "--dry-run"), "grid:"),
    ("sweep_points_scalar", T("sweep", "{tmp}/sweep_points_scalar.yaml", "--dry-run"), "points:"),
    ("sweep_set_string", T("sweep", "{tmp}/sweep_set_string.yaml", "--dry-run"), "set:"),
    ("sweep_set_no_equals", T("sweep", "{tmp}/sweep_set_no_equals.yaml", "--dry-run"), "set:"),
    ("sweep_budget_match", T("sweep", "{tmp}/sweep_budget_match.yaml", "--dry-run"), "budget.match"),
    ("sweep_budget_multiple", T("sweep", "{tmp}/sweep_budget_multiple.yaml", "--dry-run"), "budget.multiple"),
    ("sweep_varies_nothing", T("sweep", "{tmp}/sweep_nothing.yaml", "--dry-run"), "varies nothing"),
    ("sweep_bad_value", T("sweep", "{tmp}/sweep_bad_value.yaml", "--dry-run"), "expects int"),
    ("sweep_duplicate_key", T("sweep", "{tmp}/sweep_dup.yaml", "--dry-run"), "'grid' is given twice"),
    ("sweep_malformed", T("sweep", "{tmp}/sweep_malformed.yaml", "--dry-run"), "sweep_malformed.yaml line"),
    # ---------------------------------------------------------------- distill
    ("distill_no_teacher", T("distill", "{cfg}", "--run-dir", "{tmp}/d1"), "No teacher"),
    (
        "distill_teacher_missing",
        T("distill", "{cfg}", "--teacher", "{tmp}/nowhere", "--run-dir", "{tmp}/d2"),
        "not a run directory",
    ),
    (
        "distill_mismatched_teacher",
        T("distill", "{tmp}/other_vocab.yaml", "--teacher", "{run}", "--run-dir", "{tmp}/d3"),
        "another tokenizer",
    ),
    ("distill_pmap", T("distill", "{tmp}/pmap.yaml", "--teacher", "{run}", "--run-dir", "{tmp}/d4"), "one device"),
    ("distill_two_configs", T("distill", "{cfg}", "{cfg}", "--teacher", "{run}"), "exactly one config"),
    ("distill_until_step_zero", T("distill", "{cfg}", "--teacher", "{run}", "--until-step", "0"), "positive integer"),
    (
        "distill_bad_top_k",
        T("distill", "{cfg}", "--teacher", "{run}", "--set", "distill.top_k=-1", "--run-dir", "{tmp}/d5"),
        "distill.top_k",
    ),
    ("precompute_no_out", T("distill", "precompute", "--teacher", "{run}"), "--out"),
    (
        "precompute_missing_teacher",
        T("distill", "precompute", "--teacher", "{tmp}/nowhere", "--out", "{tmp}/pc1"),
        "not a run directory",
    ),
    (
        "precompute_zero_top_k",
        T("distill", "precompute", "--teacher", "{run}", "--out", "{tmp}/pc2", "--top-k", "0"),
        "top-k",
    ),
    (
        "precompute_bad_dtype",
        T("distill", "precompute", "--teacher", "{run}", "--out", "{tmp}/pc3", "--dtype", "int8"),
        "dtype",
    ),
    # ---------------------------------------------------------------- plan
    ("plan_bad_mesh", T("plan", "{cfg}", "--mesh", "data=two"), "mesh"),
]


@pytest.mark.parametrize("argv, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_code_2(env, capsys, argv, phrase):
    code = main([arg.format(**env) for arg in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert phrase.format(**env) in err, err


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 70 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1][0] for c in CASES if c[1]}
    assert {
        "config",
        "data",
        "train",
        "generate",
        "eval",
        "quantize",
        "convert",
        "finetune",
        "export",
        "sweep",
        "distill",
        "prune",
        "predict",
    } <= commands


def test_generate_prints_an_error_on_a_line_of_its_own(env, capsys, monkeypatch):
    """A failure while tokens stream: the echoed prompt's line is ended before the error."""
    from slm_jax.errors import DataError
    from slm_jax.inference import generate as generate_module

    def failing(*args, **kwargs):
        def chunks():
            raise DataError("the decode failed.")
            yield  # pragma: no cover - makes this a generator

        return chunks()

    monkeypatch.setattr(generate_module, "generate", failing)
    assert main(["generate", str(env["run"]), "--prompt", "the"]) == 2
    out, err = capsys.readouterr()
    assert out == "the\n" and err == "error: the decode failed.\n"
