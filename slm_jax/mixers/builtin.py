"""Imports every built-in mixer so that its ``@register_mixer`` line runs."""

from slm_jax.mixers import attention  # noqa: F401
from slm_jax.mixers import mamba  # noqa: F401
from slm_jax.mixers import mamba2  # noqa: F401
from slm_jax.mixers import rglru  # noqa: F401
