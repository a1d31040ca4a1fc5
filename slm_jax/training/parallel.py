"""Placing a training run on devices: one device, ``jax.pmap`` data parallelism, or ``jax.jit`` over a Mesh.

``make_parallel(train_cfg, abstract_state)`` returns one object with the same methods for every
``train.parallel.strategy``, so ``train()`` reads the same for all three:

- ``none`` (``Single``): the plain jitted step on the default device, exactly as before.
- ``pmap`` (``Pmap``): the state is replicated on every device (an array with a leading device
  axis), each device takes ``batch_size / n`` rows, gradients are averaged with ``lax.pmean``
  and metrics reduced before the update, so every replica applies the same update.
- ``mesh`` (``Sharded``): ``jax.jit`` over a (data, fsdp, tensor) Mesh with the parameter and
  optimizer-state placement of training/sharding.py; the batch is split over (data, fsdp).

The same code runs on one host or many (training/distributed.py): each process feeds only its
rows of the batch (pmap takes host-local arrays; a Mesh builds global ones with
``jax.make_array_from_process_local_data``), and ``saveable`` gives the state as one logical
global copy (unreplicated for pmap) that Orbax writes once and can restore on any other topology.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from slm_jax.array_typing import PyTree
from slm_jax.config import TrainConfig
from slm_jax.errors import ConfigError
from slm_jax.training.sharding import activation_rules, batch_sharding, data_parallel_size, make_mesh, state_shardings

DEVICE_AXIS = "devices"  # the pmap axis


def _devices(n: int) -> list:
    """The first ``n`` devices (0: all of them)."""
    devices = jax.devices()
    if n < 0 or n > len(devices):
        raise ConfigError(
            f"train.parallel.devices is {n} but there are {len(devices)} devices; "
            f"set it to 0 (all) or at most {len(devices)}."
        )
    if n and n < len(devices) and jax.process_count() > 1:
        raise ConfigError("train.parallel.devices must be 0 (all devices) when training on several processes.")
    return devices[:n] if n else devices


def _check_batch(tc: TrainConfig, dp: int, what: str) -> None:
    if tc.batch_size % (dp * tc.grad_accum):
        raise ConfigError(
            f"train.batch_size ({tc.batch_size}) must be divisible by the {what} ({dp}) "
            f"times train.grad_accum ({tc.grad_accum}); set it to a multiple of {dp * tc.grad_accum}."
        )


def _first_copy(x: jax.Array) -> np.ndarray:
    """This process's first copy of a replicated array, as numpy."""
    return np.asarray(x.addressable_shards[0].data) if isinstance(x, jax.Array) else np.asarray(x)


class Single:
    """``strategy: none``: one device, the single-device code path unchanged."""

    strategy = "none"
    data_parallel = 1

    def __init__(self, tc: TrainConfig, abstract_state: PyTree):
        self.tc = tc

    def abstract_state(self, abstract: PyTree) -> PyTree:
        """The restore target: shapes, dtypes and this strategy's shardings (here the default device,
        whatever topology saved the checkpoint)."""
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)

    def init(self, init_fn: Callable, optimizer) -> PyTree:
        return jax.jit(init_fn, static_argnums=0)(optimizer)

    def place(self, state: PyTree) -> PyTree:
        """A restored (saveable-form) state in the layout the step takes."""
        return state

    def compile(self, make_step: Callable, state: PyTree, batch_spec: PyTree) -> Callable:
        """``make_step(sync)`` -> step; compiled ahead of time for ``state`` and the global ``batch_spec``."""
        return jax.jit(make_step(None), donate_argnums=0).lower(state, batch_spec).compile()

    def batch(self, local: PyTree) -> PyTree:
        """This process's rows of a batch -> the step's batch argument."""
        return local

    def saveable(self, state: PyTree) -> PyTree:
        """The state as one logical copy (for checkpoints and evaluation)."""
        return state

    def host(self, tree: PyTree) -> PyTree:
        """Replicated values (metrics, step) as numpy."""
        return jax.tree.map(_first_copy, tree)


