"""Imports every built-in mixer so that its ``@register_mixer`` line runs."""

from slm_jax.mixers import attention  # noqa: F401
