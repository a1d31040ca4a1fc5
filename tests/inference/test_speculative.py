"""Speculative decoding: exact cache rollback for every mixer kind, greedy equals target-only greedy,
sampled tokens follow the target, errors."""

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
from slm_jax.inference.speculative import (
    _draft_rollback,
    _feed,
    _propose,
    _target_rollback,
    speculate,
    speculative_generate,
    start,
)
from slm_jax.models.lm import CausalLM
from tests.tiny_runs import train_text_run


def _model(preset: str, seed: int, vocab: int = 23, init_std: float = 0.2, **fields):
    cfg = config_from_dict(
        {
            "model": {
                **fields,
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
    """(tokens i32[b, n], drafts kept in each round as a list)."""
    chunks = list(speculative_generate(target, tp, draft, dp, prompt, n, **kw))
    return np.concatenate([c[0] for c in chunks], axis=1), np.concatenate([c[1] for c in chunks]).tolist()


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


# Every way a cache is rolled back: attention rewound by slot (global, and a ring of window 4 that
# wraps, rewindable for K = 3 but not K = 4; also stacked by scan_layers), int8 attention, and
# stacked / re-run states for RG-LRU, Mamba, Mamba-2, short convolutions and Hyena's history.
ROLLBACK_MODELS = {
    "transformer": ("transformer", {}),
    "attention+ring": ("transformer", {"layer_pattern": ["attention", "local_attention"]}),
    "scanned attention+ring": ("transformer", {"layer_pattern": ["attention", "local_attention"], "scan_layers": True}),
    "int8 attention": ("transformer", {"cache_quant": "int8"}),
    "griffin": ("griffin", {}),
    "mamba": ("mamba", {}),
    "mamba2": ("mamba2", {"n_heads": 4}),
    "lfm2_like": ("lfm2_like", {}),
    "hyena": ("hyena", {}),
}


def _close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(a, b, atol=1e-5)
        else:  # slot positions and counters exactly; int8 leaves up to a rounding step
            np.testing.assert_allclose(a, b, atol=int(a.dtype == jnp.int8))


ROLLBACK_CASES = [(name, 4) for name in ROLLBACK_MODELS] + [
    (name, 3) for name in ["attention+ring", "scanned attention+ring", "griffin"]
]


@pytest.mark.parametrize("name, k", ROLLBACK_CASES)
def test_rollback_equals_feeding_the_kept_tokens(name, k):
    """For every kept count n, the rolled-back caches equal the starting cache fed only the n kept
    tokens: in one call for the target (as it verifies), one token at a time for the draft (as it
    proposes; an int8 cache makes the two differ by its rounding)."""
    preset, fields = ROLLBACK_MODELS[name]
    model, params = _model(preset, 0, **fields)
    feed = jax.jit(lambda cache, tokens, at: _feed(model, params, cache, tokens, at))
    cache = feed(model.init_cache(1, 20), PROMPT[:, :-1], 0)
    position = PROMPT.shape[1] - 1
    propose = jax.jit(lambda c, last: _propose(model, params, c, last, position, jax.random.key(1), k, (1.0, 0, 1.0)))
    drafts, _, end, stacked = propose(cache, PROMPT[:, -1])
    fed = jnp.concatenate([PROMPT[:, -1:], drafts], axis=1)
    verified = feed(cache, fed, position)
    rollback_target = jax.jit(lambda n: _target_rollback(model, params, cache, verified, fed, position, n, k))
    rollback_draft = jax.jit(lambda n: _draft_rollback(cache, end, stacked, n, k))
    stepped = cache
    for n in range(1, k + 2):
        stepped = feed(stepped, fed[:, n - 1 : n], position + n - 1)
        _close(rollback_target(n), feed(cache, fed[:, :n], position))
        _close(rollback_draft(n), stepped)


def test_chunks_stream_the_same_tokens():
    target, tp = _model("transformer", 0)
    draft, dp = _model("griffin", 1)
    tp, dp = _share_io(tp), _share_io(dp)
    whole, kept = _run(target, tp, draft, dp, PROMPT, 13, k=3, temperature=1.0, seed=4)
    chunks = list(speculative_generate(target, tp, draft, dp, PROMPT, 13, k=3, temperature=1.0, seed=4, chunk=5))
    assert len(chunks) == 3 and all(c[0].shape[1] >= 5 for c in chunks[:2])
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks], axis=1), whole)
    assert np.concatenate([c[1] for c in chunks]).tolist() == kept


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
    state = start(target, tp, draft, dp, prompt, 4, k, 0)
    fed, accepted, out, *_ = jax.jit(speculate, static_argnums=(0, 2, 9, 10, 11, 12))(
        target, tp, draft, dp, state.target_cache, state.draft_cache, state.last, 3, jax.random.key(0), k, 1.0, 0, 1.0
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
