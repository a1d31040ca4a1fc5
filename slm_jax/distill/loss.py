"""The distillation loss (Hinton et al. 2015, arXiv:1503.02531; DistilBERT, Sanh et al. 2019):

    loss = alpha * CE(labels) + (1 - alpha) * T^2 * KL(p_teacher || p_student)

with ``p = softmax(logits / T)`` for both models. The ``T^2`` factor keeps the soft term's
gradients on the scale of the hard term's when ``T`` changes (Hinton et al. 2015, Sec. 2).

The teacher comes either as full logits f32[b, t, v] or as its top-k logits per token,
``(values f32[b, t, k], indices i32[b, t, k])``. With top-k, the teacher distribution is the
softmax over its k tokens only (renormalised: the mass outside them is dropped) and the KL sums
over those k tokens against the student's full-vocabulary log-probabilities:

    KL_k = sum_{i in S} p_i * (log p_i - log q_i),   p = softmax(z_S / T),   q = softmax(s / T) over all v.

KL_k is exact for k = v and approximate for k < v: it ignores the teacher's tail, which for a
trained teacher at T ~ 1 holds little mass. It is still >= 0 (it equals KL(p || q renormalised
on S) - log q(S)), so it also pushes the student's mass off the tokens outside S.

DistilBERT's triple loss (Sanh et al. 2019, arXiv:1910.01108, Sec. 2) weighs the terms freely and
adds a cosine-embedding term that aligns the directions of the two models' final hidden states:

    loss = alpha_ce * T^2 * KL + alpha_mlm * CE(labels) + alpha_cos * mean_tokens(1 - cos(h_student, h_teacher))

On an encoder's masked batch (training/mlm.py) both models read the same masked input; KL and CE
are taken at the masked positions, the cosine term at every position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array
from slm_jax.modules.heads import final_hidden
from slm_jax.training.loss import cross_entropy


def kl_full(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
    """KL(softmax(teacher / T) || softmax(student / T)) per token: f32[b, t] from two f32[b, t, v]."""
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def kl_topk(student_logits: Array, values: Array, indices: Array, temperature: float) -> Array:
    """KL_k per token (module docstring): student f32[b, t, v], teacher top-k values/indices [b, t, k] -> f32[b, t]."""
    log_p = jax.nn.log_softmax(values.astype(jnp.float32) / temperature, axis=-1)  # renormalised over the k tokens
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_q = jnp.take_along_axis(log_q, indices.astype(jnp.int32), axis=-1)  # [b, t, k]
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def distill_loss(
    student_logits: Array, targets: Array, teacher: Array | tuple[Array, Array], alpha: float, temperature: float
) -> tuple[Array, dict]:
    """Mean over tokens of ``alpha * CE + (1 - alpha) * T^2 * KL``.

    Args:
      student_logits: f32[b, t, v].
      targets: i32[b, t], the next tokens.
      teacher: full logits f32[b, t, v], or top-k ``(values [b, t, k], indices i32[b, t, k])``.
      alpha: weight of the hard-label cross-entropy, in [0, 1].
      temperature: T > 0.

    Returns:
      (loss, metrics) with metrics ``loss`` (the total), ``ce``, ``kl`` (without T^2), ``accuracy``, ``tokens``.
    """
    ce, m = cross_entropy(student_logits, targets)
    teacher = jax.tree.map(jax.lax.stop_gradient, teacher)  # the teacher only gives targets
    kl = (
        kl_topk(student_logits, *teacher, temperature)
        if isinstance(teacher, tuple)
        else kl_full(student_logits, teacher, temperature)
    )
    kl = kl.mean()
    loss = alpha * ce + (1.0 - alpha) * temperature**2 * kl
    return loss, {"loss": loss, "ce": ce, "kl": kl, "accuracy": m["accuracy"], "tokens": m["tokens"]}


def cosine_loss(student_hidden: Array, teacher_hidden: Array) -> Array:
    """Mean over tokens of 1 - cos(student, teacher): two f32[b, t, d] -> f32[] (torch's CosineEmbeddingLoss, y = 1)."""
    s, t = student_hidden.astype(jnp.float32), teacher_hidden.astype(jnp.float32)
    norms = jnp.maximum(jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1), 1e-8)
    return jnp.mean(1.0 - jnp.sum(s * t, axis=-1) / norms)


