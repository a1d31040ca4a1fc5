"""``from_hf(hf_dir, run_dir)`` and ``to_hf(run_dir, hf_dir)``: whole-checkpoint conversion.

Import writes an ordinary run directory, so ``slm eval``, ``slm generate`` and ``slm train``
(fine-tuning, further training: it resumes from the imported step-0 checkpoint) work on it:

  config.yaml        the resolved config (model section from config.json, other sections default)
  tokenizer.json     the model's own tokenizer, when the Hugging Face directory has one
  hf_source.json     the source's model_type and architectures (the default export family)
  checkpoints/0/     params, a fresh AdamW state, step 0 (Orbax, like every run)

Export writes ``config.json``, ``model.safetensors`` (or shards plus an index) and
``tokenizer.json`` (the imported one, or our char/byte tokenizer converted). Both directions
read only JSON and safetensors; neither needs torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import jax
import numpy as np

from slm_jax.config import Config, config_from_dict, to_dict, to_yaml
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.interop.families import mamba, recurrent_gemma, transformer
from slm_jax.interop.hf_config import load_hf_config
from slm_jax.interop.hf_tokenizer import TOKENIZER_FILE, export_run_tokenizer, load_run_tokenizer
from slm_jax.interop.hf_weights import Tensors
from slm_jax.interop.safetensors_io import read_checkpoint, write_checkpoint
from slm_jax.models.lm import CausalLM, unstack_layers
from slm_jax.modules.linear import dtype_of

FAMILIES: dict[str, ModuleType] = {
    "llama": transformer,
    "qwen2": transformer,
    "qwen3": transformer,
    "phi3": transformer,
    "gemma": transformer,
    "mamba": mamba,
    "mamba2": mamba,
    "recurrent_gemma": recurrent_gemma,
}
SOURCE_FILE = "hf_source.json"


def _family(name: str, where: str) -> ModuleType:
    if name not in FAMILIES:
        raise CheckpointError(
            f"{where}: model_type {name!r} is not supported; supported families: {', '.join(FAMILIES)}."
        )
    return FAMILIES[name]


# --------------------------------------------------------------------------- import


def import_hf(hf_dir: str | Path, name: str = "imported") -> tuple[Config, dict]:
    """(our Config, ``{"params": ...}`` as float32 numpy) for a Hugging Face model directory."""
    hf_dir = Path(hf_dir)
    c = load_hf_config(hf_dir)
    module = _family(c.model_type, c.where)
    model = module.config_from_hf(c)
    c.finish()
    cfg = config_from_dict({"name": name, "model": model})
    tensors = Tensors(read_checkpoint(hf_dir), str(hf_dir))
    params = module.params_from_hf(tensors, cfg.model, c.raw)
    tensors.finish()
    _check_tree(cfg, params)
    return cfg, params


def _check_tree(cfg: Config, params: dict) -> None:
    """The converted tree must have exactly the model's parameter paths and shapes (a converter bug otherwise)."""
    model = CausalLM(cfg.model)
    wanted = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 1), np.int32)))
    shape = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
    if jax.tree.structure(shape(wanted)) != jax.tree.structure(shape(params)) or shape(wanted) != shape(params):
        raise CheckpointError(
            "The converted parameters do not match the model's tree; this is a converter bug, please report it."
        )


def initial_state(cfg: Config, params: dict) -> dict:
    """A train state (see training/step.py) around given parameters: fresh optimizer state, step 0."""
    from slm_jax.training.optim import make_optimizer
    from slm_jax.training.step import init_state

    model = CausalLM(cfg.model)
    tc = cfg.train
    dtype = dtype_of(cfg.model.param_dtype)
    params = jax.tree.map(lambda a: jax.numpy.asarray(a, dtype), params)
    optimizer, _ = make_optimizer(cfg.optim, tc.steps, params)
    abstract = jax.eval_shape(lambda: init_state(model, optimizer, tc.seed, tc.seq_len))
    _, run_key = jax.random.split(jax.random.key(tc.seed))  # the same run key as init_state
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": jax.numpy.zeros((), jax.numpy.int32),
        "rng": jax.random.key_data(run_key),
    }
    if jax.tree.structure(abstract) != jax.tree.structure(state):
        raise CheckpointError(
            "The imported train state does not match training/step.init_state; this is a converter bug, please report it."
        )
    return state


