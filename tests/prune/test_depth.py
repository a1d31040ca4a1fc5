"""Depth pruning: the ranking metrics, the shorter pattern, and both parameter layouts (scan_layers on and off)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slm_jax.config import config_from_dict
from slm_jax.inference.run import load_run
from slm_jax.models.lm import CausalLM
from slm_jax.prune import depth
from slm_jax.prune.importance import depth_scores
from slm_jax.prune.options import prune_options
from slm_jax.prune.run import prune_run
from slm_jax.rundir.params import save_params
from tests.prune.runs import TEXT, make_run, perturbed_params

VOCAB = 11
BATCHES = [np.asarray(jax.random.randint(jax.random.key(3), (2, 12), 0, VOCAB))]


def test_shortest_pattern_and_candidate_groups():
    assert depth.shortest_pattern(("rglru", "attention", "rglru", "attention", "rglru")) == ("rglru", "attention")
    assert depth.shortest_pattern(("rglru", "rglru", "attention")) == ("rglru", "rglru", "attention")
    assert depth.candidate_groups(6, 3, "period") == [[0, 1, 2], [3, 4, 5]]
    assert depth.kept_layers([[0, 1], [2, 3], [4, 5]], np.array([0.3, 0.1, 0.2]), 4) == [0, 1, 4, 5]


def test_removal_loss_equals_the_loss_of_the_model_without_that_layer():
    cfg = config_from_dict({"model": {"vocab_size": VOCAB, "d_model": 16, "n_heads": 2, "n_layers": 3}})
    params = perturbed_params(cfg)
    scores = depth_scores(cfg.model, params, BATCHES, [[0], [1], [2]], "loss")

    def loss(model_cfg, p):
        logits, _ = CausalLM(model_cfg).apply(p, jnp.asarray(BATCHES[0][:, :-1]))
        return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, BATCHES[0][:, 1:])))

    base = loss(cfg.model, params)
    two = dataclasses.replace(cfg.model, n_layers=2)
    for i in range(3):
        without = depth.keep_layer_params(params, [j for j in range(3) if j != i])
        np.testing.assert_allclose(scores[i], loss(two, without) - base, rtol=1e-4, atol=1e-5)


def test_a_pass_through_period_is_dropped_in_both_layouts_and_the_output_is_unchanged(tmp_path):
    text = tmp_path / "corpus.txt"
    for scan in (False, True):
        run = make_run(
            tmp_path,
            [
                "model.preset=griffin",
                "model.n_layers=6",
                "model.mixers.local_attention.window=4",
                f"model.scan_layers={scan}",
            ],
            name=f"run_{scan}",
        )
        source = load_run(run)
        params = jax.tree.map(np.array, jax.device_get(source.params))
        # Silence the second period (layers 3-5): each block then passes its input through unchanged.
        for j in range(3):
            if scan:
                block = params["params"]["periods"][f"block_{j}"]
                leaves = block["mlp"]["down"]["kernel"][1], block["mixer"]["o" if j == 2 else "out_proj"]["kernel"][1]
            else:
                block = params["params"][f"layers_{3 + j}"]
                leaves = block["mlp"]["down"]["kernel"], block["mixer"]["o" if j == 2 else "out_proj"]["kernel"]
            for leaf in leaves:
                leaf[...] = 0.0
        save_params(run, source.cfg, params, 8)
        for metric in ("cosine", "loss"):
            out = tmp_path / f"pruned_{scan}_{metric}"
            sets = ["prune.n_layers=3", "prune.depth_unit=period", f"prune.depth_metric={metric}"]
            summary = prune_run(run, out, prune_options(None, sets), calib=str(text), calib_tokens=64)
            assert summary["kept_layers"] == [0, 1, 2]
            pruned = load_run(out)
            assert pruned.cfg.model.layer_pattern == ("rglru", "rglru", "local_attention")
            assert pruned.cfg.model.n_layers == 3 and pruned.cfg.model.scan_layers == scan
            toks = jnp.asarray(source.tokenizer.encode(TEXT[:20]))[None]
            want = source.model.apply(params, toks)[0]
            np.testing.assert_allclose(pruned.model.apply(pruned.params, toks)[0], want, atol=1e-5)
