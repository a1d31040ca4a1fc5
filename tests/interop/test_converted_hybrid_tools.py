"""Every tool on two converted hybrids: a tiny Qwen3.5 text model (Gated DeltaNet + gated attention, partial RoPE,
(1 + w) norms) and a tiny Granite 4.0-H (Mamba-2 + attention + mixture of experts + shared MLP, multipliers), each
built with transformers, converted with `slm convert from-hf`, then `slm generate`, `slm train`
(continued from the converted weights), `slm distill` (the converted model as teacher), `slm finetune --lora`,
`slm quantize` and `slm export` (StableHLO and ONNX), each checked to run and to produce what it should.
Needs the ``interop`` extra (and ``onnx`` for the ONNX export); skipped without it.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.cli import main  # noqa: E402
from slm_jax.data.tokenizers import CharTokenizer  # noqa: E402
from slm_jax.interop.hf_tokenizer import hf_tokenizer_json  # noqa: E402
from slm_jax.training.tracking import read_metrics  # noqa: E402
from tests.interop.parity import VOCAB, hf_model  # noqa: E402
from tests.interop.test_granite_hybrid_parity import CASES as GRANITE  # noqa: E402
from tests.interop.test_qwen3_next_parity import CASES as QWEN  # noqa: E402

HYBRIDS = {
    "qwen3_5": (*QWEN["qwen3_5_text_untied"], False),  # (config class, kwargs, has experts)
    "granite_h": ("GraniteMoeHybridConfig", GRANITE["granite_moe_rope"], True),
}

CHARS = "".join(chr(ord("!") + i) for i in range(VOCAB))
TINY = ["--set", "train.batch_size=2", "--set", "train.seq_len=16", "--set", "eval.batches=1", "--set", "eval.every=2"]


@pytest.fixture(scope="module", params=list(HYBRIDS))
def converted(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cls_name, kwargs, experts = HYBRIDS[request.param]
    model = hf_model(cls_name, kwargs)
    model.save_pretrained(tmp / "hf")
    (tmp / "hf" / "tokenizer.json").write_text(hf_tokenizer_json(CharTokenizer(CHARS)))
    assert main(["convert", "from-hf", str(tmp / "hf"), str(tmp / "run")]) == 0
    rng = np.random.default_rng(0)
    (tmp / "corpus.txt").write_text("".join(rng.choice(list(CHARS[:20]), 6000)))
    # the converted run's own tokenizer.json encodes the corpus (`slm data prepare`)
    argv = [
        "data",
        "prepare",
        "--input",
        tmp / "corpus.txt",
        "--tokenizer",
        tmp / "run" / "tokenizer.json",
        "--out",
        tmp / "data",
    ]
    assert main([str(a) for a in argv]) == 0
    rows = [{"prompt": CHARS[i : i + 4], "completion": CHARS[i + 4 : i + 6]} for i in range(40)]
    (tmp / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "experts").write_text(str(experts))
    return tmp


def run(capsys, *argv) -> tuple[int, str]:
    """(exit code, stdout) of `slm *argv`; a failure shows its stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


def data_sets(tmp) -> list[str]:
    sets = [f"data.path={tmp / 'data'}", "train.steps=2", "train.log_every=1"]
    return sum((["--set", s] for s in sets), []) + TINY


def test_generate(converted, capsys):
    code, out = run(capsys, "generate", converted / "run", "--prompt", "!#%", "--max-new-tokens", 6, "--temperature", 0)
    assert code == 0 and out.splitlines()[-1].startswith("!#%") and len(out.splitlines()[-1]) == 9


def test_continued_training_and_distillation(converted, capsys):
    run_dir = converted / "run"
    argv = ["train", run_dir / "config.yaml", "--run-dir", converted / "trained", "--no-progress"]
    assert run(capsys, *argv, "--set", f"train.init_from={run_dir}", *data_sets(converted))[0] == 0
    losses = [m for m in read_metrics(converted / "trained") if "loss" in m]
    assert len(losses) == 2 and all(np.isfinite(m["loss"]) for m in losses)
    if (converted / "experts").read_text() == "True":  # the balancing loss of the experts is logged
        assert all(m["moe_aux_loss"] > 0 for m in losses)
    argv = ["distill", run_dir / "config.yaml", "--teacher", run_dir, "--run-dir", converted / "student"]
    assert run(capsys, *argv, "--no-progress", *data_sets(converted))[0] == 0
    assert [m["step"] for m in read_metrics(converted / "student") if "loss" in m] == [1, 2]


def test_lora_finetune_targets_experts_and_merges(converted, capsys):
    argv = ["finetune", converted / "run", "--data", converted / "tasks.jsonl", "--out", converted / "lora", "--lora"]
    targets = r"(moe/(gate_up|down)|mixer/(qkv|in_proj|in_proj_qkv|out_proj))$"  # experts, attention, the recurrence
    argv += ["--rank", 2, "--targets", targets, "--steps", 3, "--batch-size", 4]
    assert run(capsys, *argv)[0] == 0
    assert run(capsys, "finetune", "merge", converted / "lora", "--out", converted / "merged")[0] == 0
    code, out = run(capsys, "generate", converted / "merged", "--prompt", "!#%", "--max-new-tokens", 3)
    assert code == 0


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_then_generate(converted, capsys, bits):
    out_dir = converted / f"q{bits}"
    assert run(capsys, "quantize", converted / "run", "--bits", bits, "--out", out_dir, "--group-size", 16)[0] == 0
    code, out = run(capsys, "generate", out_dir, "--prompt", "!#%", "--max-new-tokens", 4, "--temperature", 0)
    assert code == 0 and out.splitlines()[-1].startswith("!#%")


@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_export(converted, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out_dir = converted / f"export_{fmt}"
    assert run(capsys, "export", converted / "run", "--format", fmt, "--out", out_dir, "--max-len", 32)[0] == 0
    if fmt == "onnx":  # the graphs in onnxruntime greedily continue a prompt as our cached decode does
        from slm_jax.export.runner import Artifact
        from slm_jax.inference.generate import generate
        from slm_jax.inference.run import load_run

        loaded = load_run(converted / "run")
        prompt = [int(i) for i in loaded.tokenizer.encode("!#%&")]
        new, _ = Artifact(out_dir).generate(prompt, 8)
        ours = generate(loaded.model, loaded.params, np.asarray([prompt]), 8, temperature=0.0, chunk=8)
        assert new == [int(i) for i in np.concatenate(list(ours), axis=1)[0]]
