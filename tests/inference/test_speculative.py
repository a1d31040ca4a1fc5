"""Speculative decoding: greedy equals target-only greedy, sampled tokens follow the target, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chi2

from slm_jax.cli import main
from slm_jax.config import config_from_dict
from slm_jax.errors import ConfigError
from slm_jax.inference.generate import generate
from slm_jax.inference.sampling import sample, token_probs
from slm_jax.inference.speculative import advance, speculate, speculative_generate
from slm_jax.models.lm import CausalLM
from tests.tiny_runs import train_text_run


def _model(preset: str, seed: int, vocab: int = 23, init_std: float = 0.2):
    cfg = config_from_dict(
        {
            "model": {
                "preset": preset,
                "vocab_size": vocab,
                "d_model": 16,
                "n_heads": 2,
                "n_layers": 3,
                "tie_embeddings": False,
                "init_std": init_std,
                "mixers": {"local_attention": {"window": 4}},  # the ring buffer wraps
            }
        }
    ).model
    model = CausalLM(cfg)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))


def _share_io(params, vocab: int = 23, width: int = 16):
    """The same random embedding and head in both models: a shared bigram map plus each model's
    own small blocks, so a draft of another architecture agrees often but not always, and
    rounds end at every position (random models with their own heads almost never agree)."""
    embed = jax.random.normal(jax.random.key(7), (vocab, width))
    head = jax.random.normal(jax.random.key(8), (width, vocab)) / np.sqrt(width)
    return {"params": {**params["params"], "embed": {"embedding": embed}, "head": {"kernel": head}}}


def _run(target, tp, draft, dp, prompt, n, **kw):
    rounds = list(speculative_generate(target, tp, draft, dp, prompt, n, **kw))
    return np.concatenate([r[0] for r in rounds], axis=1), [r[1] for r in rounds]


PROMPT = np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int32)


@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize(
    "target_preset, draft_preset", [("transformer", "griffin"), ("griffin", "transformer"), ("mamba", "transformer")]
)
def test_greedy_equals_target_greedy(target_preset, draft_preset, k):
    target, tp = _model(target_preset, 0)
    draft, dp = _model(draft_preset, 1)
    tp, dp = _share_io(tp), _share_io(dp)
    want = np.concatenate(list(generate(target, tp, PROMPT, 16, temperature=0.0)), axis=1)
    got, accepted = _run(target, tp, draft, dp, PROMPT, 16, k=k, temperature=0.0)
    np.testing.assert_array_equal(got, want)
    assert max(accepted) > 0 and min(accepted) < k  # both full/partial acceptance and rollbacks happened


def test_identical_draft_accepts_everything():
    target, tp = _model("griffin", 0)
    prompt = np.array([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]], np.int32)  # batch 2
    want = np.concatenate(list(generate(target, tp, prompt, 12, temperature=0.0)), axis=1)
    for temperature in (0.0, 1.0):
        got, accepted = _run(target, tp, target, tp, prompt, 12, k=3, temperature=temperature, seed=5)
        assert got.shape == (2, 12) and accepted == [3, 3, 3]
        if temperature == 0.0:
            np.testing.assert_array_equal(got, want)


# ---- the sampled rule is exact: a 5-token vocabulary, many independent rows, chi-square tests ----
V = 5
SHORT = np.array([[1, 3, 0, 2]], np.int32)


def _target_probs(model, params, prefix: list[int], temperature: float, top_k: int) -> np.ndarray:
    """The target's next-token distribution after ``prefix``, written out here (not token_probs)."""
    logits = np.asarray(model.apply(params, jnp.array([prefix], jnp.int32))[0][0, -1], np.float64) / temperature
    if top_k:
        logits[np.argsort(logits)[:-top_k]] = -np.inf
    p = np.exp(logits - logits.max())
    return p / p.sum()


def _chi2_pvalue(pairs) -> float:
    """p-value that every (observed counts, probabilities) pair is a multinomial draw; zero-probability
    tokens must never be observed."""
    stat, df = 0.0, 0
    for counts, probs in pairs:
        assert counts[probs == 0].sum() == 0, "a token outside the target's support was generated"
        expected = counts.sum() * probs[probs > 0]
        stat += float(((counts[probs > 0] - expected) ** 2 / expected).sum())
        df += int((probs > 0).sum()) - 1
    return float(chi2.sf(stat, df))


def _pair():
    """A transformer target and a Mamba draft whose heads are scaled up so that both are peaked and
    far apart (total variation 0.3 to 0.9 between their next-token distributions)."""
    sharpen = lambda p: {"params": {**p["params"], "head": {"kernel": 15 * p["params"]["head"]["kernel"]}}}
    target, tp = _model("transformer", 0, vocab=V, init_std=0.5)
    draft, dp = _model("mamba", 1, vocab=V, init_std=0.5)
    return target, sharpen(tp), draft, sharpen(dp)


