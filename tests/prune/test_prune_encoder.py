"""slm prune on encoders (model.causal: false): every encoder preset and the BERT / ModernBERT layouts, their
encoder-only leaves (plain MLP, learned positions, embedding norm, LayerNorm biases, MLM head transform, head bias,
the mask-token row, the fwd / bwd copies of a wrapped mixer), MLM calibration, and the pruned run as a run."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from slm_jax.config import config_from_dict, load_yaml, replace, to_yaml
from slm_jax.errors import ConfigError
from slm_jax.inference.run import load_run
from slm_jax.models.lm import CausalLM
from slm_jax.presets import PRESETS, is_encoder
from slm_jax.prune.importance import activation_stats, depth_scores, mlm_batches
from slm_jax.prune.options import prune_options
from slm_jax.prune.plan import plan
from slm_jax.prune.run import _check_shapes, _prune_width
from slm_jax.rundir.params import save_params
from tests.encoders.test_bert_options import BERT as BERT_LAYOUT
from tests.encoders.test_bert_options import MODERNBERT as MODERNBERT_LAYOUT
from tests.prune.runs import make_run, perturbed_params
from tests.tiny_runs import run_cli

VOCAB = 11
# tests/encoders/test_bert_options.py's layouts, with room for 16 positions and a wider window.
BERT = {k: v for k, v in BERT_LAYOUT.items() if k != "n_layers"} | {"max_positions": 16}
MODERNBERT = MODERNBERT_LAYOUT | {"mixers": {"local_attention": {"window": 4}}}
# Every encoder preset, bert_like and modernbert_like in their BERT / ModernBERT layouts (every encoder-only leaf),
# bimamba_like with its two directions concatenated and projected (the combine leaf).
ENCODERS = {
    "distilbert_like": {"preset": "distilbert_like"},
    "bert_layout": BERT,
    "modernbert_layout": MODERNBERT,
    "bimamba_concat": {
        "preset": "bimamba_like",
        "bidirectional_combine": "concat",
        "mixers": {"mamba": {"d_state": 3}},
    },
    "hybrid_encoder": {"preset": "hybrid_encoder", "n_layers": 3, "mixers": {"rglru": {"n_heads": 2, "width": 16}}},
}
TRAIN = config_from_dict({"train": {"seq_len": 12}}).train
BATCHES = mlm_batches([np.asarray(jax.random.randint(jax.random.key(5), (2, 12), 0, VOCAB))], TRAIN, VOCAB)


def config(model):
    base = {"vocab_size": VOCAB, "d_model": 16, "n_heads": 4, "n_layers": 2, "d_ff": 24}
    return config_from_dict({"model": {**base, **model}})


def as_numpy(params):
    return jax.tree.map(np.array, jax.device_get(params))  # writable copies


def logits(cfg, params):
    return np.asarray(jax.jit(CausalLM(cfg.model).apply)(params, jnp.asarray(BATCHES[0]["inputs"]))[0])


def width_sets(cfg, d_model, d_ff, heads, rglru, mamba):
    """``--set`` options for every width option ``cfg``'s model takes."""
    m, sets = cfg.model, [f"prune.d_model={d_model}"]
    sets += [f"prune.d_ff={d_ff}"] if m.mlp != "none" else []
    sets += [f"prune.n_heads={heads}"] if {"attention", "local_attention"} & set(m.layers) else []
    sets += [f"prune.rglru_width={rglru}"] if "rglru" in m.layers else []
    sets += [f"prune.mamba_expand={mamba}"] if "mamba" in m.layers else []
    return sets


def pruned(cfg, params, stats, sets):
    """(pruned Config, pruned params) of ``params`` of ``cfg`` ranked by ``stats``, as ``--set`` options ask."""
    shapes, changes = plan(cfg.model, prune_options(None, sets))
    new, out = replace(cfg, **changes), _prune_width(cfg.model, params, stats, shapes)
    _check_shapes(new, out)
    return new, out


