"""Pseudo-perplexity (Salazar et al. 2020): the batched, chunked scoring equals a one-position-at-a-time loop, an
untrained encoder scores about the vocabulary size, and training lowers it (through `slm eval`)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.eval.pseudo_perplexity import pseudo_log_likelihood, pseudo_perplexity
from slm_jax.inference.run import load_run
from slm_jax.models.lm import CausalLM
from tests.tiny_runs import train_text_run


def encoder(preset, vocab, **model):
    raw = {"preset": preset, "vocab_size": vocab, "d_model": 24, "n_heads": 2, "n_layers": 3, **model}
    return CausalLM(config_from_dict({"model": raw}).model)


def loop_reference(model, params, tokens, lengths):
    """-log p(token i | row with token i masked), one full forward pass per position."""
    out = []
    for row, n in zip(tokens, lengths):
        for i in range(n):
            masked = row.copy()
            masked[i] = model.cfg.vocab_size
            logits, _ = model.apply(params, jnp.asarray(masked[None]), lengths=jnp.asarray([n]))
            out.append(-float(jax.nn.log_softmax(logits[0, i])[row[i]]))
    return np.asarray(out)


@pytest.mark.parametrize("preset", ["distilbert_like", "hybrid_encoder"])
def test_batched_scoring_equals_a_per_position_loop(preset):
    model = encoder(preset, 19, init_std=0.3)
    tokens = np.array(jax.random.randint(jax.random.key(0), (3, 7), 0, 19), np.int32)
    lengths = np.asarray([7, 4, 1], np.int32)
    tokens[1, 4:] = 0
    tokens[2, 1:] = 0
    params = model.init(jax.random.key(1), jnp.asarray(tokens))
    want = loop_reference(model, params, tokens, lengths)
    got = pseudo_log_likelihood(model, params, tokens, lengths, chunk=5)  # 12 scored tokens: 3 chunks, one padded
    assert got.shape == (12,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want) > 0.1  # the positions differ: a misplaced mask or label would show
    result = pseudo_perplexity(model, params, tokens, lengths, chunk=5, unit="char")
    assert result["val_pseudo_perplexity"] == pytest.approx(math.exp(want.mean()), rel=1e-5)
    assert result["val_pseudo_bits_per_char"] == pytest.approx(want.mean() / math.log(2), rel=1e-5)
    assert (result["val_pseudo_tokens"], result["val_pseudo_seqs"]) == (12, 3)


def test_untrained_encoder_is_near_uniform_and_a_decoder_is_refused():
    vocab = 64
    model = encoder("bimamba_like", vocab)
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (2, 16), 0, vocab), np.int32)
    params = model.init(jax.random.key(3), jnp.asarray(tokens))
    pppl = pseudo_perplexity(model, params, tokens)["val_pseudo_perplexity"]
    assert 0.9 * vocab < pppl < 1.1 * vocab, pppl
    decoder = CausalLM(config_from_dict({"model": {"preset": "transformer", "vocab_size": vocab}}).model)
    with pytest.raises(ConfigError, match="needs a masked-LM encoder"):
        pseudo_perplexity(decoder, params, tokens)


def test_slm_eval_reports_pseudo_perplexity_which_training_lowers(tmp_path, capsys):
    tiny = ["model.preset=distilbert_like", "train.objective=mlm", "model.n_layers=2", "model.d_model=32"]
    tiny += ["model.n_heads=2", "train.batch_size=8", "train.seq_len=16", "train.steps=40", "optim.warmup_steps=5"]
    tiny += ["optim.lr=3e-3", "eval.every=0", "eval.batches=1", "checkpoint.every=40"]
    run_dir = train_text_run(tmp_path, "abc defgh xab hgx ", 60, tiny)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--batches", "2", "--pppl-seqs", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_pseudo_seqs"] == 3 and result["val_pseudo_tokens"] == 3 * 16
    assert result["val_pseudo_bits_per_char"] == pytest.approx(math.log2(result["val_pseudo_perplexity"]), rel=1e-6)
    run = load_run(run_dir)
    vocab = run.cfg.model.vocab_size
    windows = np.asarray([run.tokenizer.encode("defgh xab hgx ab")], np.int32)
    untrained = run.model.init(jax.random.key(0), jnp.asarray(windows))
    before = pseudo_perplexity(run.model, untrained, windows)["val_pseudo_perplexity"]
    after = pseudo_perplexity(run.model, run.params, windows)["val_pseudo_perplexity"]
    assert 0.8 * vocab < before < 1.25 * vocab and after < 0.8 * before, (vocab, before, after)
    assert result["val_pseudo_perplexity"] < 0.8 * vocab  # 6.5 of 10 when written
    assert main(["eval", str(run_dir), "--pppl-seqs", "-1"]) == 2
    assert "--pppl-seqs must be 0 (no pseudo-perplexity) or more, got -1." in capsys.readouterr().err
