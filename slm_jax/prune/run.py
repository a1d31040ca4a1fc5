"""``prune_run(run_dir, out_dir, options)``: a trained run directory -> a smaller run directory.

Steps: check the requested shape (prune/plan.py), read the run's latest (or best) parameters per layer, rank layers
and drop the least important (prune/depth.py), then rank channels by activation importance on ``calib_tokens``
calibration tokens of ``calib`` (a text file, a prepared directory in the run's vocabulary, or by default the run's
own training data; slm_jax/data/run_tokens.py) and keep the most important (prune/width.py).

The output is an ordinary run directory, written atomically (rundir/files.py): ``config.yaml`` states the new shapes,
``tokenizer.json`` is copied, and ``checkpoints/S/`` holds params and step S (no optimizer state). ``slm eval``,
``generate``, ``quantize`` and ``export`` read it; ``slm train`` / ``slm distill`` recover it with
``train.init_from``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from slm_jax.config import Config, config_from_dict, replace
from slm_jax.data.run_tokens import calibration_batches, run_text_tokens
from slm_jax.errors import CheckpointError, ConfigError
from slm_jax.inference.run import load_run
from slm_jax.models import accounting
from slm_jax.models.lm import abstract_params, stack_layers, unstack_layers
from slm_jax.prune import depth, linear, width
from slm_jax.prune.importance import activation_stats, depth_scores, mlm_batches
from slm_jax.prune.options import PruneOptions
from slm_jax.prune.plan import ATTENTION, Shapes, inner_mixer, plan, wrapped
from slm_jax.rundir.checkpoint import read_run_config
from slm_jax.rundir.files import check_new_run_dir, copy_run_files, new_run_dir, write_config
from slm_jax.rundir.params import save_params


def prune_run(
    run_dir: str | Path,
    out_dir: str | Path,
    options: PruneOptions,
    calib: str = "",
    calib_tokens: int = 32_768,
    best: bool = False,
) -> dict:
    """Prune the latest (or best) checkpoint of ``run_dir`` into the new run directory ``out_dir``; a summary."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = config_from_dict(read_run_config(run_dir))
    if cfg.model.quant.bits:
        raise CheckpointError(f"{run_dir} is quantized; prune the float run it was made from, then quantize.")
    shapes, changes = plan(cfg.model, options)
    check_new_run_dir(out_dir)
    run = load_run(run_dir.resolve(), best)  # Orbax restores only from absolute paths
    flat = dataclasses.replace(cfg.model, scan_layers=False, remat=False)
    params = unstack_layers(run.params, cfg.model) if cfg.model.scan_layers else run.params
    params = jax.tree.map(np.asarray, jax.device_get(params))
    batches = []
    if any(shapes.changes(f.name) for f in dataclasses.fields(Shapes)):
        tokens = run_text_tokens(run.cfg, run.tokenizer, calib, "train", "--calib")
        batches = calibration_batches(tokens, calib_tokens, run.cfg.train.seq_len)
    n_calib = int(sum(b.size for b in batches))
    if not flat.causal:  # an encoder is calibrated on masked windows, as it is trained
        batches = mlm_batches(batches, run.cfg.train, flat.vocab_size)

    # ---------------------------------------------------------------- depth
    kept = list(range(flat.n_layers))
    if shapes.changes("n_layers"):
        groups = depth.candidate_groups(flat.n_layers, len(flat.pattern), options.depth_unit)
        scores = depth_scores(flat, params, batches, groups, options.depth_metric)
        kept = depth.kept_layers(groups, scores, shapes.n_layers[1])
        params = depth.keep_layer_params(params, kept)
        layers = tuple(flat.layers[i] for i in kept)
        flat = dataclasses.replace(flat, layer_pattern=depth.shortest_pattern(layers), n_layers=len(layers))
        # Only layer 0 may lack a mixer norm (ModernBERT): without it, every kept layer has one.
        flat = dataclasses.replace(flat, first_mixer_norm=flat.first_mixer_norm or kept[0] > 0)

    # ---------------------------------------------------------------- width
    width_fields = [f.name for f in dataclasses.fields(Shapes) if f.name != "n_layers"]
    if any(shapes.changes(name) for name in width_fields):
        stats = activation_stats(flat, params, batches, options.importance)
        params = _prune_width(flat, params, stats, shapes)

    new_cfg = replace(
        cfg,
        **changes,
        # Named after its directory, so that `slm train/distill PRUNED/config.yaml` never defaults to the source's run.
        **{
            "name": out_dir.name,
            "model.layer_pattern": flat.pattern,
            "model.n_layers": flat.n_layers,
            "model.first_mixer_norm": flat.first_mixer_norm,
            "train.init_from": "",
        },
    )
    _check_shapes(new_cfg, params)
    if new_cfg.model.scan_layers:
        params = stack_layers(params, new_cfg.model)
    with new_run_dir(out_dir) as tmp:
        write_config(tmp, new_cfg)
        copy_run_files(run_dir, tmp)
        save_params(tmp, new_cfg, params, run.step)
    return {
        "run_dir": str(out_dir),
        "source": str(run_dir),
        "step": run.step,
        "kept_layers": kept,
        "shapes": {f.name: list(getattr(shapes, f.name)) for f in dataclasses.fields(Shapes)},
        "params": {"before": accounting.param_count(cfg.model), "after": accounting.param_count(new_cfg.model)},
        "calibration_tokens": n_calib,
    }


