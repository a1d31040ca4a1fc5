"""Parallel mixers: several token mixers side by side on the same input, their outputs summed.

    y = mixer_1(x) + mixer_2(x) + ...          x, y: f32[b, t, d]

A layer-pattern entry that joins registered mixer names with '+' (``attention+mamba2``) builds one; each part
keeps its own ``model.mixers.<name>`` options. This is Falcon-H1's hybrid layer (Zuo et al. 2025,
arXiv:2507.22448: attention and Mamba-2 heads read the same normed input and both add to the residual).

Everything a mixer declares comes from its parts, each under its own name: parameters
``mixer/<name>/...`` (so sharding axes, LoRA targets and quantization find them as in a plain layer), the
decode cache one flat dict with keys ``<name>/<leaf>`` (``attention/k``, ``mamba2/h``: the int8 cache and
``kv_leaves`` see ordinary leaves), parameter and FLOP counts the parts' sums.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree

SEPARATOR = "+"


def _sub(tree: dict, name: str) -> dict:
    """The leaves ``<name>/<leaf>`` of a flat composite cache/state as the part's own ``{leaf: ...}``."""
    prefix = name + "/"
    return {k.removeprefix(prefix): v for k, v in tree.items() if k.startswith(prefix)}


def _prefixed(tree: dict, name: str) -> dict:
    """A part's ``{leaf: ...}`` as the composite's ``{<name>/<leaf>: ...}``."""
    return {f"{name}/{k}": v for k, v in tree.items()}


class Parallel(nn.Module):
    """f32[b, t, d] -> f32[b, t, d]: the sum of ``parts`` (unbound mixers, adopted under ``names``) on the same x."""

    names: tuple[str, ...]
    parts: tuple[nn.Module, ...]
    dtype: Any = jnp.float32  # handed to every part (the contract's bfloat16 check clones this field)
    native_bidirectional = True  # each part is built for the encoder already (wrapped if it needs it)

    def _bound(self) -> list[nn.Module]:
        # A deep clone: a wrapped part (an encoder's Bidirectional) must not bring children adopted elsewhere.
        return [
            p.clone(parent=self, name=n, dtype=self.dtype, _deep_clone=True)
            for n, p in zip(self.names, self.parts, strict=True)
        ]

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        cache: PyTree = None,
        lengths: Array | None = None,
        segment_ids: Array | None = None,
    ) -> tuple[Array, PyTree]:
        """x f32[b, t, d], positions i32[b, t] -> (sum of the parts' outputs f32[b, t, d], cache or None).
        ``lengths`` i32[b] (encoders) and ``segment_ids`` i32[b, t] (packed rows) go to every part."""
        padding = () if lengths is None else (lengths,)
        packing = {} if segment_ids is None else {"segment_ids": segment_ids}
        y, new_cache = None, {}
        for name, part in zip(self.names, self._bound(), strict=True):
            part_cache = None if cache is None else _sub(cache, name)
            out, part_cache = part(x, positions, part_cache, *padding, **packing)
            y = out if y is None else y + out
            if cache is not None:
                new_cache.update(_prefixed(part_cache, name))
        return y, None if cache is None else new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> PyTree:
        """``{<name>/<leaf>: ...}``: every part's empty cache in one flat dict."""
        cache = {}
        for name, part in zip(self.names, self.parts, strict=True):
            cache.update(_prefixed(part.init_cache(batch, max_len, dtype), name))
        return cache

    def num_params(self) -> int:
        return sum(p.num_params() for p in self.parts)

    def flops_per_token(self, seq_len: int) -> float:
        """The parts' forward FLOPs per token plus one add per output channel per extra part."""
        return sum(p.flops_per_token(seq_len) for p in self.parts) + (len(self.parts) - 1) * self.parts[0].width

    def reference(self, variables: PyTree, x: Array, positions: Array) -> tuple[Array, PyTree]:
        """The sum of the parts' references, and their final states under ``<name>/<leaf>``."""
        p, y, state = variables["params"], 0.0, {}
        for name, part in zip(self.names, self.parts, strict=True):
            out, part_state = part.reference({"params": p[name]}, x, positions)
            y, state = y + out, {**state, **_prefixed(part_state, name)}
        return y, state

    # The declarations of mixers/contract.py, derived from the parts.
    @property
    def param_axes(self) -> dict:
        return {f"{n}/{s}": a for n, p in zip(self.names, self.parts) for s, a in p.param_axes.items()}

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return tuple(f"{n}/{t}" for n, p in zip(self.names, self.parts) for t in p.lora_targets)

    @property
    def kv_leaves(self) -> tuple[str, ...]:
        return tuple(f"{n}/{k}" for n, p in zip(self.names, self.parts) for k in p.kv_leaves)

    @property
    def test_variants(self) -> tuple[dict, ...]:
        """Each part's variants, one part changed at a time (as ``parts`` overrides of this module)."""
        return tuple(
            {"parts": tuple(q.clone(**fields) if j == i else q for j, q in enumerate(self.parts))}
            for i, p in enumerate(self.parts)
            for fields in p.test_variants
        )
