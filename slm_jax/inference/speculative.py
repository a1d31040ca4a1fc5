"""Speculative decoding: a small draft model proposes, the target model verifies in one pass.

Leviathan, Kalman & Matias 2023 (arXiv:2211.17192); Chen et al. 2023 (arXiv:2302.01318).
Each round the draft samples K tokens one at a time from its cache; the target scores
``[last, d_1, ..., d_K]`` (K + 1 tokens) in one parallel, prefill-style call; draft token
d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection one token
is drawn from norm(max(0, p_i - q_i)), and when all K are kept a bonus token is drawn from
p_{K+1}. The output then follows the target's own distribution exactly (after the same
temperature / top-k / top-p filtering as ``sampling.sample``). Greedy decoding is the case
where p and q are one-hot at their argmax: keep while the draft's argmax is the target's,
so the output is token-identical to target-only greedy decoding.

Cache rollback: snapshot and re-run. Caches are plain pytrees of immutable arrays, so a round
starts from caches holding everything before ``last`` and keeps them, without a copy, as
snapshots. When the round keeps all K drafts, the caches it returned (both models fed
``last, d_1..d_K``) are already right; otherwise both models re-run the n kept tokens
``[last, d_1..d_{n-1}]`` from their snapshots in one prefill-style call. This is exact for
every mixer -- a recurrent state (RG-LRU, Mamba) cannot be cut back by position, and a
sliding-window ring buffer has overwritten slots that truncation could not bring back -- at
the cost of one extra forward pass of n <= K tokens per model in a partially accepted round.
Position-based truncation would save that pass only for models made of global attention
alone, so it is left out in favour of one exact path for every architecture.

Compilation: one jitted round per (models, K, sampling settings), the draft's steps a
``lax.scan`` inside it; the re-run of both models is one jitted call per kept length n in
1..K (at most K shapes, each compiled once). The Python loop runs once per round: two
dispatches and one small device-to-host copy.

Batch: every row must keep the same number of tokens, so a round keeps n = min over rows of
(accepted + 1) tokens in every row. Any prefix of a round's output is an exact sample (each
token follows the target given the tokens before it, whatever stops the round), so this
stays exact; the batch just advances at the pace of its least-accepting row. Batch 1 is the
intended use.
"""

from functools import partial
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.inference.sampling import token_probs


def accept(p: Array, q: Array, drafts: Array, key: Array) -> tuple[Array, Array]:
    """The rejection rule on target probs p f32[b, K+1, v], draft probs q f32[b, K, v], drafts i32[b, K].

    Returns (accepted i32[b]: leading drafts kept, out i32[b, K+1]): ``out[:, :accepted]`` are
    the kept drafts and ``out[:, accepted]`` the token drawn from the residual (or, when all K
    were kept, the bonus token from p_{K+1}); entries after it are not part of the output.
    """
    b, k = drafts.shape
    key_u, key_y = jax.random.split(key)
    p_d = jnp.take_along_axis(p[:, :k], drafts[..., None], axis=-1)[..., 0]  # [b, K]
    q_d = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]  # [b, K], > 0: d_i was drawn from q_i
    keep = jax.random.uniform(key_u, (b, k)) * q_d < p_d  # u < p/q: probability min(1, p/q)
    accepted = jnp.sum(jnp.cumprod(keep, axis=1), axis=1).astype(jnp.int32)  # [b]
    # Residual at the first rejection; after all K, q is taken as 0 so the residual is p_{K+1}.
    q_ext = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)  # [b, K+1, v]
    at = lambda a: jnp.take_along_axis(a, accepted[:, None, None], axis=1)[:, 0]  # [b, v] at row `accepted`
    p_a = at(p)
    residual = jnp.maximum(p_a - at(q_ext), 0.0)
    # All zero only if p_a == q_a, where rejection has probability 0; guard against rounding.
    residual = jnp.where(jnp.sum(residual, axis=-1, keepdims=True) > 0, residual, p_a)
    y = jax.random.categorical(key_y, jnp.log(residual), axis=-1).astype(jnp.int32)  # [b]
    padded = jnp.concatenate([drafts, drafts[:, -1:]], axis=1)  # [b, K+1]
    out = jnp.where(jnp.arange(k + 1) == accepted[:, None], y[:, None], padded)
    return accepted, out


def _feed(model: nn.Module, params: PyTree, cache: PyTree, tokens: Array, start: Array) -> PyTree:
    """``cache`` after tokens i32[b, n] at positions start, start + 1, ..."""
    b, n = tokens.shape
    positions = jnp.broadcast_to(start + jnp.arange(n, dtype=jnp.int32), (b, n))
    # The logits are not needed: score one position only to skip most of the head.
    _, cache = model.apply(params, tokens, positions, cache, logit_positions=jnp.zeros((b, 1), jnp.int32))
    return cache


