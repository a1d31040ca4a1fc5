"""The table of token mixers: the names a layer pattern may use (the contract: mixers/contract.py).

Adding a mixer is one file in this package plus one line in ``MIXERS``. From the table come
the ``model.mixers.<name>`` config sections (``MixerOptions``), the sharding axes and the LoRA
targets of every mixer; unknown names fail at config load.
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
from slm_jax.mixers.retnet import RetNet
from slm_jax.mixers.rglru import RGLRU
from slm_jax.mixers.rwkv7 import RWKV7
from slm_jax.mixers.short_conv import ShortConv

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


def get_mixer(name: str) -> type:
    """The mixer class registered under ``name``; a ConfigError naming the valid ones otherwise."""
    if name not in MIXERS:
        raise ConfigError(f"Unknown mixer {name!r} in model.layer_pattern; use one of {', '.join(mixer_names())}.")
    return MIXERS[name]


def build_mixer(cfg, name: str):
    """The unbound mixer module for a layer ``name`` of ``cfg`` (a ModelConfig), with its own options.

    In an encoder (``cfg.causal`` false) a mixer without ``native_bidirectional`` comes wrapped in
    ``Bidirectional`` (mixers/contract.py).
    """
    cls, options = get_mixer(name), getattr(cfg.mixers, name)
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
    # Longer suffixes first, so that "norm/scale" inside a mixer wins over a shorter generic match.
    return tuple(sorted((("mixer/" + s, a) for s, a in axes.items()), key=lambda e: -len(e[0])))


def lora_target_names() -> tuple[str, ...]:
    """Every registered mixer's default LoRA projections (module names inside ``mixer/``)."""
    return tuple(sorted({n for cls in MIXERS.values() for n in cls.lora_targets}))