def test_every_encoder_preset_is_covered():
    assert {m["preset"] for m in ENCODERS.values()} == {n for n in PRESETS if is_encoder(n)}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_keeping_everything_is_the_identity_and_each_width_prunes_to_its_shape(name):
    cfg = config(ENCODERS[name])
    params = as_numpy(perturbed_params(cfg))
    stats = activation_stats(cfg.model, params, BATCHES, "mean_sq")
    same, kept = pruned(cfg, params, stats, width_sets(cfg, 16, 24, 4, 16, 2))  # every size the model's own
    jax.tree.map(np.testing.assert_array_equal, kept, params)
    np.testing.assert_array_equal(logits(same, kept), logits(cfg, params))

    new, small = pruned(cfg, params, stats, width_sets(cfg, 12, 8, 2, 8, 1))
    m, p = new.model, small["params"]
    assert (m.d_model, p["embed"]["embedding"].shape) == (12, (VOCAB + 1, 12))  # the mask-token row stays
    for i, layer in enumerate(m.layers):
        block = p[f"layers_{i}"]
        if m.mlp != "none":
            assert m.ff_width == 8 and block["mlp"]["down"]["kernel"].shape == (8, 12)
        if layer in ("attention", "local_attention"):
            assert (m.n_heads, m.head_dim) == (2, 4) and block["mixer"]["o"]["kernel"].shape == (8, 12)
        for copy in ("fwd", "bwd") if layer in ("rglru", "mamba") else ():
            assert block["mixer"][copy]["out_proj"]["kernel"].shape == (8 if layer == "rglru" else 12, 12)
        if m.bidirectional_combine == "concat":
            assert block["mixer"]["combine"]["kernel"].shape == (24, 12)
        norms = [leaf for key, norm in block.items() if key.endswith("_norm") for leaf in norm.values()]
        assert norms and all(leaf.shape == (12,) for leaf in norms)  # scales, and LayerNorm biases
    if m.position == "learned":
        assert p["pos_embed"]["embedding"].shape == (16, 12)
    if m.mlm_head_transform:
        assert p["mlm_transform"]["kernel"].shape == (12, 12) and p["mlm_transform_norm"]["scale"].shape == (12,)
    out = logits(new, small)
    assert out.shape == (2, 12, VOCAB) and np.isfinite(out).all()
    assert config_from_dict(load_yaml(to_yaml(new), "config.yaml")) == new


def test_silent_mlp_channels_and_heads_of_a_bert_layout_are_the_ones_removed():
    cfg = config(BERT)
    params = as_numpy(perturbed_params(cfg))
    dead_ff, dead_heads, e = np.array([2, 9, 17, 20]), [1, 2], 4
    v = np.concatenate([2 * 16 + h * e + np.arange(e) for h in dead_heads])  # value columns after q and k (16 each)
    for i in range(2):
        layer = params["params"][f"layers_{i}"]
        for leaf in ("kernel", "bias"):  # gelu(0) = 0 and zero values: nothing reaches down / o from them
            layer["mlp"]["up"][leaf][..., dead_ff] = 0.0
            layer["mixer"]["qkv"][leaf][..., v] = 0.0
    stats = activation_stats(cfg.model, params, BATCHES, "mean_sq")
    new, small = pruned(cfg, params, stats, ["prune.d_ff=20", "prune.n_heads=2"])
    np.testing.assert_allclose(logits(new, small), logits(cfg, params), rtol=1e-5, atol=1e-5)
    full, kept = params["params"]["layers_1"], small["params"]["layers_1"]
    np.testing.assert_array_equal(kept["mlp"]["up"]["bias"], np.delete(full["mlp"]["up"]["bias"], dead_ff))
    np.testing.assert_array_equal(kept["mixer"]["o"]["kernel"], full["mixer"]["o"]["kernel"][np.r_[0:4, 12:16]])


def test_each_direction_of_a_bidirectional_mamba_keeps_its_own_live_channels():
    cfg = config({"preset": "bimamba_like", "d_model": 8, "n_layers": 1, "mixers": {"mamba": {"d_state": 3}}})
    params = as_numpy(perturbed_params(cfg))
    dead = {"fwd": np.arange(8, 16), "bwd": np.arange(0, 16, 2)}  # 8 of 16 inner channels, different per direction
    for copy, channels in dead.items():  # x and z zero (zero conv bias): silu(z) = 0 silences the channel
        params["params"]["layers_0"]["mixer"][copy]["in_proj"]["kernel"][:, np.r_[channels, 16 + channels]] = 0
    stats = activation_stats(cfg.model, params, BATCHES, "mean_sq")
    new, small = pruned(cfg, params, stats, ["prune.mamba_expand=1"])
    np.testing.assert_allclose(logits(new, small), logits(cfg, params), rtol=1e-5, atol=1e-5)
    for copy, channels in dead.items():
        d_full = params["params"]["layers_0"]["mixer"][copy]["D"]
        np.testing.assert_array_equal(small["params"]["layers_0"]["mixer"][copy]["D"], np.delete(d_full, channels))


