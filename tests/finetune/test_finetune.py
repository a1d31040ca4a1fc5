"""slm finetune: LoRA merge math, full vs LoRA on a tiny task, adapters saved alone and merged, and its errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.finetune import lora
from slm_jax.finetune.data import encode_examples
from slm_jax.inference.run import load_run
from slm_jax.models.lm import CausalLM
from tests.tiny_runs import run_cli as run
from tests.tiny_runs import train_text_run

LETTERS = "abcdefgh"


def write_task(path, n, seed):
    """prompt: 3 random letters + ':'; completion: the first letter twice + '.' (a rule the base cannot know)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = "".join(rng.choice(list(LETTERS), 3))
            f.write(json.dumps({"prompt": word + ":", "completion": word[0] * 2 + "."}) + "\n")
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    run_dir = train_text_run(
        tmp,
        "abc: def. gha: bed. ",
        200,
        [
            "model.n_layers=2",
            "model.d_model=32",
            "model.n_heads=2",
            "train.steps=20",
            "train.batch_size=8",
            "train.seq_len=16",
            "eval.every=0",
            "eval.batches=1",
            "checkpoint.every=20",
        ],
        name="base",
    )
    return {
        "run": run_dir,
        "train": write_task(tmp / "train.jsonl", 512, 0),
        "eval": write_task(tmp / "eval.jsonl", 128, 1),
    }


def test_full_and_lora_learn_the_task_and_merge_matches(capsys, base_run, tmp_path):
    common = [
        "--data",
        base_run["train"],
        "--eval-data",
        base_run["eval"],
        "--steps",
        "150",
        "--batch-size",
        "32",
        "--lr",
        "1e-2",
    ]
    code, out, err = run(capsys, "finetune", base_run["run"], "--out", tmp_path / "full", *common)
    assert code == 0, err
    full = json.loads(out)
    code, out, err = run(
        capsys,
        "finetune",
        base_run["run"],
        "--out",
        tmp_path / "lora",
        "--lora",
        "--rank",
        "4",
        "--targets",
        "qkv|o$|mlp",
        *common,
    )
    assert code == 0, err
    lo = json.loads(out)
    assert full["before"]["exact_match"] < 0.2 and lo["before"]["exact_match"] < 0.2
    assert full["after"]["exact_match"] > 0.9, full["after"]
    assert lo["after"]["exact_match"] > 0.9 * full["after"]["exact_match"], (lo["after"], full["after"])
    assert full["trainable_params"] == full["base_params"] and lo["trainable_params"] < 0.2 * lo["base_params"]
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == [
        ".lock",
        "adapter.json",
        "adapter.safetensors",
        "finetune.json",
    ]
    assert json.loads((tmp_path / "lora" / "adapter.json").read_text())["base_step"] == 20

    code, out, err = run(capsys, "finetune", "merge", tmp_path / "lora", "--out", tmp_path / "merged")
    assert code == 0, err
    merged, base = load_run(tmp_path / "merged"), load_run(base_run["run"])
    from slm_jax.finetune.train import load_adapters

    adapters, spec, _ = load_adapters(tmp_path / "lora")
    tokens = jnp.asarray(encode_examples([{"prompt": "abc:", "completion": "aa."}], base.tokenizer)["inputs"])
    got = merged.model.apply(merged.params, tokens)[0]
    want = lora.apply_unmerged(base.model, base.params, adapters, spec, tokens)
    assert float(jnp.max(jnp.abs(got - want))) <= 1e-5
    assert float(jnp.max(jnp.abs(got - base.model.apply(base.params, tokens)[0]))) > 1e-2  # the adapters did change it
    code, out, _ = run(
        capsys, "generate", tmp_path / "merged", "--prompt", "bcd:", "--max-new-tokens", "3", "--temperature", "0"
    )
    assert code == 0 and out.strip() == "bcd:bb."
    code, out, _ = run(
        capsys, "generate", tmp_path / "full", "--prompt", "bcd:", "--max-new-tokens", "3", "--temperature", "0"
    )
    assert code == 0 and out.strip() == "bcd:bb."


def test_merge_with_scan_layers_and_dropout_mask():
    cfg = config_from_dict(
        {"model": {"n_layers": 2, "d_model": 16, "n_heads": 2, "vocab_size": 11, "scan_layers": True}}
    ).model
    params = CausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    spec = lora.LoraSpec(rank=2, alpha=4.0, dropout=0.5)
    paths = lora.target_paths(cfg, spec)
    assert paths == ["periods/block_0/mixer/o", "periods/block_0/mixer/qkv"]
    adapters = lora.init_adapters(params, paths, spec, jax.random.key(1))
    assert adapters["periods/block_0/mixer/qkv"]["a"].shape == (2, 16, 2)  # stacked layers keep their leading axis
    adapters = jax.tree.map(lambda x: x + 0.1, adapters)
    merged = lora.merge(params, adapters, spec)
    w, ab = lora.kernel_at(params, paths[1]), adapters[paths[1]]
    want = w + 2.0 * np.einsum("lir,lrf->lif", ab["a"], ab["b"])
    np.testing.assert_allclose(lora.kernel_at(merged, paths[1]), want, rtol=1e-6, atol=1e-6)
    dropped = lora.kernel_at(lora.merge(params, adapters, spec, jax.random.key(2)), paths[1]) - w
    zero_rows = np.all(np.abs(np.asarray(dropped)) < 1e-7, axis=-1)  # a dropped input row gets no update
    assert 0 < zero_rows.mean() < 1


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "ab:"}'], 'lacks a string "prompt" or "completion"'),
        (["not json"], "is not valid JSON"),
        ([], "holds no examples"),
        (['{"prompt": "ab:", "completion": ""}'], "empty prompt or completion"),
        (['{"prompt": "AB:", "completion": "x"}'], "cannot be encoded with the run's tokenizer"),
    ],
)
def test_bad_jsonl(capsys, base_run, tmp_path, lines, message):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines))
    code, out, err = run(capsys, "finetune", base_run["run"], "--data", data, "--out", tmp_path / "o", "--lora")
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


def test_target_pattern_matching_nothing_lists_paths(capsys, base_run, tmp_path):
    code, _, err = run(
        capsys,
        "finetune",
        base_run["run"],
        "--data",
        base_run["train"],
        "--out",
        tmp_path / "o",
        "--lora",
        "--targets",
        "attn_q",
    )
    assert code == 2 and "matches no projection" in err and "layers_0/mixer/qkv" in err and err.count("\n") == 1
    code, _, err = run(capsys, "finetune", "merge", tmp_path / "nowhere", "--out", tmp_path / "m")
    assert code == 2 and "adapter.json" in err