class Pmap(Single):
    """``strategy: pmap``: data parallel over every device with replicated state."""

    strategy = "pmap"

    def __init__(self, tc: TrainConfig, abstract_state: PyTree):
        super().__init__(tc, abstract_state)
        self.mesh = Mesh(np.asarray(_devices(tc.parallel.devices)), (DEVICE_AXIS,))
        self.n = self.mesh.size
        self.data_parallel = self.n
        _check_batch(tc, self.n, "number of pmap devices")
        self._replicated = NamedSharding(self.mesh, P())
        # pmap takes and returns host-local arrays: a leading axis over this process's devices.
        local = [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        self.n_local = len(local)
        self._stacked = NamedSharding(Mesh(np.asarray(local), (DEVICE_AXIS,)), P(DEVICE_AXIS))

    def abstract_state(self, abstract: PyTree) -> PyTree:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self._replicated), abstract)

    def init(self, init_fn: Callable, optimizer) -> PyTree:
        return self.place(jax.jit(init_fn, static_argnums=0, out_shardings=self._replicated)(optimizer))

    def place(self, state: PyTree) -> PyTree:
        # Each local device's copy gets a leading axis of 1: together one host-local [n_local, ...] array.
        def stack(x):
            shards = [s.data.reshape((1,) + x.shape) for s in x.addressable_shards]
            return jax.make_array_from_single_device_arrays((self.n_local,) + x.shape, self._stacked, shards)

        return jax.tree.map(stack, state)

    def compile(self, make_step: Callable, state: PyTree, batch_spec: PyTree) -> Callable:
        def sync(grads, metrics):
            # Equal rows per device, so the mean of per-device means is the global mean.
            mean = lambda t: jax.lax.pmean(t, DEVICE_AXIS)
            return mean(grads), {**mean(metrics), "tokens": jax.lax.psum(metrics["tokens"], DEVICE_AXIS)}

        step = jax.pmap(make_step(sync), axis_name=DEVICE_AXIS, devices=list(self.mesh.devices.flat), donate_argnums=0)
        local = lambda s: (self.n_local, s.shape[0] // self.n) + s.shape[1:]
        spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct(local(s), s.dtype, sharding=self._stacked), batch_spec)
        if jax.process_count() > 1:
            return step  # compiled at the first call: multi-process pmap does not lower from host-local specs
        return step.lower(state, spec).compile()

    def batch(self, local: PyTree) -> PyTree:
        per_device = self.tc.batch_size // self.n

        def put(x):
            return jax.device_put(
                x.reshape((self.n_local, per_device) + x.shape[1:]), self._stacked
            )  # [local devices, b / n, ...]

        return jax.tree.map(put, local)

    def saveable(self, state: PyTree) -> PyTree:
        def unstack(x):
            shards = [s.data.reshape(x.shape[1:]) for s in x.addressable_shards]
            return jax.make_array_from_single_device_arrays(x.shape[1:], self._replicated, shards)

        return jax.tree.map(unstack, state)

    def host(self, tree: PyTree) -> PyTree:
        # Step outputs carry the device axis (every device holds the same reduced value).
        def one(x):
            a = _first_copy(x)
            stacked = (
                isinstance(x, jax.Array)
                and isinstance(x.sharding, NamedSharding)
                and x.sharding.spec == self._stacked.spec
            )
            return a.reshape(a.shape[1:]) if stacked else a

        return jax.tree.map(one, tree)


class Sharded(Single):
    """``strategy: mesh``: ``jax.jit`` over a (data, fsdp, tensor) Mesh; params and optimizer state sharded."""

    strategy = "mesh"

    def __init__(self, tc: TrainConfig, abstract_state: PyTree):
        super().__init__(tc, abstract_state)
        self.mesh = make_mesh(tc.parallel.mesh, _devices(tc.parallel.devices))
        self.data_parallel = data_parallel_size(self.mesh)
        _check_batch(tc, self.data_parallel, "data-parallel size data x fsdp")
        self.shardings = state_shardings(abstract_state, self.mesh)
        self._replicated = NamedSharding(self.mesh, P())

    def abstract_state(self, abstract: PyTree) -> PyTree:
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.shardings)

    def init(self, init_fn: Callable, optimizer) -> PyTree:
        return jax.jit(init_fn, static_argnums=0, out_shardings=self.shardings)(optimizer)

    def compile(self, make_step: Callable, state: PyTree, batch_spec: PyTree) -> Callable:
        grad_shardings = self.shardings["params"]

        def sync(grads, metrics):
            # Gradients land where their parameters live: a reduce-scatter over fsdp, not an all-reduce.
            return jax.lax.with_sharding_constraint(grads, grad_shardings), metrics

        batch_shardings = jax.tree.map(lambda s: batch_sharding(self.mesh, len(s.shape)), batch_spec)
        step = jax.jit(
            make_step(sync),
            in_shardings=(self.shardings, batch_shardings),
            out_shardings=(self.shardings, self._replicated),
            donate_argnums=0,
        )
        spec = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), batch_spec, batch_shardings
        )
        # Traced under the mesh and the activation rules, so the model's logical constraints take effect.
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(activation_rules()):
            lowered = step.lower(self.abstract_state(state), spec)
        return lowered.compile()

    def batch(self, local: PyTree) -> PyTree:
        def put(x):
            global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
            return jax.make_array_from_process_local_data(batch_sharding(self.mesh, x.ndim), x, global_shape)

        return jax.tree.map(put, local)


STRATEGIES = {"none": Single, "pmap": Pmap, "mesh": Sharded}


def make_parallel(tc: TrainConfig, abstract_state: PyTree) -> Single:
    """The placement object for ``tc.parallel.strategy`` (see the module docstring)."""
    if tc.parallel.strategy == "none" and jax.process_count() > 1:
        raise ConfigError(
            f"This run has {jax.process_count()} processes but train.parallel.strategy is none; set it to pmap or mesh."
        )
    return STRATEGIES[tc.parallel.strategy](tc, abstract_state)
