"""Mixture-of-experts MLP: a router picks ``top_k`` of ``n_experts`` gated MLPs for each token.

Sparsely-gated MoE (Shazeer et al. 2017, arXiv:1701.06538) in the form Switch Transformer (Fedus et al. 2021,
arXiv:2101.03961), Mixtral, Jamba, Qwen-MoE and Granite 4.0 use. With x the token's input:

  router   s = softmax(x R) (``routing: softmax``) or sigmoid(x R) (``sigmoid``: DeepSeek-V3-style scores), R [d, E]
  choose   the k largest s_e; weights w_e = s_e, or s_e / sum of the chosen (``normalize_top_k``: Qwen's
           norm_topk_prob; Granite's softmax over the top-k logits is the same thing); w_e = 0 off the top-k
  output   y = sum_e w_e down_e(act(gate_e(x)) * up_e(x)) [+ sigmoid(x g) shared(x)  (Qwen's gated shared expert;
           Granite's shared_mlp has no gate)]

Dispatch here is dense: every expert runs on every token and unchosen experts are weighted by 0, which is exact,
needs no capacity factor and drops no token, at E / k times the expert FLOPs of a sparse dispatch (fine for small
E on CPU; models/accounting.py reports both). Expert kernels are stacked, ``gate_up`` [E, d, 2f] (gate columns
first) and ``down`` [E, f, d], as ``ExpertLinear`` modules, so quantization and LoRA treat them as projections
and the sharding rules split their leading ``expert`` axis.

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
from slm_jax.modules.mlp import ACTIVATIONS, MLP, gated_mlp_params

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


def route(logits: Array, top_k: int, routing: str, normalize: bool) -> tuple[Array, Array, Array]:
    """Router logits f32[n, E] -> (weights f32[n, E], zero off each token's top-k; probabilities f32[n, E], each
    row summing to 1, for the balancing loss (sigmoid scores divided by their sum, as DeepSeek-V3's balance loss
    does); chosen experts i32[n, k])."""
    logits = logits.astype(jnp.float32)
    scores = jax.nn.softmax(logits, axis=-1) if routing == "softmax" else jax.nn.sigmoid(logits)
    top, chosen = jax.lax.top_k(scores, top_k)  # [n, k] each
    if normalize:
        top = top / top.sum(axis=-1, keepdims=True)
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
    """The MoE MLP, f32[b, t, d] -> f32[b, t, d] (module docstring); ``kind`` names a gated ``ACTIVATIONS`` entry."""

    n_experts: int
    top_k: int
    hidden: int  # each expert's width f
    kind: str = "swiglu"
    routing: str = "softmax"  # softmax | sigmoid
    normalize_top_k: bool = False
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
        weights, probs, chosen = route(logits, self.top_k, self.routing, self.normalize_top_k)
        self.sow("intermediates", BALANCE_LOSS, balance_loss(probs, chosen))
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        experts = lambda f, name, kernel_init: ExpertLinear(
            f, kernel_init=kernel_init, n_experts=self.n_experts, name=name, **kw
        )
        gate, up = jnp.split(experts(2 * self.hidden, "gate_up", init)(xs), 2, axis=-1)  # [E, n, f] each
        out = experts(d, "down", self.out_init)(ACTIVATIONS[self.kind](gate) * up)  # [E, n, d]
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
    d: int, n_experts: int, hidden: int, shared_hidden: int = 0, shared_gate: bool = False, experts: int = 0
) -> int:
    """Parameters of a ``MoE``: router, experts, shared expert and its gate (models/accounting.py); ``experts`` > 0
    counts only that many experts (the ones a token uses), the router always scoring all ``n_experts``."""
    shared = gated_mlp_params(d, shared_hidden) + (d if shared_gate else 0)
    return d * n_experts + (experts or n_experts) * gated_mlp_params(d, hidden) + shared


def moe_reference(moe: MoE, params: PyTree, x: Array, chosen: np.ndarray | None = None) -> Array:
    """The slow, obvious MoE, f32[b, t, d] -> f32[b, t, d]: a loop over tokens and their chosen experts.

    ``chosen`` i32[n, k] fixes the selection (so the loop is differentiable); None picks it here with numpy's
    stable sort of the router scores (needs concrete ``params`` and ``x``). For tests of ``MoE``.
    """
    p = params["params"]
    lead, d = x.shape[:-1], x.shape[-1]
    xs = x.reshape(-1, d)
    logits = xs @ p["router"]["kernel"]
    scores = jax.nn.softmax(logits, axis=-1) if moe.routing == "softmax" else jax.nn.sigmoid(logits)
    if chosen is None:
        chosen = np.argsort(-np.asarray(scores), axis=-1, kind="stable")[:, : moe.top_k]
    act = ACTIVATIONS[moe.kind]
    gate_up, down = p["gate_up"]["kernel"], p["down"]["kernel"]
    rows = []
    for i in range(xs.shape[0]):
        w = scores[i, chosen[i]]
        w = w / w.sum() if moe.normalize_top_k else w
        y = jnp.zeros(d)
        for j, e in enumerate(chosen[i]):
            g, u = xs[i] @ gate_up[e, :, : moe.hidden], xs[i] @ gate_up[e, :, moe.hidden :]
            y = y + w[j] * (act(g) * u) @ down[e]
        if moe.shared_hidden:
            sp = p["shared"]
            h = xs[i] @ sp["gate_up"]["kernel"]
            s = (act(h[: moe.shared_hidden]) * h[moe.shared_hidden :]) @ sp["down"]["kernel"]
            y = y + (jax.nn.sigmoid(xs[i] @ p["shared_gate"]["kernel"]) * s if moe.shared_gate else s)
        rows.append(y)
    return jnp.stack(rows).reshape(*lead, d)
