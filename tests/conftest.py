"""Shared test setup: a persistent compilation cache so repeated programs compile once."""

import os

import jax
import pytest

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/slm_jax/jax_tests"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt")


@pytest.fixture
def shakespeare_path():
    if not os.path.isfile(SHAKESPEARE):
        pytest.skip("../shared/data/tinyshakespeare.txt is not present")
    return os.path.abspath(SHAKESPEARE)
