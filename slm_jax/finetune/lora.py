"""LoRA as a pure function of the parameter tree (Hu et al. 2021, arXiv:2106.09685).

For every targeted ``Linear`` kernel W [..., d_in, f] (leading axes: layers stacked by
``scan_layers``) the adapters hold A [..., d_in, r] and B [..., r, f], and the model runs with

    W' = W + (alpha / r) * A @ B

``merge(base, adapters, spec)`` builds the merged tree; fine-tuning differentiates the loss of
``merge(base, adapters)`` with respect to ``adapters`` only, so the base weights are constants
of the step and the optimizer holds state for the adapters alone. A starts Gaussian with
std 1 / sqrt(d_in) and B at zero (the paper's init), so the merged model starts equal to the base.

Dropout: the paper drops the adapter branch's input x. A merged weight cannot see x, so here
each step drops input features of the update (rows of A, scaled by 1 / (1 - p)) with one mask
shared by the batch: the same regulariser in expectation, with the mask tied across tokens.

Targets are chosen by a regular expression searched in each ``Linear``'s module path, e.g.
``layers_0/mixer/qkv`` or ``layers_3/mlp/down`` (``periods/block_0/...`` with scan_layers).
Adapters are a flat dict ``{module path: {"a", "b"}}``, which is also their safetensors layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import ModelConfig
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import lora_target_names

# Every mixer's declared projections (its ``lora_targets``), e.g. mixer/(in_proj|o|out_proj|qkv)$.
DEFAULT_TARGETS = r"mixer/(" + "|".join(lora_target_names()) + r")$"


@dataclass(frozen=True)
class LoraSpec:
    """rank r, scale alpha / r, dropout p on the update's input rows, and the target-path regex."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = DEFAULT_TARGETS

    def __post_init__(self):
        if self.rank <= 0:
            raise ConfigError(f"--rank must be positive, got {self.rank}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout}.")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ConfigError(
                f"--targets {self.targets!r} is not a valid regular expression ({e}); fix the pattern."
            ) from None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def target_paths(cfg: ModelConfig, spec: LoraSpec) -> list[str]:
    """Module paths ("layers_0/mixer/qkv", ...) of the float ``Linear`` layers whose path matches ``spec.targets``."""
    from slm_jax.quant.params import linear_paths

    if cfg.quant.bits:
        raise ConfigError(
            "LoRA needs float base weights, and this run is quantized; fine-tune the float run it was made from."
        )
    available = sorted("/".join(p) for p in linear_paths(cfg))
    chosen = [p for p in available if re.search(spec.targets, p)]
    if not chosen:
        sample = ", ".join(available[:6]) + (", ..." if len(available) > 6 else "")
        raise ConfigError(f"--targets {spec.targets!r} matches no projection; available paths include: {sample}.")
    return chosen


def kernel_at(params: PyTree, path: str) -> Array:
    """The kernel of the module at ``path`` ("layers_0/mixer/qkv") in {"params": ...}; KeyError if absent."""
    node = params["params"]
    for name in path.split("/"):
        node = node[name]
    return node["kernel"]


def init_adapters(params: PyTree, paths: list[str], spec: LoraSpec, key: Array) -> dict[str, dict[str, Array]]:
    """A ~ N(0, 1 / d_in) [..., d_in, r] and B = 0 [..., r, f] for each path; the merged model equals the base."""
    adapters = {}
    for path, k in zip(paths, jax.random.split(key, len(paths))):
        w = kernel_at(params, path)
        *lead, d_in, f = w.shape
        a = jax.random.normal(k, (*lead, d_in, spec.rank), jnp.float32) / d_in**0.5
        adapters[path] = {"a": a, "b": jnp.zeros((*lead, spec.rank, f), jnp.float32)}
    return adapters


def delta(adapter: dict[str, Array], scale: float, keep: Array | None = None) -> Array:
    """scale * A @ B [..., d_in, f]; ``keep`` f32[..., d_in] (dropout mask / (1 - p)) scales A's rows."""
    a = adapter["a"] if keep is None else adapter["a"] * keep[..., None]
    return scale * jnp.einsum("...ir,...rf->...if", a, adapter["b"])


def merge(
    params: PyTree, adapters: dict[str, dict[str, Array]], spec: LoraSpec, dropout_key: Array | None = None
) -> PyTree:
    """``params`` ({"params": ...}) with W + (alpha / r) A B at every adapter path (module docstring).

    With ``dropout_key`` and ``spec.dropout > 0`` the update's input rows are dropped (training);
    without it the merge is deterministic (evaluation, ``slm finetune merge``).
    """
    keys = dict(zip(adapters, jax.random.split(dropout_key, len(adapters)))) if dropout_key is not None else {}

    def walk(node: dict, prefix: str) -> dict:
        out = {}
        for name, child in node.items():
            path = f"{prefix}/{name}" if prefix else name
            if path in adapters:
                adapter, keep = adapters[path], None
                if spec.dropout and path in keys:
                    shape = adapter["a"].shape[:-1]
                    keep = jax.random.bernoulli(keys[path], 1.0 - spec.dropout, shape) / (1.0 - spec.dropout)
                kernel = child["kernel"]
                child = {**child, "kernel": (kernel + delta(adapter, spec.scale, keep)).astype(kernel.dtype)}
            elif isinstance(child, dict):
                child = walk(child, path)
            out[name] = child
        return out

    return {**params, "params": walk(params["params"], "")}


def apply_unmerged(
    model, params: PyTree, adapters: dict[str, dict[str, Array]], spec: LoraSpec, tokens: Array
) -> Array:
    """Logits f32[b, t, v] by the LoRA definition, y = x W + (alpha / r) (x A) B, with W untouched.

    Each targeted ``Linear`` gets the side branch through ``nn.intercept_methods``: the
    independent reference that ``merge`` is checked against (unscanned layers only, since
    inside ``nn.scan`` a layer sees one slice of stacked adapters).
    """
    import flax.linen as nn

    from slm_jax.modules.linear import Linear

    def add_branch(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        if isinstance(context.module, Linear) and context.method_name == "__call__" and path in adapters:
            ab = adapters[path]
            y = y + spec.scale * (args[0] @ ab["a"]) @ ab["b"]
        return y

    with nn.intercept_methods(add_branch):
        return model.apply(params, tokens)[0]


def count_params(tree: PyTree) -> int:
    """Number of scalars in a pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def to_flat(adapters: dict[str, dict[str, Array]]) -> dict[str, Array]:
    """{path: {"a", "b"}} -> {"path/lora_a": A, "path/lora_b": B} (safetensors names)."""
    return {f"{p}/lora_{k}": v for p, ab in adapters.items() for k, v in ab.items()}


def from_flat(tensors: dict[str, Array]) -> dict[str, dict[str, Array]]:
    """Inverse of ``to_flat``."""
    out: dict[str, dict[str, Array]] = {}
    for name, value in tensors.items():
        path, leaf = name.rsplit("/lora_", 1)
        out.setdefault(path, {})[leaf] = jnp.asarray(value)
    return out
