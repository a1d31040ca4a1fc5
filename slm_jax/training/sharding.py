"""Logical axis names for parameters and activations, and the one table mapping them to mesh axes.

The mesh has three axes (``MESH_AXES``): ``data`` (batch split, parameters replicated),
``fsdp`` (batch split *and* parameters plus optimizer state split: ZeRO-3 / FSDP, Rajbhandari
et al. 2020) and ``tensor`` (Megatron-style tensor parallelism, Shoeybi et al. 2019: attention
heads, MLP hidden units, the recurrent width of RG-LRU / Mamba mixers, the vocabulary, and the experts
of MoE MLPs: expert parallelism).

A parameter's logical axes come from its path and rank (``param_axes``), not from annotations
in every module: the model code stays free of sharding, and each mixer declares the axes of its
own weights next to them (``param_axes``). ``RULES`` turns logical names into mesh axes; a dimension
is split only when the mesh axes divide it, otherwise it stays replicated. Under ``jax.jit``
(GSPMD) any placement gives the same numbers, so these choices only move memory and traffic.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from slm_jax.array_typing import PyTree
from slm_jax.config import MeshConfig
from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import mixer_param_axes
from slm_jax.tree_paths import path_str

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes (None: replicated). The one table of sharding rules.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # examples of a batch (activations and inputs)
    "embed": "fsdp",  # d_model side of every weight: what FSDP splits
    "vocab": "tensor",  # embedding rows / output-head columns
    "heads": "tensor",  # attention q/k/v heads (the qkv output, the o input)
    "mlp": "tensor",  # MLP hidden units
    "inner": "tensor",  # recurrent width / SSM channels and heads of RG-LRU, Mamba, Mamba-2
    "expert": "tensor",  # the stacked experts of an MoE MLP (expert parallelism; their hidden units stay whole)
    "layers": None,  # the stacked axis of scan_layers
    "length": None,
    "conv": None,  # taps of a short convolution
    "norm": None,  # norm scales: tiny, replicated
    # Activations, named in the model with nn.with_logical_constraint (the residual stream in models/block.py).
    "activation_batch": ("data", "fsdp"),
    "activation_length": None,
    "activation_embed": None,
}

# (path suffix, logical axes of the parameter's own dims). First match wins; a leaf that matches
# nothing is replicated. Trailing dims beyond the listed ones are replicated. Mixer weights come
# from each mixer's own ``param_axes`` (mixers/contract.py), more specific suffixes first.
MODEL_PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    ("embed/embedding", ("vocab", "embed")),
    ("head/kernel", ("embed", "vocab")),
    ("head/bias", ("vocab",)),
    ("moe/gate_up/kernel", ("expert", "embed", "mlp")),  # modules/moe.py: before the dense MLP's suffixes
    ("moe/down/kernel", ("expert", "mlp", "embed")),
    ("moe/up/kernel", ("expert", "embed", "mlp")),  # plain (not gated) experts: model.mlp relu2 / gelu
    ("moe/router/kernel", ("embed", None)),
    ("gate_up/kernel", ("embed", "mlp")),
    ("gate_up/bias", ("mlp",)),
    ("down/kernel", ("mlp", "embed")),
    ("down/bias", ("embed",)),
    ("up/kernel", ("embed", "mlp")),  # the non-gated GELU MLP (model.mlp: gelu)
    ("up/bias", ("mlp",)),
    ("head_bias", ("vocab",)),
    ("pos_embed/embedding", (None, "embed")),
    ("scale", ("norm",)),
)
PARAM_AXES = mixer_param_axes() + MODEL_PARAM_AXES


def resolve_mesh_shape(mesh: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with a -1 replaced by the devices the others leave; sizes must multiply to ``n_devices``."""
    sizes = [mesh.data, mesh.fsdp, mesh.tensor]
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n_devices % known:
            raise ConfigError(
                f"train.parallel.mesh {dict(zip(MESH_AXES, sizes))} fixes {known} devices per group, "
                f"which does not divide the {n_devices} devices; pick sizes whose product divides {n_devices}."
            )
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"train.parallel.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"there are {n_devices}; make the sizes multiply to the device count or set one of them to -1."
        )
    return tuple(sizes)


def make_mesh(mesh: MeshConfig, devices: list | None = None) -> Mesh:
    """A (data, fsdp, tensor) Mesh over ``devices`` (default: all, process-major, so ``tensor`` stays within a host)."""
    devices = jax.devices() if devices is None else devices
    shape = resolve_mesh_shape(mesh, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def param_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axes of the parameter at ``path`` (``params/layers_0/mlp/down/kernel``) with ``ndim`` dims."""
    lead = ("layers",) if "/periods/" in f"/{path}/" else ()
    for suffix, axes in PARAM_AXES:
        if path == suffix or path.endswith("/" + suffix):
            axes = (lead + axes)[:ndim]
            return axes + (None,) * (ndim - len(axes))
    return (None,) * ndim


def logical_to_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec for logical ``axes`` of an array of ``shape``: a dim is split only if its mesh axes divide it."""
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        target = RULES.get(name) if name else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in mesh_axes)
        if not mesh_axes or dim % size:
            spec.append(None)
            continue
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return P(*spec)


def state_specs(state: PyTree, mesh: Mesh) -> PyTree:
    """PartitionSpecs for a train state (arrays or ShapeDtypeStructs).

    A leaf whose path passes through ``params/`` (the parameters themselves and their optimizer
    moments, which mirror the parameter tree inside ``opt_state``) gets its parameter's spec;
    everything else (step, optimizer counters) is replicated.
    """

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        p = path_str(path)
        if "params/" not in p:
            return P()
        p = p[p.index("params/") :]
        return logical_to_spec(param_axes(p, len(shape)), shape, mesh)

    return jax.tree_util.tree_map_with_path(one, state)


def state_shardings(state: PyTree, mesh: Mesh) -> PyTree:
    """NamedShardings of ``state_specs``."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), state_specs(state, mesh), is_leaf=lambda x: isinstance(x, P)
    )


def activation_rules() -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """``RULES`` for activations, in the form ``flax.linen.logical_axis_rules`` takes."""
    return tuple((k, v) for k, v in RULES.items() if k.startswith("activation_"))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batches are split over (data, fsdp) along their first axis, replicated over tensor."""
    return NamedSharding(mesh, P(RULES["batch"], *(None,) * (ndim - 1)))


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: data x fsdp."""
    return math.prod(mesh.shape[a] for a in RULES["batch"])


def sharded_bytes(tree: PyTree, mesh: Mesh) -> int:
    """Bytes per device of ``tree`` (arrays or ShapeDtypeStructs) placed with ``state_specs``.

    Every spec splits dims evenly (``logical_to_spec`` checks divisibility), so each device holds
    ``size / shards`` elements of every leaf.
    """
    total = 0
    leaves = jax.tree.leaves(tree)
    specs = jax.tree.leaves(state_specs(tree, mesh), is_leaf=lambda x: isinstance(x, P))
    for leaf, spec in zip(leaves, specs):
        shards = math.prod(math.prod(mesh.shape[a] for a in ((s,) if isinstance(s, str) else s)) for s in spec if s)
        total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize // shards
    return total