def test_encoder_calibration_is_masked_and_its_removal_loss_is_the_mlm_loss_without_the_layer():
    cfg = config({"preset": "distilbert_like", "n_layers": 3})
    params = perturbed_params(cfg)
    assert (BATCHES[0]["inputs"] == VOCAB).any()  # the mask id, as in training
    scores = depth_scores(cfg.model, params, BATCHES, [[0], [1], [2]], "loss")

    def mlm_loss(model_cfg, p):
        b = BATCHES[0]
        out, _ = CausalLM(model_cfg).apply(
            p, jnp.asarray(b["inputs"]), logit_positions=jnp.asarray(b["label_positions"])
        )
        return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, b["labels"])))

    base = mlm_loss(cfg.model, params)
    short = config({"preset": "distilbert_like"})
    without_1 = {"params": {**params["params"], "layers_1": params["params"]["layers_2"]}}
    del without_1["params"]["layers_2"]
    np.testing.assert_allclose(scores[1], mlm_loss(short.model, without_1) - base, rtol=1e-4, atol=1e-5)


def test_an_identity_first_layer_is_dropped_and_the_pruned_modernbert_run_is_an_encoder_run(tmp_path, capsys):
    model = [(f"model.{k}", v) for k, v in MODERNBERT.items() if k != "mixers"]
    source = make_run(tmp_path, [*model, "model.mixers.local_attention.window=4", "train.objective=mlm"])
    run = load_run(source)
    params = as_numpy(run.params)
    layer0 = params["params"]["layers_0"]
    layer0["mixer"]["o"]["kernel"][:] = 0.0  # pre-norm: layer 0 adds nothing, its cosine score is 0
    layer0["mlp"]["down"]["kernel"][:] = 0.0
    save_params(source, run.cfg, params, 8)
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(
        capsys, "prune", source, "--out", out, "--calib", tmp_path / "corpus.txt", "--calib-tokens", 32,
        "--set", "prune.n_layers=2",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["kept_layers"] == [1, 2]
    pruned_run = load_run(out)
    m = pruned_run.cfg.model
    assert (m.n_layers, tuple(m.layer_pattern), m.first_mixer_norm) == (2, ("local_attention",), True)
    tokens = jnp.asarray(pruned_run.tokenizer.encode("the cat sat"))[None]  # every kept layer keeps its mixer norm
    np.testing.assert_allclose(
        pruned_run.model.apply(pruned_run.params, tokens)[0], run.model.apply(params, tokens)[0], rtol=1e-5, atol=1e-5
    )
    code, stdout, err = run_cli(capsys, "eval", out, "--batches", 1, "--pppl-seqs", 1)
    assert code == 0 and np.isfinite(json.loads(stdout)["val_pseudo_perplexity"]), err
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": t, "label": t[0]}) + "\n" for t in ("the cat", "a dog", "the mat")))
    code, _, err = run_cli(capsys, "finetune", out, "--task", "classify", "--data", task, "--out", tmp_path / "clf",
                           "--steps", 1)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", out, "--out", tmp_path / "exp", "--batch", 1)
    assert code == 0 and (tmp_path / "exp").is_dir(), err


@pytest.mark.parametrize(
    "model,sets,message",
    [
        (ENCODERS["distilbert_like"], ["prune.n_heads=8"], "keeps more attention heads than the model has (4)"),
        (ENCODERS["hybrid_encoder"], ["prune.rglru_width=9"], "divisible by the RG-LRU gate heads (2)"),
        (ENCODERS["bimamba_concat"], ["prune.n_heads=2"], "the model has no attention layer"),
        ({"preset": "bert_like", "layer_pattern": ["rwkv7"]}, ["prune.d_model=10"], "does not split into the 4"),
        (
            {"preset": "bert_like", "layer_pattern": ["mamba2"], "mixers": {"mamba2": {"head_dim": 8}}},
            ["prune.d_model=10"],
            "not a whole number of heads",
        ),
    ],
)
def test_impossible_encoder_shapes_are_one_sentence(model, sets, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        plan(config(model).model, prune_options(None, sets))
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")
