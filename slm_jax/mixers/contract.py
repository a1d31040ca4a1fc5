"""What a token mixer is: the contract every file in slm_jax/mixers/ fulfils, and its shared helpers.

A mixer is a Flax Linen module, built by ``from_config``, with

  * ``__call__(x: f32[b, t, d], positions: i32[b, t], cache) -> (y: f32[b, t, d], cache)``:
    with ``cache=None`` it is the parallel (training) path and returns ``None`` as the cache;
    with a cache (from ``init_cache``) it consumes ``t >= 1`` tokens that continue the cached
    sequence (prefill when t > 1, one decode step when t == 1) and returns the updated cache.
  * ``__call__(..., segment_ids=s)`` with ``s`` i32[b, t] and no cache: packed rows, several
    documents per row (ops/segments.py). The output must equal each document run alone from
    an empty state (positions restarting at 0 in each): nothing may cross a boundary, neither
    attention, nor a recurrent state, nor a convolution window or token shift, in the parallel,
    chunked and scan paths alike (tests/mixers/test_contract.py runs every ``test_variants`` path).
  * ``init_cache(batch, max_len, dtype) -> dict`` of arrays: an empty decode state. It must not
    touch parameters, so it works on an unbound module. Its size in bytes (``state_bytes``) is
    derived from ``jax.eval_shape`` of it, never written by hand.
  * ``reference(variables, x, positions) -> (y, state)``: the slow, obviously correct definition
    (a Python loop over time, straight from the paper), returning the outputs and the final
    decode state as a dict whose keys are a subset of the cache's. Tests hold every fast path
    to it (tests/mixers/test_contract.py).
  * ``num_params() -> int`` and ``flops_per_token(seq_len) -> float`` (forward FLOPs): closed
    forms on the unbound module, for models/accounting.py; tested against the real parameter
    tree and against XLA's own count.

and, as class attributes next to its parameters:

  * ``Options``: a frozen dataclass of the mixer's own settings, ``model.mixers.<name>.<field>``
    in YAML and ``--set`` (validated at config load by building the module);
    ``from_config(cfg, options)`` is the only place a mixer reads the config.
  * ``param_axes``: ``{path suffix inside the mixer: logical axes}`` for every weight (the
    names of training/sharding.py's ``RULES``), so tensor/FSDP sharding knows it.
  * ``lora_targets``: names of its ``Linear`` projections that LoRA adapts by default.
  * ``kv_leaves``: cache leaves that grow with the context (keys and values), the ones
    ``model.cache_quant=int8_kv`` stores as int8; every other float leaf is a fixed-size state.
  * ``test_variants``: field overrides (other scan implementations, chunk sizes) that must give
    the same numbers as the default module; the contract test runs each.
  * ``test_options``: small ``Options`` overrides the contract test builds the mixer with
    (awkward sizes: widths that are not powers of two, windows shorter than the sequence).
  * ``native_bidirectional`` (optional, default False): how the mixer serves an encoder
    (``model.causal=false``). False: mixers/bidirectional.py wraps two copies of it, one run on
    each sequence reversed within its valid length, so a new mixer is bidirectional for free.
    True: it reads ``cfg.causal`` in ``from_config`` itself and its ``__call__`` takes
    ``lengths: i32[b]`` as a fourth argument to ignore right padding (attention drops its
    causal mask instead of running twice).

Register a mixer with one line in mixers/registry.py.
"""

from typing import Any

import jax
import numpy as np

from slm_jax.modules.linear import dtype_of


def module_fields(cfg) -> dict:
    """The constructor fields every mixer takes from ``ModelConfig`` alike, for ``from_config``:
    dtypes, init scale, depth (for the scaled output init) and ``parent=None`` (unbound: the
    Block that receives the mixer adopts it as "mixer")."""
    return {
        "dtype": dtype_of(cfg.dtype),
        "param_dtype": dtype_of(cfg.param_dtype),
        "init_std": cfg.init_std,
        "n_layers": cfg.n_layers,
        "parent": None,
    }


def state_bytes(mixer, batch: int, max_len: int, dtype: Any = np.float32) -> int:
    """Bytes of ``mixer.init_cache(batch, max_len, dtype)``, from its shapes alone (nothing is allocated)."""
    shapes = jax.eval_shape(lambda: mixer.init_cache(batch, max_len, dtype))
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes))
