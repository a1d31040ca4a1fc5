"""Parameter paths as strings: the one place a jax key path becomes ``"params/layers_0/mixer/kernel"``."""


def path_str(key_path: tuple) -> str:
    """``"opt_state/0/mu/dense/kernel"`` from a jax key path (dict keys, namedtuple fields, sequence indices)."""
    parts = []
    for key in key_path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)