def _prefix_pvalue(model, params, tokens: np.ndarray, lengths: np.ndarray) -> float:
    """p-value that tokens[r, j] follows p(. | SHORT, tokens[r, :j]) in every row r with j < lengths[r]."""
    pairs = []
    for j in range(tokens.shape[1]):
        for prefix in itertools.product(range(V), repeat=j):
            rows = (lengths > j) & (tokens[:, :j] == prefix).all(axis=1)
            if rows.sum() >= 50:
                probs = _target_probs(model, params, list(SHORT[0]) + list(prefix), 1.0, 0)
                pairs.append((np.bincount(tokens[rows, j], minlength=V), probs))
    return _chi2_pvalue(pairs)


def test_one_round_follows_the_target():
    """In one round each output token, given the ones before it and that the round reached it,
    follows the target: the first, the one after a kept draft, and the bonus token after K.
    The drafts themselves (what "always accept" would emit) fail the same test."""
    target, tp, draft, dp = _pair()
    rows, k = 20000, 2
    prompt = np.repeat(SHORT, rows, axis=0)
    caches = advance(target, tp, draft, dp, target.init_cache(rows, 8), draft.init_cache(rows, 8), prompt[:, :-1], 0)
    fed, accepted, out, *_ = speculate(
        target, tp, draft, dp, *caches, prompt[:, -1], 3, jax.random.key(0), k, 1.0, 0, 1.0
    )
    drafts, accepted, out = np.asarray(fed[:, 1:]), np.asarray(accepted), np.asarray(out)
    assert np.bincount(accepted, minlength=k + 1).min() > 1000  # every way a round can end is common
    assert _prefix_pvalue(target, tp, out, accepted + 1) > 1e-4
    assert _prefix_pvalue(target, tp, drafts, np.full(rows, k)) < 1e-12


def test_generated_pairs_follow_the_target_with_temperature_and_top_k():
    """Joint law of the first two generated tokens, through rollbacks and a second round."""
    target, tp, draft, dp = _pair()
    rows, temperature, top_k = 4000, 0.8, 3
    got, _ = _run(
        target, tp, draft, dp, np.repeat(SHORT, rows, axis=0), 2, k=3, temperature=temperature, top_k=top_k, seed=1
    )
    p1 = _target_probs(target, tp, list(SHORT[0]), temperature, top_k)
    joint = np.concatenate(
        [p1[x] * _target_probs(target, tp, list(SHORT[0]) + [x], temperature, top_k) for x in range(V)]
    )
    assert _chi2_pvalue([(np.bincount(got[:, 0] * V + got[:, 1], minlength=V * V), joint)]) > 1e-4


def test_token_probs_is_what_sample_draws_from():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_allclose(token_probs(logits, 1.0, 0, 0.7), [[0.625, 0.375, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(token_probs(logits, 1.0, 3, 1.0), [[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]], rtol=1e-6)
    np.testing.assert_array_equal(token_probs(logits, 0.0, 0, 1.0), [[1, 0, 0, 0]])
    many = jnp.repeat(jax.random.normal(jax.random.key(0), (1, V)), 20000, axis=0)
    for settings in [(0.7, 0, 1.0), (1.3, 3, 1.0), (1.0, 0, 0.8)]:
        counts = np.bincount(np.asarray(sample(many, jax.random.key(1), *settings)), minlength=V)
        assert _chi2_pvalue([(counts, np.asarray(token_probs(many[0], *settings), np.float64))]) > 1e-4


def test_bad_arguments():
    target, tp = _model("transformer", 0)
    draft, dp = _model("transformer", 1, vocab=V)
    with pytest.raises(ConfigError, match=f"vocabulary of {V} tokens but the target has 23"):
        next(speculative_generate(target, tp, draft, dp, PROMPT, 4))
    with pytest.raises(ConfigError, match="draft-tokens"):
        next(speculative_generate(target, tp, target, tp, PROMPT, 4, k=0))
    with pytest.raises(ConfigError, match="prompt is empty"):
        next(speculative_generate(target, tp, target, tp, np.zeros((1, 0), np.int32), 4))


def test_cli_generate_with_a_draft(capsys, tmp_path):
    common = [
        "model.d_model=32",
        "model.n_heads=2",
        "train.steps=5",
        "train.batch_size=4",
        "train.seq_len=32",
        "eval.every=5",
        "eval.batches=1",
        "checkpoint.every=5",
    ]
    target = train_text_run(tmp_path, "the cat sat on the mat. ", 50, [*common, "model.n_layers=2"], name="target")
    draft = train_text_run(
        tmp_path, "the cat sat on the mat. ", 50, [*common, "model.n_layers=1", "model.preset=hawk"], name="draft"
    )
    capsys.readouterr()
    args = ["generate", str(target), "--prompt", "the ", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(args) == 0
    want = capsys.readouterr().out
    assert main([*args, "--draft", str(draft), "--draft-tokens", "3"]) == 0
    out = capsys.readouterr()
    assert out.out == want and "of draft tokens accepted" in out.err and "tokens/s" in out.err
