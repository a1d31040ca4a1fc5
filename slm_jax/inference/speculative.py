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

Compilation: the whole decode is one ``lax.while_loop`` inside one jit (``decode``), a round
per iteration, writing K + 1 tokens into a fixed buffer at a write position that then moves
by the n tokens kept; the draft's K + 1 one-token steps are a ``lax.scan`` in the body. The
host only starts the loop (once, or once per ``chunk`` tokens to stream them).

Cache rollback, exact for every mixer, each model its cheapest way. A round keeps
n = accepted + 1 of the K + 1 tokens it fed (``last`` and the kept drafts); caches are
immutable pytrees, so the round's starting caches are kept as snapshots for free.

  * Attention caches (global, or a ring buffer of at least K + 1 slots) are rewound by slot:
    the slots the K + 1 - n dropped tokens wrote take back their snapshot contents (ring
    slots they overwrote included) and the write counter moves back. Nothing is recomputed.
  * The draft's other states (RG-LRU, Mamba, Mamba-2, convolution windows, small rings, int8
    caches) are stacked after each of its one-token steps by the scan; the kept one is picked.
  * A target with any non-attention state (its verify call is one parallel pass, so the state
    after n tokens never exists) re-runs the n kept tokens from its snapshot, one
    ``lax.switch`` branch per n in 1..K, only in rounds that drop a draft.

Batch: every row must keep the same number of tokens, so a round keeps n = min over rows of
(accepted + 1) tokens in every row. Any prefix of a round's output is an exact sample (each
token follows the target given the tokens before it, whatever stops the round), so this
stays exact; the batch just advances at the pace of its least-accepting row. Batch 1 is the
intended use.
"""

from functools import partial
from typing import Callable, Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError
from slm_jax.inference.sampling import token_probs


class Decoding(NamedTuple):
    """The state of a speculative decode between rounds (and between ``decode`` calls)."""

    target_cache: PyTree  # holds every token before ``last``
    draft_cache: PyTree  # the same
    last: Array  # i32[b]: the newest token, fed to neither model yet
    position: Array  # i32[]: the position of ``last``
    key: Array  # split once per round
    tokens: Array  # i32[b, max_new_tokens + K]: the output so far; a round writes K + 1 at ``done``
    done: Array  # i32[]: output tokens kept
    kept: Array  # i32[max_new_tokens]: drafts kept in each round
    rounds: Array  # i32[]


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


# ---- cache rollback ----


def _map_mixers(fn: Callable, *caches: PyTree) -> PyTree:
    """``fn`` over each mixer's cache (the dicts in ``cache["layers"]`` and the stacked ``cache["periods"]``)."""
    return {part: tuple(fn(*mixer) for mixer in zip(*(c[part] for c in caches))) for part in caches[0]}


def _rewindable(mixer_cache: PyTree, k: int) -> bool:
    """An attention cache (float or int8) whose K + 1 newest tokens sit in K + 1 distinct slots."""
    return (
        isinstance(mixer_cache, dict)
        and set(mixer_cache) == {"k", "v", "pos", "end"}
        and mixer_cache["pos"].shape[-1] >= k + 1
    )


def _rewind(start: PyTree, fed: PyTree, n: Array, k: int) -> PyTree:
    """The attention cache after only the first n of the K + 1 tokens that took ``start`` to ``fed``.

    Slot axis: -1 of ``pos`` [..., b, L]; -2 of ``k``, ``v`` [..., b, h, L, e] (and of their int8
    parts); a stacked cache ("periods") has a leading axis everywhere, ``end`` included.
    """
    slots = start["pos"].shape[-1]
    written = (start["end"][..., None] + jnp.arange(k + 1)) % slots  # [..., K+1]: slot of each fed token
    dropped = (written[..., None] == jnp.arange(slots)) & (jnp.arange(k + 1) >= n)[:, None]
    dropped = jnp.any(dropped, axis=-2)  # [..., L]: slots written by a dropped token

    def pick(after: int, old: Array, new: Array) -> Array:
        lead = dropped.ndim - 1
        shape = dropped.shape[:-1] + (1,) * (old.ndim - lead - 1 - after) + (slots,) + (1,) * after
        return jnp.where(dropped.reshape(shape), old, new)

    kv = lambda name: jax.tree.map(partial(pick, 1), start[name], fed[name])
    return {"k": kv("k"), "v": kv("v"), "pos": pick(0, start["pos"], fed["pos"]), "end": start["end"] + n}


