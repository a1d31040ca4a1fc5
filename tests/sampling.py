"""Parametrize over every preset, but run only a sample of them by default (CI has 45 minutes on 2 cores)."""

import pytest


def default_sample(names, keep) -> list:
    """``names`` as pytest parameters: those in ``keep`` run by default, the others only with ``-m slow``."""
    unknown = set(keep) - set(names)
    assert not unknown, f"default sample names {sorted(unknown)} are not among the parameters"
    return [n if n in keep else pytest.param(n, marks=pytest.mark.slow) for n in names]