@partial(jax.jit, static_argnums=(0, 2))
def advance(target, target_params, draft, draft_params, target_cache, draft_cache, tokens, start):
    """Both caches after tokens i32[b, n] at positions start..: the prompt, or a rollback's re-run."""
    return _feed(target, target_params, target_cache, tokens, start), _feed(
        draft, draft_params, draft_cache, tokens, start
    )


@partial(jax.jit, static_argnums=(0, 2, 9, 10, 11, 12))
def speculate(
    target,
    target_params,
    draft,
    draft_params,
    target_cache,
    draft_cache,
    last,
    position,
    key,
    k,
    temperature,
    top_k,
    top_p,
):
    """One round from caches holding everything before ``last`` i32[b] (at ``position``).

    Returns (fed i32[b, K+1] = [last, d_1..d_K], accepted i32[b], out i32[b, K+1], target_cache,
    draft_cache, next key); the returned caches hold all of ``fed``.
    """
    b = last.shape[0]
    key, key_draft, key_accept = jax.random.split(key, 3)
    sampling = (temperature, top_k, top_p)

    def draft_step(carry, step_key):
        cache, token, pos = carry
        logits, cache = draft.apply(draft_params, token[:, None], jnp.broadcast_to(pos, (b, 1)), cache)
        q = token_probs(logits[:, -1], *sampling)  # [b, v]
        nxt = jax.random.categorical(step_key, jnp.log(q), axis=-1).astype(jnp.int32)
        return (cache, nxt, pos + 1), (nxt, q)

    # K + 1 steps feed last, d_1..d_K, so a round that keeps every draft needs no re-run;
    # the (K+1)-th proposal is dropped.
    (draft_cache, _, _), (drafts, q) = jax.lax.scan(
        draft_step, (draft_cache, last, position), jax.random.split(key_draft, k + 1)
    )
    drafts, q = drafts[:k].T, q[:k].transpose(1, 0, 2)  # [b, K], [b, K, v]
    fed = jnp.concatenate([last[:, None], drafts], axis=1)  # [b, K+1]
    positions = jnp.broadcast_to(position + jnp.arange(k + 1, dtype=jnp.int32), (b, k + 1))
    logits, target_cache = target.apply(target_params, fed, positions, target_cache)  # [b, K+1, v]
    accepted, out = accept(token_probs(logits, *sampling), q, drafts, key_accept)
    return fed, accepted, out, target_cache, draft_cache, key


def speculative_generate(
    target: nn.Module,
    target_params: PyTree,
    draft: nn.Module,
    draft_params: PyTree,
    prompt: np.ndarray,
    max_new_tokens: int,
    *,
    k: int = 4,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield, per round, (new tokens i32[b, n], drafts accepted) continuing ``prompt`` i32[b, t].

    ``n`` is accepted + 1 (fewer in the last round, cut at ``max_new_tokens``); the acceptance
    rate is sum(accepted) / (rounds * k).
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ConfigError("The prompt is empty; give at least one token (a non-empty --prompt).")
    if max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens must be positive, got {max_new_tokens}.")
    if k < 1:
        raise ConfigError(f"--draft-tokens must be at least 1, got {k}.")
    if not (temperature >= 0 and top_k >= 0 and 0 < top_p <= 1):
        raise ConfigError("Sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1.")
    tv, dv = target.cfg.vocab_size, draft.cfg.vocab_size
    if tv != dv:
        raise ConfigError(
            f"The draft model has a vocabulary of {dv} tokens but the target has {tv}; "
            "use a draft trained with the target's tokenizer."
        )
    b, t = prompt.shape
    max_len = t + max_new_tokens + k  # a round writes up to K positions past the last kept token
    caches = (target.init_cache(b, max_len), draft.init_cache(b, max_len))
    models = (target, target_params, draft, draft_params)
    if t > 1:  # the caches hold everything before the last prompt token, which starts round one
        caches = advance(*models, *caches, prompt[:, :-1], np.int32(0))
    last, position, key = prompt[:, -1], t - 1, jax.random.key(seed)
    sampling = (int(k), float(temperature), int(top_k), float(top_p))
    done = 0
    while done < max_new_tokens:
        fed, accepted, out, *next_caches, key = speculate(*models, *caches, last, np.int32(position), key, *sampling)
        fed, accepted, out = jax.device_get((fed, accepted, out))  # the one host sync per round
        n = int(accepted.min()) + 1  # tokens kept in every row this round
        if n == k + 1:
            caches = tuple(next_caches)
        else:  # roll back: re-run the kept tokens [last, d_1..d_{n-1}] from the snapshots
            caches = advance(*models, *caches, fed[:, :n], np.int32(position))
        last, position = out[:, n - 1], position + n
        take = min(n, max_new_tokens - done)
        done += take
        yield out[:, :take], n - 1
