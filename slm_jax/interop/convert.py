"""``from_hf(hf_dir, run_dir)`` and ``to_hf(run_dir, hf_dir)``: whole-checkpoint conversion.

Import writes an ordinary run directory, so ``slm eval``, ``slm generate`` and ``slm train``
(fine-tuning, further training: it resumes from the imported step-0 checkpoint) work on it:

  config.yaml        the resolved config (model section from config.json, other sections default)
  tokenizer.json     the model's own tokenizer, when the Hugging Face directory has one
  hf_source.json     the source's model_type and architectures (the default export family)
  checkpoints/0/     params, a fresh AdamW state, step 0 (Orbax, like every run)

It is written atomically: into a temporary sibling directory, renamed when complete.

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

from slm_jax.config import Config, config_from_dict
from slm_jax.data.tokenizers import load_tokenizer
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.interop.families import (
    bamba,
    bert,
    falcon_h1,
    gpt_neox,
    granitemoehybrid,
    jamba,
    lfm2,
    mamba,
    modernbert,
    nemotron_h,
    olmo_hybrid,
    qwen3_next,
    recurrent_gemma,
    transformer,
    xlstm,
    zamba2,
)
from slm_jax.interop.hf_config import load_hf_config
from slm_jax.interop.hf_tokenizer import export_run_tokenizer
from slm_jax.interop.hf_weights import Tensors
from slm_jax.interop.safetensors_io import read_checkpoint, write_checkpoint
from slm_jax.models.lm import abstract_params, unstack_layers
from slm_jax.modules.linear import dtype_of
from slm_jax.rundir.checkpoint import read_run_config
from slm_jax.rundir.files import (
    SOURCE_FILE,
    TOKENIZER_FILE,
    check_new_run_dir,
    copy_run_files,
    new_run_dir,
    write_config,
)
from slm_jax.rundir.params import restore_params, save_params
from slm_jax.training.optim import make_optimizer

FAMILIES: dict[str, ModuleType] = {
    "llama": transformer,
    "qwen2": transformer,
    "qwen3": transformer,
    "phi3": transformer,
    "gemma": transformer,
    "gemma2": transformer,
    "gpt_neox": gpt_neox,
    "lfm2": lfm2,
    "bamba": bamba,
    "granitemoehybrid": granitemoehybrid,
    "falcon_h1": falcon_h1,
    "jamba": jamba,
    "nemotron_h": nemotron_h,
    "olmo_hybrid": olmo_hybrid,
    "qwen3_next": qwen3_next,
    "qwen3_5": qwen3_next,
    "qwen3_5_text": qwen3_next,
    "mamba": mamba,
    "mamba2": mamba,
    "recurrent_gemma": recurrent_gemma,
    "bert": bert,
    "distilbert": bert,
    "modernbert": modernbert,
    "xlstm": xlstm,
    "zamba2": zamba2,
}


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
    shape = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
    wanted = shape(abstract_params(cfg.model))
    if jax.tree.structure(wanted) != jax.tree.structure(shape(params)) or wanted != shape(params):
        raise CheckpointError(
            "The converted parameters do not match the model's tree; this is a converter bug, please report it."
        )


def from_hf(hf_dir: str | Path, run_dir: str | Path, name: str | None = None) -> dict:
    """Convert a Hugging Face model directory into a new run directory; returns a summary dict.

    The run is written atomically (rundir/files.py): a failure leaves no ``run_dir`` behind.
    """
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    check_new_run_dir(run_dir)
    cfg, params = import_hf(hf_dir, name or run_dir.name)
    params = jax.tree.map(lambda a: np.asarray(a, dtype_of(cfg.model.param_dtype)), params)
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps, params)  # a fresh state, so `slm train` can go on
    raw = json.loads((hf_dir / "config.json").read_text())
    source = {
        "model_type": raw["model_type"],
        "architectures": raw.get("architectures"),
        "source": str(hf_dir.absolute()),
    }
    tokenizer = None
    with new_run_dir(run_dir) as tmp:
        write_config(tmp, cfg)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1))
        copy_run_files(hf_dir, tmp, (TOKENIZER_FILE,))
        if (tmp / TOKENIZER_FILE).is_file():
            tokenizer = load_tokenizer(tmp / TOKENIZER_FILE)  # fails now, not at generate time, if unreadable
        save_params(tmp, cfg, params, 0, optimizer.init(params))
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    return {
        "run_dir": str(run_dir),
        "family": raw["model_type"],
        "params": n_params,
        "layer_pattern": list(cfg.model.pattern),
        "tokenizer": repr(tokenizer)
        if tokenizer
        else "none (the source has no tokenizer.json; copy one into the run to use slm generate)",
    }


# --------------------------------------------------------------------------- export


def infer_family(m) -> str:
    """The Hugging Face family that expresses ModelConfig ``m`` most directly."""
    layers = set(m.layers)
    if not m.causal:  # the masked-LM encoders
        return "bert" if m.norm_position == "post" else "modernbert"
    if "rglru" in layers:
        return "recurrent_gemma"
    if m.shared_block.n_blocks:  # weight-shared attention blocks between Mamba-2 layers
        return "zamba2"
    if layers in ({"mamba"}, {"mamba2"}):
        return layers.pop()
    if falcon_h1.LAYER in layers:
        return "falcon_h1"
    if layers == {"mlstm"}:
        return "xlstm"
    if nemotron_h.MLP_LAYER in layers or not m.mixer_mlp:  # single-op layers
        return "nemotron_h"
    if "short_conv" in layers:
        return "lfm2"
    if "gated_deltanet" in layers and m.reordered_norms:
        return "olmo_hybrid"
    if "gated_deltanet" in layers:
        return "qwen3_next" if m.moe.n_experts else "qwen3_5_text"
    if "mamba" in layers and m.mixers.mamba.dt_bc_norms:
        return "jamba"
    if m.moe.n_experts or m.residual_scale != 1.0 or m.logit_divisor != 1.0:
        return "granitemoehybrid"
    if "mamba2" in layers:
        return "bamba"
    if m.post_norms:
        return "gemma2"
    if m.parallel_residual or m.norm == "layer":
        return "gpt_neox"
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