def _feed(model: nn.Module, params: PyTree, cache: PyTree, tokens: Array, start: Array) -> PyTree:
    """``cache`` after tokens i32[b, n] at positions start, start + 1, ..."""
    b, n = tokens.shape
    positions = jnp.broadcast_to(start + jnp.arange(n, dtype=jnp.int32), (b, n))
    # The logits are not needed: score one position only to skip most of the head.
    _, cache = model.apply(params, tokens, positions, cache, logit_positions=jnp.zeros((b, 1), jnp.int32))
    return cache


def _target_rollback(target, target_params, start, verified, fed, position, n, k) -> PyTree:
    """The target cache after fed[:, :n] from ``start``, given ``verified`` (after all K + 1 of ``fed``)."""
    if all(_rewindable(c, k) for part in start.values() for c in part):
        return _map_mixers(lambda s, v: _rewind(s, v, n, k), start, verified)
    rerun = lambda j: lambda: _feed(target, target_params, start, fed[:, :j], position)
    return jax.lax.switch(n - 1, [rerun(j) for j in range(1, k + 1)] + [lambda: verified])


def _propose(draft, draft_params, cache, last, position, key, k, sampling) -> tuple[Array, Array, PyTree, PyTree]:
    """The draft's K + 1 one-token steps from ``cache`` (holding everything before ``last`` i32[b]).

    Returns (drafts i32[b, K], q f32[b, K, v], the cache after [last, d_1..d_K], stacked: the
    states rollback needs after each step, None for the rewindable attention caches). The
    (K+1)-th step only feeds d_K, so a round that keeps every draft needs no rollback.
    """
    b = last.shape[0]
    stash = lambda c: _map_mixers(lambda m: None if _rewindable(m, k) else m, c)

    def step(carry, step_key):
        cache, token, pos = carry
        logits, cache = draft.apply(draft_params, token[:, None], jnp.broadcast_to(pos, (b, 1)), cache)
        q = token_probs(logits[:, -1], *sampling)  # [b, v]
        nxt = jax.random.categorical(step_key, jnp.log(q), axis=-1).astype(jnp.int32)
        return (cache, nxt, pos + 1), (nxt, q, stash(cache))

    (end, _, _), (drafts, q, stacked) = jax.lax.scan(step, (cache, last, position), jax.random.split(key, k + 1))
    return drafts[:k].T, q[:k].transpose(1, 0, 2), end, stacked