def from_hf(hf_dir: str | Path, run_dir: str | Path, name: str | None = None) -> dict:
    """Convert a Hugging Face model directory into a new run directory; returns a summary dict."""
    from slm_jax.training.checkpoint import Checkpointer

    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if (run_dir / "checkpoints").exists() or (run_dir / "config.yaml").exists():
        raise CheckpointError(f"{run_dir} already holds a run; pass a new output directory.")
    cfg, params = import_hf(hf_dir, name or run_dir.name)
    state = initial_state(cfg, params)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    raw = json.loads((hf_dir / "config.json").read_text())
    source = {
        "model_type": raw["model_type"],
        "architectures": raw.get("architectures"),
        "source": str(hf_dir.absolute()),
    }
    (run_dir / SOURCE_FILE).write_text(json.dumps(source, indent=1))
    tokenizer = None
    if (hf_dir / TOKENIZER_FILE).is_file():
        (run_dir / TOKENIZER_FILE).write_bytes((hf_dir / TOKENIZER_FILE).read_bytes())
        tokenizer = load_run_tokenizer(run_dir / TOKENIZER_FILE)  # fails now, not at generate time, if unreadable
    ck = cfg.checkpoint
    with Checkpointer(run_dir, ck.every, ck.keep, ck.keep_best, async_save=False) as ckpt:
        ckpt.save(0, state, {}, to_dict(cfg), force=True)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    return {
        "run_dir": str(run_dir),
        "family": raw["model_type"],
        "params": n_params,
        "layer_pattern": list(cfg.model.pattern),
        "tokenizer": repr(tokenizer)
        if tokenizer
        else "none (the source has no tokenizer.json; slm generate/eval need one)",
    }


# --------------------------------------------------------------------------- export


def infer_family(m) -> str:
    """The Hugging Face family that expresses ModelConfig ``m`` most directly."""
    layers = set(m.layers)
    if "rglru" in layers:
        return "recurrent_gemma"
    if layers in ({"mamba"}, {"mamba2"}):
        return layers.pop()
    if m.qk_norm:
        return "qwen3"
    if m.norm_offset == 1.0 and m.mlp == "geglu":
        return "gemma"
    if m.rotary_fraction != 1.0:
        return "phi3"
    if "local_attention" in layers or m.mixers.attention.window or (m.qkv_bias and not m.attn_out_bias):
        return "qwen2"
    return "llama"


def export_hf(cfg: Config, params: dict, family: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json mapping, tensors) for our ``cfg`` and ``params`` as ``family`` (default: inferred)."""
    m = cfg.model
    family = family or infer_family(m)
    if family not in FAMILIES:
        raise ConfigError(f"Unknown export family {family!r}; use one of {', '.join(FAMILIES)}.")
    if m.scan_layers:
        params = unstack_layers(params, m)
    module = FAMILIES[family]
    module.check_exportable(m, family)
    return module.config_to_hf(m, family), module.params_to_hf(jax.device_get(params), m, family)


def to_hf(
    run_dir: str | Path,
    hf_dir: str | Path,
    family: str | None = None,
    best: bool = False,
    max_shard_bytes: int = 2 * 2**30,
) -> dict:
    """Export a run's latest (or best) checkpoint as a Hugging Face model directory; returns a summary."""
    from slm_jax.inference.run import restore_params
    from slm_jax.training.checkpoint import read_run_config

    run_dir, hf_dir = Path(run_dir), Path(hf_dir)
    if (hf_dir / "config.json").exists():
        raise CheckpointError(f"{hf_dir} already holds a model (config.json); pass a new output directory.")
    cfg = config_from_dict(read_run_config(run_dir))
    if family is None and (run_dir / SOURCE_FILE).is_file():
        family = json.loads((run_dir / SOURCE_FILE).read_text()).get("model_type")
    params, step = restore_params(run_dir, cfg, best)
    hf_config, tensors = export_hf(cfg, params, family)
    hf_dir.mkdir(parents=True, exist_ok=True)
    files = write_checkpoint(hf_dir, tensors, max_shard_bytes)
    (hf_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    has_tokenizer = export_run_tokenizer(run_dir, hf_dir)
    return {
        "hf_dir": str(hf_dir),
        "family": hf_config["model_type"],
        "step": step,
        "files": files,
        "tokenizer": has_tokenizer,
    }
