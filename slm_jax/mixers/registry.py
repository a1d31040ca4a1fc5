"""Registry of token mixers: the names a layer pattern may use.

A mixer is a Flax Linen module with

  * ``__call__(x: f32[b, t, d], positions: i32[b, t], cache) -> (y: f32[b, t, d], cache)``:
    with ``cache=None`` it is the parallel (training) path and returns ``None`` as the cache;
    with a cache (from ``init_cache``) it consumes ``t >= 1`` tokens that continue the cached
    sequence (prefill when t > 1, one decode step when t == 1) and returns the updated cache.
  * ``init_cache(batch, max_len, dtype) -> pytree`` of arrays: an empty decode state. It must
    not touch parameters, so it works on an unbound module.
  * ``state_size(batch, max_len, dtype) -> int``: bytes of that decode state.
  * ``from_config(model_cfg) -> module`` classmethod: the only place a mixer reads the model
    config (the module itself takes explicit fields); it returns an unbound module
    (``parent=None``) that the Block adopts under the name ``mixer``.
  * ``num_params(model_cfg) -> int`` and ``flops_per_token(model_cfg, seq_len) -> float``
    (forward FLOPs) staticmethods/classmethods, for models/accounting.py.

Register with ``@register_mixer("name")`` on the class. Unknown names fail at config load.
"""

from typing import Callable

from slm_jax.errors import ConfigError
from slm_jax.modules.linear import dtype_of

_MIXERS: dict[str, type] = {}


def register_mixer(name: str) -> Callable[[type], type]:
    """Class decorator adding a mixer under ``name`` (a layer-pattern entry)."""

    def add(cls: type) -> type:
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"Mixer name {name!r} is registered twice.")
        _MIXERS[name] = cls
        return cls

    return add


def mixer_names() -> tuple[str, ...]:
    """All registered mixer names, sorted."""
    _import_builtin_mixers()
    return tuple(sorted(_MIXERS))


def get_mixer(name: str) -> type:
    """The mixer class registered under ``name``; a ConfigError naming the valid ones otherwise."""
    _import_builtin_mixers()
    if name not in _MIXERS:
        raise ConfigError(
            f"Unknown mixer {name!r} in model.layer_pattern; use one of {', '.join(sorted(_MIXERS))}."
        )
    return _MIXERS[name]


def _import_builtin_mixers() -> None:
    # Importing the package runs every mixer module's @register_mixer line.
    import slm_jax.mixers.builtin  # noqa: F401


def module_fields(cfg) -> dict:
    """The constructor fields every mixer takes from ``ModelConfig`` alike, for ``from_config``:
    dtypes, init scale, depth (for the scaled output init) and ``parent=None`` (unbound: the
    Block that receives the mixer adopts it as "mixer")."""
    return {"dtype": dtype_of(cfg.dtype), "param_dtype": dtype_of(cfg.param_dtype), "init_std": cfg.init_std,
            "n_layers": cfg.n_layers, "parent": None}

