"""The DistilBERT recipe in slm distill: every-other-layer init copies teacher layers 0, 2, 4, ...; each term of
the triple loss moves the gradient exactly when its weight is nonzero; an encoder student distils from an encoder
teacher of another architecture on masked windows; what cannot work is one sentence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.config import config_from_dict
from slm_jax.distill.loss import cosine_loss, make_triple_loss_fn
from slm_jax.distill.student_init import every_other_layer
from slm_jax.distill.train import distill
from slm_jax.errors import ConfigError
from slm_jax.inference.run import load_run
from slm_jax.models.lm import CausalLM, unstack_layers
from slm_jax.training.mlm import mask_batch
from slm_jax.training.tracking import read_metrics
from slm_jax.training.train import train

VOCAB = 13


def model_cfg(preset="distilbert_like", **model):
    raw = {"preset": preset, "vocab_size": VOCAB, "d_model": 16, "n_heads": 2, "n_layers": 2, **model}
    return config_from_dict({"model": raw}).model


def init(cfg, seed=0):
    return CausalLM(cfg).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("scan", [False, True])
def test_every_other_layer_copies_exactly_teacher_layers_0_2_4(scan):
    t_cfg, s_cfg = model_cfg(n_layers=5), model_cfg(n_layers=3, scan_layers=scan)
    teacher = init(t_cfg)
    student = every_other_layer(teacher, t_cfg, s_cfg)
    flat = unstack_layers(student, s_cfg)["params"] if scan else student["params"]
    assert sorted(flat) == ["embed", "final_norm", "layers_0", "layers_1", "layers_2"]
    for i in range(3):
        jax.tree.map(np.testing.assert_array_equal, flat[f"layers_{i}"], teacher["params"][f"layers_{2 * i}"])
    for name in ("embed", "final_norm"):
        jax.tree.map(np.testing.assert_array_equal, flat[name], teacher["params"][name])
    tokens = jnp.arange(8)[None] % VOCAB  # the student runs with what it was given
    assert CausalLM(s_cfg).apply(student, tokens)[0].shape == (1, 8, VOCAB)


@pytest.mark.parametrize(
    "student, message",
    [
        (model_cfg(n_layers=3), "a 3-layer student needs a teacher of at least 5 layers, and the teacher has 4"),
        (model_cfg(n_layers=2, d_model=24), "its d_model is 16 and the student's 24"),
        (model_cfg("hybrid_encoder", n_layers=2), "cannot start the student's layers_0 from the teacher's layers_0"),
    ],
)
def test_a_student_that_cannot_take_every_other_layer_is_one_sentence(student, message):
    t_cfg = model_cfg(n_layers=4)
    with pytest.raises(ConfigError, match=message):
        every_other_layer(init(t_cfg), t_cfg, student)


def masked_batch(seed=0):
    tc = config_from_dict({"model": {"preset": "bert_like"}, "train": {"objective": "mlm", "seq_len": 12}}).train
    windows = np.random.default_rng(seed).integers(0, VOCAB, (3, 13))
    return {k: jnp.asarray(v) for k, v in mask_batch(windows, tc, VOCAB).items()}


def test_each_triple_loss_term_moves_the_gradient_only_when_weighted():
    # Teacher and student differ in architecture: attention teacher, bidirectional RG-LRU + attention student.
    t_cfg, s_cfg = model_cfg(n_layers=2), model_cfg("hybrid_encoder", n_layers=3)
    teacher, student = CausalLM(t_cfg), CausalLM(s_cfg)
    t_params, s_params = init(t_cfg, 1), init(s_cfg, 2)
    batch = masked_batch()

    def grad(weights):
        loss_fn = make_triple_loss_fn(student, teacher, 2.0, *weights)
        (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(s_params, batch, t_params)
        return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]), metrics

    terms = [grad(w)[0] for w in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))]
    for g in terms:
        assert float(jnp.abs(g).max()) > 1e-6
    for i in range(3):  # no term is another's multiple: each brings its own direction
        for j in range(i + 1, 3):
            cos = jnp.dot(terms[i], terms[j]) / (jnp.linalg.norm(terms[i]) * jnp.linalg.norm(terms[j]))
            assert abs(float(cos)) < 0.99
    zero, metrics = grad((0.0, 0.0, 0.0))
    assert float(jnp.abs(zero).max()) == 0.0
    assert float(metrics["kl"]) > 0 and float(metrics["cos"]) == 0.0  # alpha_cos = 0 skips the hidden states
    total, metrics = grad((5.0, 2.0, 1.0))
    np.testing.assert_allclose(total, 5.0 * terms[0] + 2.0 * terms[1] + terms[2], rtol=1e-4, atol=1e-6)
    assert 0.0 < float(metrics["cos"]) < 2.0


def test_cosine_loss_is_zero_for_parallel_states_and_one_for_orthogonal():
    h = jax.random.normal(jax.random.key(0), (2, 3, 4))
    assert float(cosine_loss(h, 3.0 * h)) == pytest.approx(0.0, abs=1e-6)
    a, b = jnp.array([[[1.0, 0.0]]]), jnp.array([[[0.0, 2.0]]])
    assert float(cosine_loss(a, b)) == pytest.approx(1.0)


TEXT = "".join(f"{w} {v}\n" for w, v in zip(["to be", "or not", "that is"] * 80, ["so", "ho", "lo", "no"] * 60))


def raw(path, **model):
    return {
        "name": "enc",
        "model": {"preset": "distilbert_like", "n_layers": 3, "d_model": 16, "n_heads": 2, **model},
        "data": {"path": str(path), "cache_dir": str(path.parent / "cache")},
        "train": {"steps": 8, "batch_size": 4, "seq_len": 12, "log_every": 4, "objective": "mlm"},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "eval": {"every": 0, "batches": 1},
        "checkpoint": {"every": 100},
        "distill": {"loss": "triple", "init": "every_other_layer", "alpha_ce": 5.0, "alpha_mlm": 2.0, "alpha_cos": 1.0},
    }


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distilbert")
    (root / "corpus.txt").write_text(TEXT)
    train(config_from_dict(raw(root / "corpus.txt")), root / "teacher", progress=False)
    return root


def test_distilbert_recipe_runs_on_masked_windows_from_an_encoder_teacher(teacher):
    r = raw(teacher / "corpus.txt", n_layers=2)
    r["optim"].update(lr=1e-9, min_lr=1e-10)  # the student barely moves, so its start is visible after the run
    summary = distill(config_from_dict(r), teacher / "teacher", teacher / "student", progress=False)
    assert summary["step"] == 8 and np.isfinite(summary["loss"])
    logged = [m for m in read_metrics(teacher / "student") if "cos" in m]
    assert logged and all(np.isfinite(m["cos"]) and np.isfinite(m["kl"]) for m in logged)
    student, t = load_run(teacher / "student"), load_run(teacher / "teacher")
    for i in range(2):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
            student.params["params"][f"layers_{i}"],
            t.params["params"][f"layers_{2 * i}"],
        )


@pytest.mark.parametrize(
    "model, distill_keys, message",
    [
        ({"n_layers": 3}, {}, "a 3-layer student needs a teacher of at least 5 layers"),
        ({"n_layers": 1, "d_model": 24}, {"init": ""}, "teacher's d_model is 16 and the student's 24"),
        ({"n_layers": 1}, {"precomputed": "somewhere"}, "needs the teacher run itself"),
    ],
)
def test_recipe_mistakes_are_one_sentence_and_write_nothing(teacher, model, distill_keys, message):
    r = raw(teacher / "corpus.txt", **model)
    r["distill"].update(distill_keys)
    with pytest.raises(ConfigError, match=message):
        distill(config_from_dict(r), teacher / "teacher", teacher / "bad", progress=False)
    assert not (teacher / "bad" / "config.yaml").exists()


def test_a_causal_teacher_for_a_masked_lm_student_is_refused(teacher):
    r = raw(teacher / "corpus.txt")
    r["model"] = {"preset": "transformer", "n_layers": 1, "d_model": 16, "n_heads": 2}
    r["train"]["objective"] = "clm"
    train(config_from_dict(r), teacher / "causal", progress=False)
    student = raw(teacher / "corpus.txt", n_layers=1)
    student["distill"]["init"] = ""
    with pytest.raises(ConfigError, match="is a causal model"):
        distill(config_from_dict(student), teacher / "causal", teacher / "bad2", progress=False)