def _prune_width(cfg, params: dict, stats: dict, shapes: Shapes) -> dict:
    """Every width ``shapes`` changes, each ranked by ``stats`` (importance.activation_stats) of ``cfg``'s model."""
    p = dict(params["params"])
    embed_keep = None
    if shapes.changes("d_model"):
        residual = [k for k in stats if k in ("final_norm", "embed_norm") or k.endswith(("/mixer_norm", "/mlp_norm"))]
        embed_keep = width.top_indices(sum(stats[k] for k in residual), shapes.d_model[1])
    for i, name in enumerate(cfg.layers):
        layer = dict(p[f"layers_{i}"])
        where = f"layers_{i}"
        if shapes.changes("d_ff"):
            layer["mlp"] = width.prune_mlp(layer["mlp"], width.top_indices(stats[f"{where}/mlp/down"], shapes.d_ff[1]))
        mixer, at = layer["mixer"], f"{where}/mixer/"
        if wrapped(cfg, name):  # an encoder's two directions (mixers/bidirectional.py), each ranked on its own
            both = {
                c: _prune_mixer(cfg, name, mixer[c], stats, f"{at}{c}/", shapes, embed_keep) for c in ("fwd", "bwd")
            }
            layer["mixer"] = {**mixer, **both}
        else:
            layer["mixer"] = _prune_mixer(cfg, name, mixer, stats, at, shapes, embed_keep)
        p[f"layers_{i}"] = layer
    params = {"params": p}
    if shapes.changes("d_model"):
        params = width.prune_embedding(params, cfg.layers, embed_keep, shapes.d_model[0])
    return params


def _prune_mixer(cfg, name: str, mixer: dict, stats: dict, at: str, shapes: Shapes, embed_keep) -> dict:
    """The widths ``shapes`` changes in one mixer ``name`` whose Linears' input importances are ``stats[at + leaf]``
    (e.g. leaf "out_proj")."""
    stat = lambda leaf: stats[at + leaf]
    if name in ATTENTION and (shapes.changes("heads") or shapes.changes("kv_heads")):
        h, k = shapes.heads[0], shapes.kv_heads[0]
        heads, groups = width.heads_to_keep(stat("o").reshape(h, -1).sum(-1), k, shapes.heads[1], shapes.kv_heads[1])
        return width.prune_attention(mixer, heads, groups, h, k)
    if name == "rglru" and shapes.changes("rglru_width"):
        n_blocks = mixer["gate_a"]["kernel"].shape[0]
        keep = width.top_per_group(stat("out_proj"), n_blocks, shapes.rglru_width[1] // n_blocks)
        return width.prune_rglru(mixer, keep)
    if name == "mamba" and shapes.changes("mamba_width"):
        return width.prune_mamba(mixer, width.top_indices(stat("out_proj"), shapes.mamba_width[1]))
    if name == "mamba2" and shapes.changes("mamba2_heads"):
        opts = cfg.mixers.mamba2
        h = shapes.mamba2_heads[0]
        head_scores = stat("out_proj").reshape(h, -1).sum(-1)
        heads = width.top_per_group(head_scores, opts.n_groups, shapes.mamba2_heads[1] // opts.n_groups)
        return width.prune_mamba2(mixer, heads, opts.head_dim)
    if name in linear.HEADED + linear.TIED:
        return _prune_linear(cfg, name, mixer, stat(linear.out_proj(name)), shapes, embed_keep)
    return mixer


def _prune_linear(cfg, name: str, mixer: dict, scores: np.ndarray, shapes: Shapes, embed_keep) -> dict:
    """The heads (``la_heads``) and d_model-tied channels (prune/linear.py) of one linear-attention or convolution
    mixer ``name`` of ``cfg``, ranked by ``scores`` (the input activations of its output projection); a mixer whose
    channels are the residual stream's (``linear.RESIDUAL``) keeps the embedding channels ``embed_keep``."""
    module = inner_mixer(cfg, name)
    if name in linear.HEADED and shapes.changes("la_heads"):
        h = shapes.la_heads[0]
        keep = width.top_indices(scores.reshape(h, -1).sum(-1), shapes.la_heads[1])
        mixer = linear.take(mixer, linear.head_layout(name, module), keep)
    if name in linear.TIED and shapes.changes("d_model"):
        groups, layout = linear.tied_layout(name, module)
        if name == "retnet":  # no activation isolates a query/key channel pair: rank by the weights
            scores = linear.retnet_pair_scores(mixer, layout)
        new = shapes.d_model[1] * linear.n_units(layout) // shapes.d_model[0]
        keep = embed_keep if name in linear.RESIDUAL else width.top_per_group(scores, groups, new // groups)
        mixer = linear.take(mixer, layout, keep)
    return mixer


def _check_shapes(cfg: Config, params: dict) -> None:
    """The pruned params must be exactly the tree the new config builds; else name the first mismatch."""
    flat = dataclasses.replace(cfg.model, scan_layers=False)
    want = jax.tree_util.tree_flatten_with_path(abstract_params(flat))[0]
    have = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, spec in want:
        leaf = have.get(path)
        if leaf is None or tuple(leaf.shape) != tuple(spec.shape):
            names = [str(getattr(k, "key", k)) for k in path][1:]
            layer = f" (a {cfg.model.layers[int(names[0][7:])]} layer)" if names[0].startswith("layers_") else ""
            raise ConfigError(
                f"Pruning changes {'/'.join(names)}{layer} in a way slm prune does not follow (that mixer's widths "
                "depend on the pruned sizes); leave prune.d_model and prune.n_heads at 0 for this model."
            )
