"""slm export --format stablehlo: exported prefill + decode reproduce the model, the standalone runner matches
slm generate."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.config import config_from_dict, to_yaml
from slm_jax.data.tokenizers import CharTokenizer, save_tokenizer
from slm_jax.export.runner import Artifact
from slm_jax.export.stablehlo import export_run
from slm_jax.models.lm import CausalLM
from slm_jax.rundir.params import save_params

TEXT = "the quick brown fox jumps over the lazy dog. "
PROMPT = "the lazy fox jumps"  # 18 tokens: one prefill chunk of 16, then 2 decode steps
N_NEW = 64


def make_run(run_dir, preset, **model):
    """A run directory (config, char tokenizer, step-0 checkpoint) around a randomly initialised tiny model."""
    tok = CharTokenizer.from_text(TEXT)
    raw = {
        "name": preset,
        "model": {
            "preset": preset,
            "n_layers": 3,
            "d_model": 32,
            "n_heads": 2,
            "vocab_size": tok.vocab_size,
            "mixers": {"local_attention": {"window": 16}},
            "init_std": 0.3,
            **model,
        },
    }
    cfg = config_from_dict(raw)
    params = CausalLM(cfg.model).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    save_tokenizer(tok, run_dir)
    save_params(run_dir, cfg, params, 0)
    return cfg, params, tok


def reference_logits(cfg, params, prompt, tokens):
    """The JAX model's last logits: after the whole prompt, then after each of ``tokens`` decoded one at a time."""
    model = CausalLM(cfg.model)
    cache = model.init_cache(1, len(prompt) + len(tokens))
    step = jax.jit(lambda p, x, pos, c: model.apply(p, x, pos, c))
    logits, cache = step(params, jnp.asarray([prompt]), jnp.arange(len(prompt))[None], cache)
    out = [logits[0, -1]]
    for i, t in enumerate(tokens[:-1]):
        logits, cache = step(params, jnp.asarray([[t]]), jnp.asarray([[len(prompt) + i]]), cache)
        out.append(logits[0, -1])
    return np.stack(out)


@pytest.mark.parametrize("preset, n_layers", [("transformer", 1), ("griffin", 3), ("mamba", 1)])
def test_exported_steps_reproduce_the_model(tmp_path, preset, n_layers):
    cfg, params, tok = make_run(tmp_path / "run", preset, n_layers=n_layers)  # griffin: RG-LRU, RG-LRU, local attention
    manifest = export_run(tmp_path / "run", tmp_path / "export", max_len=96, prefill_chunk=16)
    assert manifest["constant_memory"] == (preset != "transformer")
    prompt = [int(i) for i in tok.encode(PROMPT)]
    new, seen = Artifact(tmp_path / "export").generate(prompt, N_NEW)
    ref = reference_logits(cfg, params, prompt, new)
    assert float(np.max(np.abs(np.stack(seen) - ref))) < 1e-4
    assert new == [int(i) for i in ref.argmax(-1)]


@pytest.mark.parametrize(
    "fmt, forbidden", [("stablehlo", ("slm_jax",)), ("onnx", ("slm_jax", "jax", "jaxlib", "flax"))]
)
def test_runner_is_standalone_and_matches_slm_generate(tmp_path, capsys, fmt, forbidden):
    """The runner loads an export without slm_jax (and, for ONNX, without jax) and prints slm generate's text."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    make_run(tmp_path / "run", "transformer", n_layers=1)
    assert (
        main(["export", str(tmp_path / "run"), "--format", fmt, "--out", str(tmp_path / "export"), "--max-len", "96"])
        == 0
    )
    assert (
        main(
            [
                "generate",
                str(tmp_path / "run"),
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                str(N_NEW),
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    expected = capsys.readouterr().out.splitlines()[-1]
    runner = Path(__file__).parents[2] / "slm_jax" / "export" / "runner.py"
    code = (
        "import runpy, sys\n"
        "main = runpy.run_path(sys.argv[1])['main']\n"
        "assert main([sys.argv[2], '--prompt', sys.argv[3], '--max-new-tokens', sys.argv[4]]) == 0\n"
        f"loaded = [m for m in sys.modules if m.split('.')[0] in {forbidden!r}]\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(runner), str(tmp_path / "export"), PROMPT, str(N_NEW)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == expected


def test_quantized_run_exports(tmp_path, capsys):
    make_run(tmp_path / "run", "mamba", n_layers=1)
    assert main(["quantize", str(tmp_path / "run"), "--bits", "4", "--out", str(tmp_path / "q4")]) == 0
    assert main(["export", str(tmp_path / "q4"), "--out", str(tmp_path / "export"), "--max-len", "32"]) == 0
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["quant_bits"] == 4 and "uint8" in manifest["weights"]["dtypes"]
    new, _ = Artifact(tmp_path / "export").generate([1, 2, 3], 5)
    assert len(new) == 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "tflite"], "not supported; use --format stablehlo or --format onnx"),
        (["--max-len", "8", "--prefill-chunk", "16"], "--prefill-chunk in [1, max-len]"),
    ],
)
def test_export_errors(tmp_path, capsys, extra, message):
    make_run(tmp_path / "run", "transformer", n_layers=1)
    code = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