def make_triple_loss_fn(
    student, teacher, temperature: float, alpha_ce: float, alpha_mlm: float, alpha_cos: float, top_k: int = 0
):
    """DistilBERT's ``loss_fn(params, batch, teacher_params) -> (loss, metrics)`` (module docstring), teacher live.

    ``batch`` is i32[b, t + 1] text windows (next-token targets) or an encoder's masked batch
    ``{"inputs", "label_positions", "labels"}``. Metrics: ``loss``, ``ce``, ``kl`` (without T^2),
    ``cos``, ``accuracy``, ``tokens``. A zero weight drops its term (the cosine's hidden states are
    then never compared, so widths may differ). ``top_k`` > 0 takes KL_k over the teacher's k largest logits.
    """

    def loss_fn(params, batch, teacher_params):
        if isinstance(batch, dict):
            inputs, positions, targets = batch["inputs"], batch["label_positions"], batch["labels"]
        else:
            inputs, positions, targets = batch[:, :-1], None, batch[:, 1:]
        logits, hidden = final_hidden(student, params, inputs, logit_positions=positions)
        t_logits, t_hidden = final_hidden(
            teacher, jax.lax.stop_gradient(teacher_params), inputs, logit_positions=positions
        )
        t_logits, t_hidden = jax.lax.stop_gradient(t_logits), jax.lax.stop_gradient(t_hidden)
        ce, m = cross_entropy(logits, targets)
        kl = (
            kl_topk(logits, *jax.lax.top_k(t_logits, top_k), temperature)
            if top_k
            else kl_full(logits, t_logits, temperature)
        )
        kl = kl.mean()
        cos = cosine_loss(hidden, t_hidden) if alpha_cos else jnp.zeros((), jnp.float32)
        loss = alpha_ce * temperature**2 * kl + alpha_mlm * ce + alpha_cos * cos
        return loss, {"loss": loss, "ce": ce, "kl": kl, "cos": cos, "accuracy": m["accuracy"], "tokens": m["tokens"]}

    return loss_fn


def make_distill_loss_fn(student, teacher=None, alpha: float = 0.5, temperature: float = 2.0, top_k: int = 0):
    """``loss_fn(params, batch, *teacher_params) -> (loss, metrics)`` for ``make_train_step(loss_fn=...)``.

    ``batch`` is i32[b, t + 1] text windows, with the teacher (a CausalLM of any architecture) run
    on the fly on their first t tokens (``teacher_params`` is then its one frozen input), or a
    dict ``{"tokens": i32[b, t + 1], "values": [b, t, k], "indices": i32[b, t, k]}`` of
    precomputed top-k teacher logits, or an encoder's masked batch ``{"inputs", "label_positions",
    "labels"}`` (teacher live, both models scored at the masked positions). ``top_k`` > 0 keeps
    only the teacher's k largest logits.
    """

    def loss_fn(params, batch, *teacher_params):
        if isinstance(batch, dict) and "label_positions" in batch:  # masked-LM (encoders): same masked input
            positions = batch["label_positions"]
            logits, _ = student.apply(params, batch["inputs"], logit_positions=positions)
            t_logits, _ = teacher.apply(
                jax.lax.stop_gradient(teacher_params[0]), batch["inputs"], logit_positions=positions
            )
            target = tuple(jax.lax.top_k(t_logits, top_k)) if top_k else t_logits
            return distill_loss(logits, batch["labels"], target, alpha, temperature)
        tokens = batch["tokens"] if isinstance(batch, dict) else batch
        logits, _ = student.apply(params, tokens[:, :-1])
        if isinstance(batch, dict):
            k = top_k or batch["values"].shape[-1]
            target = (batch["values"][..., :k], batch["indices"][..., :k])  # rows are sorted descending
        else:
            t_logits, _ = teacher.apply(jax.lax.stop_gradient(teacher_params[0]), tokens[:, :-1])
            target = tuple(jax.lax.top_k(t_logits, top_k)) if top_k else t_logits
        return distill_loss(logits, tokens[:, 1:], target, alpha, temperature)

    return loss_fn
