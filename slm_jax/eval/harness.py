"""A trained run as an lm-evaluation-harness language model (EleutherAI's ``lm_eval`` 0.4,
https://github.com/EleutherAI/lm-evaluation-harness), and the task runner behind ``slm eval --tasks``.

Requests are scored the harness's way (its Hugging Face model is the reference): a context and a
continuation are tokenized together, trailing whitespace of the context moves to the continuation,
the pair is left-truncated to the model's context and the continuation's log-probabilities are summed
from one forward pass per batch. Text with nothing before it (rolling log-likelihoods, an empty
context) starts from the start token the tokenizer adds itself (a BOS) or else its end-of-text token;
char and byte tokenizers have neither, so a rolling text's first token is only context (as in our
perplexity eval) and an empty context is an error. Generation is greedy.
"""

from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from slm_jax.array_typing import Array, PyTree
from slm_jax.errors import ConfigError, DataError

# generate(prompt i32[1, t], max_new_tokens) -> chunks i32[1, <= chunk] of greedy new tokens (inference/generate.py)
GenerateFn = Callable[[np.ndarray, int], Iterator[np.ndarray]]


def _token_scores(model, params: PyTree, inputs: Array, targets: Array, mask: Array) -> tuple[Array, Array]:
    """Summed log p(target) over ``mask`` f32[b] and whether every masked target is the argmax bool[b].

    inputs, targets i32[b, t]; mask bool[b, t] marks the continuation's positions.
    """
    logits, _ = model.apply(params, inputs)  # [b, t, v]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [b, t]
    greedy = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(jnp.where(mask, picked, 0.0), axis=-1), jnp.all(greedy | ~mask, axis=-1)


def _bucket(length: int, context: int) -> int:
    """A padded length (a power of two, at least 16, at most ``context``) so few shapes are compiled."""
    return min(context, max(16, 1 << (max(length, 1) - 1).bit_length()))


class SlmLM(LM):
    """Our causal model behind the ``lm_eval.api.model.LM`` interface (greedy generation only).

    Args:
        model, params: a ``CausalLM`` and its parameters (``inference.run.load_run``).
        tokenizer: the run's tokenizer (char, byte or Hugging Face ``tokenizer.json``).
        context: tokens the model reads at once (the run's ``train.seq_len``).
        generate: greedy cached decode, see ``GenerateFn``.
        batch_size: requests scored per forward pass.
        max_gen_toks: new tokens per ``generate_until`` request when its task does not say.
    """

    def __init__(
        self,
        model,
        params: PyTree,
        tokenizer,
        context: int,
        generate: GenerateFn,
        batch_size: int = 8,
        max_gen_toks: int = 256,
    ):
        super().__init__()
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.context, self.generate, self.batch_size, self.max_gen_toks = context, generate, batch_size, max_gen_toks
        self.eos = getattr(tokenizer, "eos_id", None)
        # What starts text that has no context: the tokenizer's own start token (encode("") gives it, e.g. a
        # BOS), else its end-of-text token, else nothing (then the text's first token is only context).
        self.prefix = [] if self._encode("") or self.eos is None else [self.eos]
        self.score_fn = jax.jit(lambda p, x, y, m: _token_scores(model, p, x, y, m))

    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def _score(self, pairs: Sequence[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) of the last ``n`` tokens of each ``tokens`` given the ones before them."""
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda k: -len(pairs[k][0]))  # similar lengths share a batch
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            width = _bucket(max(min(len(pairs[k][0]) - 1, self.context) for k in rows), self.context)
            inputs = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            mask = np.zeros((self.batch_size, width), bool)
            for r, k in enumerate(rows):
                tokens, n = pairs[k]
                tokens = tokens[-(self.context + 1) :]  # left-truncate the context
                t = len(tokens) - 1
                inputs[r, :t], targets[r, :t], mask[r, t - n : t] = tokens[:-1], tokens[1:], True
            logp, greedy = jax.device_get(self.score_fn(self.params, inputs, targets, mask))
            for r, k in enumerate(rows):
                out[k] = (float(logp[r]), bool(greedy[r]))
        return out

    def _start(self) -> list[int]:
        """The tokens that stand for an empty context."""
        if not self.prefix:
            raise DataError(
                "A harness request has an empty context, and this run's tokenizer has no end-of-text token to "
                "start from; use a task whose requests have a context."
            )
        return self.prefix

    def _pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Tokens of context + continuation and the number of continuation tokens at their end."""
        spaces = len(context) - len(context.rstrip())
        if spaces:  # " answer" tokenizes as one unit with its space, as the harness's HF model does
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self._encode(context)
        cont = self._encode(context + continuation)[len(ctx) :]
        if len(cont) > self.context:
            raise DataError(
                f"A harness continuation is {len(cont)} tokens, longer than the model's context of {self.context}; "
                "pass a larger --context or use a task with shorter answers."
            )
        return (ctx or self._start()) + cont, len(cont)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Each ``request.args`` is (context, continuation): log p(continuation | context) and is_greedy."""
        return self._score([self._pair(*req.args) for req in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Each ``request.args`` is (text,): the summed log-likelihood of its tokens over the harness's
        disjoint rolling windows of ``context`` tokens."""
        pairs, owner = [], []
        for k, req in enumerate(requests):
            tokens = self.prefix + self._encode(req.args[0])
            if len(tokens) < 2:
                continue  # nothing to score: log-likelihood 0
            for window in get_rolling_token_windows(tokens[1:], tokens[0], self.context, 1):
                ctx, pred = make_disjoint_window(window)
                pairs.append((ctx + pred, len(pred)))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (logp, _) in zip(owner, self._score(pairs)):
            totals[k] += logp
        return totals

    def generate_until(self, requests) -> list[str]:
        """Each ``request.args`` is (context, gen_kwargs): greedy text until any ``until`` string or
        ``max_gen_toks`` tokens (sampling options in ``gen_kwargs`` are ignored)."""
        results = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = (self._encode(context) or self._start())[-max(1, self.context - max_new) :]
            new: list[int] = []
            for chunk in self.generate(np.asarray([prompt], np.int32), max_new):
                new.extend(int(t) for t in chunk[0])
                if self.eos in new:
                    new = new[: new.index(self.eos)]
                    break
                if any(u in self.tokenizer.decode(new) for u in until):
                    break
            text = self.tokenizer.decode(new)
            results.append(text[: min([text.find(u) for u in until if u in text], default=len(text))])
        return results


def evaluate_tasks(
    lm: SlmLM, tasks: list[str], limit: int | None, num_fewshot: int | None, include_path: str | None
) -> dict:
    """Run harness ``tasks`` (names, groups or tags; ``include_path`` adds a directory of task YAMLs) on ``lm``;
    returns the JSON-ready part of the harness's results: per-task metrics, few-shot counts, task versions."""
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or not all(manager.match_tasks([t]) for t in tasks):  # indexing the built-in tasks takes ~30 s
        manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ConfigError(
            f"Unknown harness task(s) {', '.join(unknown)}; check the names with `lm-eval ls tasks`, "
            "or pass the directory of your task YAMLs with --include-path."
        )
    out = simple_evaluate(  # no torch seed: our model does not use torch (and importing it takes seconds)
        lm,
        tasks=tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=False,
        torch_random_seed=None,
    )
    return {k: out[k] for k in ("results", "groups", "n-shot", "n-samples", "versions") if k in out}