def _draft_rollback(start: PyTree, end: PyTree, stacked: PyTree, n: Array, k: int) -> PyTree:
    """The draft cache after the first n of the K + 1 tokens ``_propose`` fed (it returned ``end``, ``stacked``)."""
    return _map_mixers(
        lambda s, e, st: _rewind(s, e, n, k) if st is None else jax.tree.map(lambda a: a[n - 1], st),
        start,
        end,
        stacked,
    )


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
    draft_cache, next key); the returned caches hold the n = min(accepted) + 1 tokens fed[:, :n].
    """
    b = last.shape[0]
    key, key_draft, key_accept = jax.random.split(key, 3)
    sampling = (temperature, top_k, top_p)
    drafts, q, draft_end, stacked = _propose(draft, draft_params, draft_cache, last, position, key_draft, k, sampling)
    fed = jnp.concatenate([last[:, None], drafts], axis=1)  # [b, K+1]
    positions = jnp.broadcast_to(position + jnp.arange(k + 1, dtype=jnp.int32), (b, k + 1))
    logits, verified = target.apply(target_params, fed, positions, target_cache)  # [b, K+1, v]
    accepted, out = accept(token_probs(logits, *sampling), q, drafts, key_accept)
    n = jnp.min(accepted) + 1  # tokens kept in every row
    target_cache = _target_rollback(target, target_params, target_cache, verified, fed, position, n, k)
    draft_cache = _draft_rollback(draft_cache, draft_end, stacked, n, k)
    return fed, accepted, out, target_cache, draft_cache, key


@partial(jax.jit, static_argnums=(0, 2, 5, 6))
def start(target, target_params, draft, draft_params, prompt, max_new_tokens, k, seed) -> Decoding:
    """The state before the first round: both caches fed every prompt token i32[b, t] but the last."""
    b, t = prompt.shape
    max_len = t + max_new_tokens + k  # a round writes up to K positions past the last kept token
    target_cache, draft_cache = target.init_cache(b, max_len), draft.init_cache(b, max_len)
    if t > 1:
        target_cache = _feed(target, target_params, target_cache, prompt[:, :-1], jnp.int32(0))
        draft_cache = _feed(draft, draft_params, draft_cache, prompt[:, :-1], jnp.int32(0))
    zero = jnp.int32(0)
    tokens = jnp.zeros((b, max_new_tokens + k), jnp.int32)
    kept = jnp.full((max_new_tokens,), -1, jnp.int32)
    return Decoding(
        target_cache, draft_cache, prompt[:, -1], jnp.int32(t - 1), jax.random.key(seed), tokens, zero, kept, zero
    )


@partial(jax.jit, static_argnums=(0, 2, 6, 7, 8, 9), donate_argnums=(4,))
def decode(target, target_params, draft, draft_params, state, stop, k, temperature, top_k, top_p) -> Decoding:
    """Rounds in one compiled ``lax.while_loop`` until ``state.done >= stop`` i32[]."""

    def round_(s: Decoding) -> Decoding:
        models = (target, target_params, draft, draft_params)
        _, accepted, out, tc, dc, key = speculate(
            *models, s.target_cache, s.draft_cache, s.last, s.position, s.key, k, temperature, top_k, top_p
        )
        n = jnp.min(accepted) + 1
        tokens = jax.lax.dynamic_update_slice(s.tokens, out, (0, s.done))  # entries past n are rewritten later
        last = jax.lax.dynamic_index_in_dim(out, n - 1, axis=1, keepdims=False)
        kept = s.kept.at[s.rounds].set(n - 1)
        return Decoding(tc, dc, last, s.position + n, key, tokens, s.done + n, kept, s.rounds + 1)

    return jax.lax.while_loop(lambda s: s.done < stop, round_, state)


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
    chunk: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (new tokens i32[b, n], drafts kept in each round i32[r]) continuing ``prompt`` i32[b, t].

    One compiled loop per ``chunk`` new tokens (None or 0: one loop for all of them); a chunk
    holds the rounds that ended in it, so n may pass ``chunk`` by up to K (the last is cut at
    ``max_new_tokens``). The acceptance rate is sum(kept) / (rounds * k). The arguments are
    checked here, before anything is computed.
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
    if chunk is not None and chunk < 0:
        raise ConfigError(f"--chunk must be positive (or 0 for one loop over all new tokens), got {chunk}.")
    tv, dv = target.cfg.vocab_size, draft.cfg.vocab_size
    if tv != dv:
        raise ConfigError(
            f"The draft model has a vocabulary of {dv} tokens but the target has {tv}; "
            "use a draft trained with the target's tokenizer."
        )
    models = (target, target_params, draft, draft_params)
    sampling = (int(k), float(temperature), int(top_k), float(top_p))
    return _stream(models, prompt, max_new_tokens, sampling, seed, chunk or max_new_tokens)


def _stream(models, prompt, max_new_tokens, sampling, seed, chunk) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Run ``decode`` once per ``chunk`` tokens (arguments checked by ``speculative_generate``)."""
    state = start(*models, jnp.asarray(prompt), max_new_tokens, sampling[0], np.int32(seed))
    done = rounds = 0
    while done < max_new_tokens:
        state = decode(*models, state, np.int32(min(done + chunk, max_new_tokens)), *sampling)
        tokens, kept, now_done, now_rounds = jax.device_get((state.tokens, state.kept, state.done, state.rounds))
        yield tokens[:, done : min(int(now_done), max_new_tokens)], kept[rounds:now_rounds]
        done, rounds = int(now_done), int(now_rounds)
