"""Multi-host start-up: join JAX's distributed runtime when the environment says this is one of several processes.

``slm train`` calls ``initialize()`` before anything touches a device. It acts when

- ``JAX_COORDINATOR_ADDRESS`` is set (``host:port`` of process 0), with ``JAX_NUM_PROCESSES``
  and ``JAX_PROCESS_ID`` (a multi-GPU box or any hand-made launch), or
- Slurm started several tasks (``SLURM_JOB_ID`` with ``SLURM_NTASKS`` > 1), or
- a multi-host Cloud TPU slice is detected (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES``
  list several hosts),

and leaves the rest to ``jax.distributed.initialize``'s own cluster detection. On CPU the
cross-process collectives need gloo, which must be chosen before the runtime starts;
``JAX_NUM_CPU_DEVICES`` gives each process several CPU devices (JAX reads it itself).
Every process then runs the same program on global arrays; each reads only its rows of every
batch (data/pipeline.py) and process 0 alone writes the run files (train.py).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax

from slm_jax.errors import ConfigError


def _several(value: str | None, sep: str = ",") -> bool:
    return bool(value) and len([v for v in value.split(sep) if v.strip()]) > 1


def launched_distributed(env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``env`` describes one process of a multi-process launch (module docstring)."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return _several(env.get("TPU_WORKER_HOSTNAMES")) or _several(env.get("TPU_PROCESS_ADDRESSES"))


def _int_env(env: Mapping[str, str], key: str) -> int | None:
    if key not in env:
        return None
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(
            f"The environment variable {key}={env[key]!r} must be an integer; fix the launch script."
        ) from None


def initialize(env: Mapping[str, str] = os.environ) -> bool:
    """Start ``jax.distributed`` if ``env`` asks for it; return whether this is a multi-process run.

    Must run before the first use of a device. Idempotent.
    """
    if not launched_distributed(env):
        return False
    if jax.distributed.is_initialized():
        return True
    if env.get("JAX_COORDINATOR_ADDRESS") and (
        _int_env(env, "JAX_NUM_PROCESSES") is None or _int_env(env, "JAX_PROCESS_ID") is None
    ):
        if not env.get("SLURM_JOB_ID"):
            raise ConfigError(
                "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES or JAX_PROCESS_ID is not; "
                "set both in every process (process 0 listens on the coordinator address)."
            )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only the CPU backend reads it
    try:
        jax.distributed.initialize(
            num_processes=_int_env(env, "JAX_NUM_PROCESSES"), process_id=_int_env(env, "JAX_PROCESS_ID")
        )
    except (ValueError, RuntimeError) as e:
        raise ConfigError(
            f"Joining the distributed run failed ({str(e).splitlines()[0]}); "
            "check the coordinator address, process count and id."
        ) from None
    return True
