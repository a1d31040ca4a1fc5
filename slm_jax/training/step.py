"""Pure train and eval steps. ``train_step(state, batch) -> (state, metrics)`` is compiled once.

The train state is a plain dict: ``{"params", "opt_state", "step": i32[]}`` (checkpoints from before
``rng`` was dropped, an item nothing read, still restore: rundir/checkpoint.py skips it).
A batch is either i32[b, t + 1] text windows (inputs are the first t tokens, targets the last
t) or a task dict: ``{"inputs": i32[b, t], "targets": i32[b, t]}`` with target -1 where a
position is not scored, or its compact form ``{"inputs", "label_positions": i32[b, m],
"labels": i32[b, m]}``, for which the model computes logits only at the m labelled positions.
Packed text rows (data/pipeline.py) are the first dict form plus ``"positions"`` and ``"segment_ids"``
(i32[b, t]), which go to the model as they are.

A model with MoE layers (``model.moe``) adds their mean load-balancing loss times ``model.moe.aux_loss_weight``
to the loss and reports it as ``moe_aux_loss``. It is taken over the tokens one loss call sees: the whole
batch on one device or a Mesh, each device's share under pmap and each micro-batch with ``grad_accum``.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from slm_jax.array_typing import Array, PyTree
from slm_jax.modules.moe import mean_balance_loss
from slm_jax.training.loss import cross_entropy


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int, seq_len: int) -> PyTree:
    """Fresh parameters and optimizer state from ``seed``."""
    init_key, _ = jax.random.split(jax.random.key(seed))  # the split keeps each seed's parameters as before
    params = model.init(init_key, jnp.zeros((1, seq_len), jnp.int32))
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def make_loss_fn(model: nn.Module, z_loss: float = 0.0) -> Callable:
    """``loss_fn(params, batch) -> (loss, metrics)`` for either batch form (module docstring); ``model`` a CausalLM."""
    moe = model.cfg.moe

    def apply(params: PyTree, tokens: Array, **kwargs) -> tuple[Array, Array | None]:
        """Logits, and the MoE layers' mean balancing loss (None without MoE layers)."""
        if not moe.n_experts:
            return model.apply(params, tokens, **kwargs)[0], None
        (logits, _), state = model.apply(params, tokens, mutable="intermediates", **kwargs)
        return logits, mean_balance_loss(state["intermediates"])

    def with_aux(loss_metrics: tuple[Array, dict], aux: Array | None) -> tuple[Array, dict]:
        if aux is None:
            return loss_metrics
        loss, metrics = loss_metrics
        return loss + moe.aux_loss_weight * aux, {**metrics, "moe_aux_loss": aux}

    def loss_fn(params: PyTree, batch: Array | dict) -> tuple[Array, dict]:
        if not isinstance(batch, dict):  # text windows: every next token is scored
            logits, aux = apply(params, batch[:, :-1])
            return with_aux(cross_entropy(logits, batch[:, 1:], z_loss=z_loss), aux)
        label_positions = batch.get("label_positions")
        packing = {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
        logits, aux = apply(params, batch["inputs"], logit_positions=label_positions, **packing)
        targets = batch["labels"] if label_positions is not None else batch["targets"]
        return with_aux(cross_entropy(logits, jnp.maximum(targets, 0), mask=targets >= 0, z_loss=z_loss), aux)

    return loss_fn


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    schedule: Callable,
    z_loss: float = 0.0,
    grad_accum: int = 1,
    sync: Callable | None = None,
    loss_fn: Callable | None = None,
) -> Callable:
    """The update function: gradients (averaged over ``grad_accum`` micro-batches), then AdamW.

    ``sync(grads, metrics) -> (grads, metrics)`` runs between the gradients and the update: data
    parallelism averages them over devices there (training/parallel.py); None on one device.
    ``loss_fn(params, batch, *frozen) -> (loss, metrics)`` replaces the next-token loss; ``frozen``
    are extra step inputs that get no gradient and no update (distillation: the teacher's params).
    """
    grad_fn = jax.value_and_grad(loss_fn or make_loss_fn(model, z_loss), has_aux=True)

    def train_step(state: PyTree, batch: Array, *frozen: PyTree) -> tuple[PyTree, dict]:
        params = state["params"]
        if grad_accum == 1:
            (_, metrics), grads = grad_fn(params, batch, *frozen)
        else:
            micro = jax.tree.map(lambda a: a.reshape(grad_accum, a.shape[0] // grad_accum, *a.shape[1:]), batch)

            def accumulate(carry, mb):
                (_, m), g = grad_fn(params, mb, *frozen)
                return jax.tree.map(jnp.add, carry, (g, m)), None

            first = jax.tree.map(lambda a: a[0], micro)
            metric_shapes = jax.eval_shape(lambda: grad_fn(params, first, *frozen)[0][1])
            start = (
                jax.tree.map(jnp.zeros_like, params),
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
            )
            (grads, metrics), _ = jax.lax.scan(accumulate, start, micro)
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
            # Means over micro-batches; "tokens" stays a sum.
            metrics = {k: v if k == "tokens" else v / grad_accum for k, v in metrics.items()}
        if sync is not None:
            grads, metrics = sync(grads, metrics)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {
            **state,
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable:
    """``eval_step(params, batch) -> {"loss_sum", "correct", "tokens"}``: sums, for exact averages over batches."""
    loss_fn = make_loss_fn(model)

    def eval_step(params: PyTree, batch: Array | dict) -> dict:
        _, m = loss_fn(params, batch)
        return {"loss_sum": m["loss"] * m["tokens"], "correct": m["accuracy"] * m["tokens"], "tokens": m["tokens"]}

    return eval_step
