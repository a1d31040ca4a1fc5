"""Mixture-of-experts MLP: a router picks ``top_k`` of ``n_experts`` gated MLPs for each token.

Sparsely-gated MoE (Shazeer et al. 2017, arXiv:1701.06538) in the form Switch Transformer (Fedus et al. 2021,
arXiv:2101.03961), Mixtral, Jamba, Qwen-MoE and Granite 4.0 use. With x the token's input:

  router   s = softmax(x R) (``routing: softmax``) or sigmoid(x R) (``sigmoid``: DeepSeek-V3-style scores), R [d, E]
  choose   the k largest s_e + b_e (b: ``score_bias``, DeepSeek-V3's e_score_correction_bias, steers the choice
           only; 0 when off), among the experts of each token's ``top_groups`` best of ``n_groups`` equal expert
           groups, a group ranked by the sum of its two best s_e + b_e (DeepSeek-V3's group-limited routing;
           1 group = no limit); weights w_e = s_e, or s_e / sum of the chosen (``normalize_top_k``: Qwen's
           norm_topk_prob; Granite's softmax over the top-k logits is the same thing), times ``scale``
           (routed_scaling_factor); w_e = 0 off the top-k
  output   y = sum_e w_e down_e(act(gate_e(x)) * up_e(x)) [+ sigmoid(x g) shared(x)  (Qwen's gated shared expert;
           Granite's shared_mlp has no gate)]; plain kinds (``relu2``, ``gelu``: Nemotron-H's experts) are
           down_e(act(up_e(x)))

Dispatch here is dense: every expert runs on every token and unchosen experts are weighted by 0, which is exact,
needs no capacity factor and drops no token, at E / k times the expert FLOPs of a sparse dispatch (fine for small
E on CPU; models/accounting.py reports both). Expert kernels are stacked, ``gate_up`` [E, d, 2f] (gate columns
first; ``up`` [E, d, f] for a plain kind) and ``down`` [E, f, d], as ``ExpertLinear`` modules, so quantization
and LoRA treat them as projections and the sharding rules split their leading ``expert`` axis.

Each call sows Switch Transformer's load-balancing loss ``E * sum_e f_e P_e`` as ``intermediates/moe_balance_loss``
(``balance_loss``); training adds ``mean over layers * model.moe.aux_loss_weight`` to the loss (training/step.py).
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.array_typing import Array, PyTree
from slm_jax.modules.linear import Linear, kernel_param
from slm_jax.modules.mlp import ACTIVATIONS, MLP, PLAIN_ACTIVATIONS, mlp_params

BALANCE_LOSS = "moe_balance_loss"  # the name each MoE layer sows its balancing loss under, in "intermediates"


class ExpertLinear(Linear):
    """E stacked projections, kernel [E, d_in, f] (no bias): x f32[n, d_in] (the same input for every expert)
    or f32[E, n, d_in] (one per expert) -> f32[E, n, f]. A ``Linear`` for LoRA and quantization (quant/params.py);
    a quantized run holds [E, ...] integer leaves in place of the kernel."""

    n_experts: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = kernel_param(self, (self.n_experts, x.shape[-1], self.features))
        spec = "nd,edf->enf" if x.ndim == 2 else "end,edf->enf"
        y = jnp.einsum(spec, x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=jnp.float32)
        return y.astype(self.dtype)


def route(
    logits: Array,
    top_k: int,
    routing: str,
    normalize: bool,
    bias: Array | None = None,
    n_groups: int = 1,
    top_groups: int = 1,
    scale: float = 1.0,
) -> tuple[Array, Array, Array]:
    """Router logits f32[n, E] -> (weights f32[n, E], zero off each token's top-k; probabilities f32[n, E], each
    row summing to 1, for the balancing loss (sigmoid scores divided by their sum, as DeepSeek-V3's balance loss
    does); chosen experts i32[n, k]). ``bias`` f32[E], ``n_groups``, ``top_groups`` and ``scale``: module doc."""
    logits = logits.astype(jnp.float32)
    scores = jax.nn.softmax(logits, axis=-1) if routing == "softmax" else jax.nn.sigmoid(logits)
    choice = scores if bias is None else scores + bias.astype(jnp.float32)
    if n_groups > 1:  # keep the experts of the top_groups groups with the best two-expert sums
        n, e = choice.shape
        grouped = choice.reshape(n, n_groups, e // n_groups)
        _, best = jax.lax.top_k(jax.lax.top_k(grouped, 2)[0].sum(axis=-1), top_groups)  # [n, top_groups]
        keep = jax.nn.one_hot(best, n_groups, dtype=jnp.bool_).any(axis=1)  # [n, G]
        choice = jnp.where(keep[:, :, None], grouped, -jnp.inf).reshape(n, e)
    _, chosen = jax.lax.top_k(choice, top_k)  # [n, k]
    top = jnp.take_along_axis(scores, chosen, axis=-1)  # the scores themselves weigh, never the bias
    if normalize:
        top = top / top.sum(axis=-1, keepdims=True)
    top = top * scale
    weights = jnp.einsum("nk,nke->ne", top, jax.nn.one_hot(chosen, logits.shape[-1], dtype=top.dtype))
    probs = scores if routing == "softmax" else scores / scores.sum(axis=-1, keepdims=True)
    return weights, probs, chosen


def balance_loss(probs: Array, chosen: Array) -> Array:
    """Switch Transformer's auxiliary loss (Fedus et al. 2021, eq. 4-6) with top-k counts: ``E * sum_e f_e P_e``.

    probs f32[n, E] (router probabilities), chosen i32[n, k]. f_e is the share of the n tokens that chose expert e
    (so sum_e f_e = k, as Hugging Face's ``load_balancing_loss_func`` counts) and P_e the mean probability of e.
    Its minimum over balanced routings is k; a uniform router gives exactly k whatever it chooses.
    """
    n, e = probs.shape
    f = jax.nn.one_hot(chosen, e, dtype=jnp.float32).sum(axis=(0, 1)) / n  # counts carry no gradient
    return e * jnp.sum(f * probs.mean(axis=0))


def mean_balance_loss(intermediates: PyTree) -> Array | None:
    """Mean of every MoE layer's sown ``BALANCE_LOSS`` in an ``intermediates`` collection (scanned layers
    stacked); None when no layer sowed one."""
    found = []

    def keep(path, leaf):
        if any(getattr(k, "key", None) == BALANCE_LOSS for k in path):
            found.append(leaf)

    jax.tree_util.tree_map_with_path(keep, intermediates)
    if not found:
        return None
    return sum(jnp.sum(a) for a in found) / sum(a.size for a in found)


class MoE(nn.Module):
    """The MoE MLP, f32[b, t, d] -> f32[b, t, d] (module docstring); ``kind`` names an ``ACTIVATIONS`` (gated) or
    ``PLAIN_ACTIVATIONS`` entry."""

    n_experts: int
    top_k: int
    hidden: int  # each expert's width f
    kind: str = "swiglu"
    routing: str = "softmax"  # softmax | sigmoid
    normalize_top_k: bool = False
    score_bias: bool = False  # a per-expert bias on the scores, for the choice only (``score_bias`` [E])
    n_groups: int = 1  # group-limited routing: E experts in this many groups,
    top_groups: int = 1  # of which each token chooses among the best this many
    scale: float = 1.0  # the routed weights times this
    shared_hidden: int = 0  # 0 -> no shared expert
    shared_gate: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    out_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        lead, d = x.shape[:-1], x.shape[-1]
        xs = x.reshape(-1, d)  # [n, d], n = b * t
        init = nn.initializers.normal(self.init_std)
        # The router runs in float32 whatever the compute dtype: bf16 logits would flip near-tied choices.
        logits = Linear(self.n_experts, param_dtype=self.param_dtype, kernel_init=init, name="router")(xs)
        bias = None  # float32 like the router; a zero gradient (it only steers the choice)
        if self.score_bias:
            bias = self.param("score_bias", nn.initializers.zeros, (self.n_experts,), jnp.float32)
        weights, probs, chosen = route(
            logits, self.top_k, self.routing, self.normalize_top_k, bias, self.n_groups, self.top_groups, self.scale
        )
        self.sow("intermediates", BALANCE_LOSS, balance_loss(probs, chosen))
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        experts = lambda f, name, kernel_init: ExpertLinear(
            f, kernel_init=kernel_init, n_experts=self.n_experts, name=name, **kw
        )
        if self.kind in PLAIN_ACTIVATIONS:
            h = PLAIN_ACTIVATIONS[self.kind](experts(self.hidden, "up", init)(xs))  # [E, n, f]
        else:
            gate, up = jnp.split(experts(2 * self.hidden, "gate_up", init)(xs), 2, axis=-1)  # [E, n, f] each
            h = ACTIVATIONS[self.kind](gate) * up
        out = experts(d, "down", self.out_init)(h)  # [E, n, d]
        y = jnp.einsum("ne,end->nd", weights.astype(self.dtype), out, preferred_element_type=jnp.float32)
        if self.shared_hidden:
            shared = MLP(
                self.shared_hidden,
                self.kind,
                init_std=self.init_std,
                out_init=self.out_init,
                name="shared",
                **kw,
            )(xs)
            if self.shared_gate:
                gate_logit = Linear(1, kernel_init=init, name="shared_gate", **kw)(xs).astype(jnp.float32)
                shared = jax.nn.sigmoid(gate_logit) * shared
            y = y + shared
        return y.reshape(*lead, d).astype(self.dtype)


def moe_params(
    d: int,
    n_experts: int,
    hidden: int,
    shared_hidden: int = 0,
    shared_gate: bool = False,
    experts: int = 0,
    kind: str = "swiglu",
    score_bias: bool = False,
) -> int:
    """Parameters of a ``MoE``: router (and its score bias), experts, shared expert and its gate
    (models/accounting.py); ``experts`` > 0 counts only that many experts (the ones a token uses), the router always
    scoring all ``n_experts``."""
    shared = mlp_params(kind, d, shared_hidden) + (d if shared_gate else 0)
    router = (d + score_bias) * n_experts
    return router + (experts or n_experts) * mlp_params(kind, d, hidden) + shared


def _mlp_reference(kind: str, hidden: int, kernels: dict, x: Array) -> Array:
    """One MLP on one token x f32[d]: ``kernels`` {"up" or "gate_up", "down"} (arrays)."""
    if kind in PLAIN_ACTIVATIONS:
        return PLAIN_ACTIVATIONS[kind](x @ kernels["up"]) @ kernels["down"]
    h = x @ kernels["gate_up"]
    return (ACTIVATIONS[kind](h[:hidden]) * h[hidden:]) @ kernels["down"]


def _choose_reference(moe: MoE, choice: np.ndarray) -> np.ndarray:
    """i32[n, k]: per token, the k best of ``choice`` f32[n, E] among the experts of its best groups."""
    size = moe.n_experts // moe.n_groups
    rows = []
    for row in choice:
        group_score = [np.sort(row[g * size : (g + 1) * size])[-2:].sum() for g in range(moe.n_groups)]
        groups = set(np.argsort(-np.asarray(group_score), kind="stable")[: moe.top_groups].tolist())
        ranked = [e for e in np.argsort(-row, kind="stable") if e // size in groups]
        rows.append(ranked[: moe.top_k])
    return np.asarray(rows)


def moe_reference(moe: MoE, params: PyTree, x: Array, chosen: np.ndarray | None = None) -> Array:
    """The slow, obvious MoE, f32[b, t, d] -> f32[b, t, d]: a loop over tokens and their chosen experts.

    ``chosen`` i32[n, k] fixes the selection (so the loop is differentiable); None picks it here with numpy's
    stable sort of the router scores plus the score bias, group by group (needs concrete ``params`` and ``x``).
    For tests of ``MoE``.
    """
    p = params["params"]
    lead, d = x.shape[:-1], x.shape[-1]
    xs = x.reshape(-1, d)
    logits = xs @ p["router"]["kernel"]
    scores = jax.nn.softmax(logits, axis=-1) if moe.routing == "softmax" else jax.nn.sigmoid(logits)
    if chosen is None:
        bias = np.asarray(p["score_bias"]) if moe.score_bias else 0.0
        chosen = _choose_reference(moe, np.asarray(scores) + bias)
    names = ("up", "down") if moe.kind in PLAIN_ACTIVATIONS else ("gate_up", "down")
    rows = []
    for i in range(xs.shape[0]):
        w = scores[i, chosen[i]]
        w = (w / w.sum() if moe.normalize_top_k else w) * moe.scale
        y = jnp.zeros(d)
        for j, e in enumerate(chosen[i]):
            y = y + w[j] * _mlp_reference(moe.kind, moe.hidden, {n: p[n]["kernel"][e] for n in names}, xs[i])
        if moe.shared_hidden:
            shared = {n: p["shared"][n]["kernel"] for n in names}
            s = _mlp_reference(moe.kind, moe.shared_hidden, shared, xs[i])
            y = y + (jax.nn.sigmoid(xs[i] @ p["shared_gate"]["kernel"]) * s if moe.shared_gate else s)
        rows.append(y)
    return jnp.stack(rows).reshape(*lead, d)
