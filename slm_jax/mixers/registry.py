"""The table of token mixers: the names a layer pattern may use (the contract: mixers/contract.py).

Adding a mixer is one file in this package plus one line in ``MIXERS``. From the table come
the ``model.mixers.<name>`` config sections (``MixerOptions``), the sharding axes and the LoRA
targets of every mixer; unknown names fail at config load. A layer name that joins registered
names with '+' (``attention+mamba2``) runs those mixers side by side and sums them (mixers/parallel.py).
"""

import dataclasses

from slm_jax.errors import ConfigError
from slm_jax.mixers.attention import Attention, LocalAttention
from slm_jax.mixers.baseconv import BaseConv
from slm_jax.mixers.based import Based
from slm_jax.mixers.bidirectional import Bidirectional
from slm_jax.mixers.deltanet import DeltaNet
from slm_jax.mixers.gated_deltanet import GatedDeltaNet
from slm_jax.mixers.gla import GLA
from slm_jax.mixers.h3 import H3
from slm_jax.mixers.hyena import Hyena
from slm_jax.mixers.mamba import Mamba
from slm_jax.mixers.mamba2 import Mamba2
from slm_jax.mixers.mlstm import MLSTM
from slm_jax.mixers.parallel import SEPARATOR, Parallel
from slm_jax.mixers.retnet import RetNet
from slm_jax.mixers.rglru import RGLRU
from slm_jax.mixers.rwkv7 import RWKV7
from slm_jax.mixers.short_conv import ShortConv
from slm_jax.modules.linear import dtype_of

MIXERS: dict[str, type] = {
    "attention": Attention,
    "local_attention": LocalAttention,
    "rglru": RGLRU,
    "mamba": Mamba,
    "mamba2": Mamba2,
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "gla": GLA,
    "retnet": RetNet,
    "based": Based,
    "h3": H3,
    "short_conv": ShortConv,
    "hyena": Hyena,
    "baseconv": BaseConv,
    "mlstm": MLSTM,
    "rwkv7": RWKV7,
}

# One config section per mixer: model.mixers.<name>.<field>.
MixerOptions = dataclasses.make_dataclass(
    "MixerOptions",
    [(name, cls.Options, dataclasses.field(default_factory=cls.Options)) for name, cls in MIXERS.items()],
    frozen=True,
)
MixerOptions.__module__ = __name__
MixerOptions.__doc__ = "Per-mixer options, one section per registered mixer (``model.mixers.<name>``)."


def mixer_names() -> tuple[str, ...]:
    """All registered mixer names, sorted."""
    return tuple(sorted(MIXERS))


def parallel_parts(name: str) -> tuple[str, ...]:
    """The mixer names of a layer name: ("attention", "mamba2") for "attention+mamba2", (name,) for a plain one."""
    parts = tuple(name.split(SEPARATOR))
    if len(parts) > 1 and len(set(parts)) != len(parts):
        raise ConfigError(
            f"The parallel layer {name!r} in model.layer_pattern names a mixer twice; "
            "name each mixer once (give it more heads or width instead)."
        )
    return parts


def get_mixer(name: str) -> type:
    """The mixer class registered under ``name`` (``Parallel`` for a '+' name of registered mixers); a
    ConfigError naming the valid ones otherwise."""
    parts = parallel_parts(name)
    for part in parts:
        if part not in MIXERS:
            where = f"{part!r} in the parallel layer {name!r}" if len(parts) > 1 else repr(part)
            raise ConfigError(
                f"Unknown mixer {where} in model.layer_pattern; use one of {', '.join(mixer_names())} "
                "(or several joined by '+', e.g. attention+mamba2)."
            )
    return Parallel if len(parts) > 1 else MIXERS[name]


def build_mixer(cfg, name: str):
    """The unbound mixer module for a layer ``name`` of ``cfg`` (a ModelConfig), with its own options.

    In an encoder (``cfg.causal`` false) a mixer without ``native_bidirectional`` comes wrapped in
    ``Bidirectional`` (mixers/contract.py). A '+' name is a ``Parallel`` of its parts, each built so.
    """
    cls = get_mixer(name)
    if cls is Parallel:
        parts = parallel_parts(name)
        return Parallel(parts, tuple(build_mixer(cfg, p) for p in parts), dtype=dtype_of(cfg.dtype), parent=None)
    options = getattr(cfg.mixers, name)
    if cfg.causal or getattr(cls, "native_bidirectional", False):
        return cls.from_config(cfg, options)
    return Bidirectional.from_config(cfg, cls, options)


def mixer_param_axes() -> tuple[tuple[str, tuple], ...]:
    """(path suffix from ``mixer/``, logical axes) of every registered mixer's weights.

    Mixers may share parameter names (``in_proj``, ``conv1d``) only with the same axes: a clash
    would make sharding depend on which mixer a layer happens to use.
    """
    seen: dict[str, tuple[tuple, str]] = {}
    for name, cls in MIXERS.items():
        for suffix, axes in cls.param_axes.items():
            if suffix in seen and seen[suffix][0] != tuple(axes):
                raise ValueError(
                    f"Mixers {seen[suffix][1]!r} and {name!r} give the parameter {suffix!r} different sharding axes "
                    f"({seen[suffix][0]} vs {tuple(axes)}); rename one of them."
                )
            seen[suffix] = (tuple(axes), name)
    axes = {s: a for s, (a, _) in seen.items()}
    # Encoders: the two directions of a wrapped mixer live under fwd/ and bwd/, next to the combine projection.
    axes.update({f"{d}/{s}": a for s, a in list(axes.items()) for d in ("fwd", "bwd")})
    axes.update(Bidirectional.param_axes)
    # Parallel layers (mixers/parallel.py): each part's weights live under its own name.
    axes.update({f"{n}/{s}": a for n, cls in MIXERS.items() for s, a in cls.param_axes.items()})
    # Longer suffixes first, so that "norm/scale" inside a mixer wins over a shorter generic match.
    return tuple(sorted((("mixer/" + s, a) for s, a in axes.items()), key=lambda e: -len(e[0])))


def lora_target_names() -> tuple[str, ...]:
    """Every registered mixer's default LoRA projections (module names inside ``mixer/``), also as a part of a
    parallel layer (``attention/qkv``)."""
    names = {t for cls in MIXERS.values() for t in cls.lora_targets}
    return tuple(sorted(names | {f"{n}/{t}" for n, cls in MIXERS.items() for t in cls.lora_targets}))
