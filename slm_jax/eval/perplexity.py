"""Validation loss, perplexity, bits per token (per character or byte for those tokenizers) and
accuracy of the scored next-token predictions."""

import math
from typing import Callable, Iterable

import jax

from slm_jax.array_typing import PyTree


def evaluate(eval_step: Callable, params: PyTree, batches: Iterable, unit: str = "token") -> dict:
    """Token-weighted mean loss and accuracy over ``batches``; ``unit`` names the bits metric (char/byte/token)."""
    loss_sum, correct, tokens = 0.0, 0.0, 0.0
    for batch in batches:
        m = jax.device_get(eval_step(params, batch))
        loss_sum += float(m["loss_sum"])
        correct += float(m["correct"])
        tokens += float(m["tokens"])
    loss = loss_sum / max(tokens, 1.0)
    return {
        "val_accuracy": correct / max(tokens, 1.0),
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50.0)),
        f"val_bits_per_{unit}": loss / math.log(2),
        "val_tokens": int(tokens),
    }


def mixture_metrics(metrics: dict, weights: dict[str, float], unit: str = "token") -> dict:
    """The metrics of a mixture from its sources': ``metrics`` holds ``evaluate``'s keys once per source, suffixed
    (``val_loss/web``, ...), ``weights`` maps each suffix to its weight. Loss and accuracy are the weighted means
    (the expected loss of a token drawn from the mixture); perplexity and bits follow from the loss; tokens add up."""
    total = sum(weights.values())
    loss = sum(w * metrics["val_loss" + s] for s, w in weights.items()) / total
    return {
        "val_accuracy": sum(w * metrics["val_accuracy" + s] for s, w in weights.items()) / total,
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50.0)),
        f"val_bits_per_{unit}": loss / math.log(2),
        "val_tokens": sum(metrics["val_tokens" + s] for s in weights),
    }
