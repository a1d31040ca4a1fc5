"""Tensor bookkeeping shared by the family converters: take by name with shape checks, layout changes.

Layouts: a torch ``nn.Linear`` weight is [out, in] and ours (``Linear.kernel``) is [in, out];
a depthwise ``nn.Conv1d`` weight is [c, 1, k] and ours (``CausalConv1D.kernel``) is [k, c]
(both compute y_t = sum_j w[j] x_{t - (k - 1) + j}, so only the axes move).
"""

from __future__ import annotations

import re

import numpy as np

from slm_jax.errors import CheckpointError

# Buffers some older checkpoints saved next to the weights; they are recomputed, never read.
_IGNORED = (re.compile(r".*rotary_emb\.inv_freq$"), re.compile(r".*\.masked_bias$"), re.compile(r".*\.attn\.bias$"))


class Tensors:
    """A checkpoint's tensors, taken one by one; ``finish()`` fails on any tensor left unused.

    Every tensor is returned as float32 (the converters' working precision).
    """

    def __init__(self, tensors: dict[str, np.ndarray], where: str):
        self._tensors = dict(tensors)
        self._used: set[str] = set()
        self.where = where

    def has(self, name: str) -> bool:
        return name in self._tensors

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor ``name`` as float32, checked against ``shape`` when given."""
        if name not in self._tensors:
            raise CheckpointError(
                f"{self.where} has no tensor {name}, which its config.json implies; "
                "the checkpoint and config do not match."
            )
        a = np.asarray(self._tensors[name], dtype=np.float32)
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise CheckpointError(
                f"Tensor {name} in {self.where} has shape {tuple(a.shape)} but config.json implies {tuple(shape)}; "
                "the checkpoint and config do not match."
            )
        self._used.add(name)
        return a

    def skip(self, name: str) -> None:
        """Mark a stored buffer the model recomputes (no weights: a causal mask, RoPE tables) as used, if present."""
        if name in self._tensors:
            self._used.add(name)

    def skip_prefix(self, prefix: str) -> None:
        """Mark every tensor under ``prefix`` as used: heads the model does not run (multi-token prediction)."""
        self._used.update(n for n in self._tensors if n.startswith(prefix))

    def finish(self) -> None:
        """Raise if a tensor was never taken: it would be a silently dropped part of the model."""
        left = sorted(n for n in self._tensors if n not in self._used and not any(p.match(n) for p in _IGNORED))
        if left:
            raise CheckpointError(
                f"{self.where} holds tensor {left[0]} ({len(left)} unused in all) that the converter does not map; "
                "this architecture variant is not supported, so nothing was converted."
            )


def head_from_hf(t: Tensors, tied: bool, embedding: np.ndarray, name: str = "lm_head.weight") -> dict:
    """``{"head": {"kernel"}}`` from the head ``name`` [v, d] of an untied model; ``{}`` for a tied one.

    Some files store a tied head too: it must then equal the embedding table ``embedding`` [v, d].
    """
    shape = embedding.shape
    if not tied:
        return {"head": {"kernel": linear_in(t.take(name, shape))}}
    if t.has(name) and not np.array_equal(t.take(name, shape), embedding):
        raise CheckpointError(
            f"{t.where} has tie_word_embeddings true but an {name} unlike the embedding table; "
            "set it to false in config.json."
        )
    return {}


def linear_from_hf(t: Tensors, name: str, shape: tuple[int, int], bias: bool) -> dict:
    """``{"kernel" [in, out], "bias"?}`` of our Linear from the torch Linear ``name`` of weight ``shape`` [out, in]."""
    out = {"kernel": linear_in(t.take(name + ".weight", shape))}
    if bias:
        out["bias"] = t.take(name + ".bias", (shape[0],))
    return out


def ends_to_hf(p: dict, tied: bool, embedding: str, final_norm: str) -> dict[str, np.ndarray]:
    """The embedding table, final norm and (untied) ``lm_head`` of our parameters ``p`` under the HF names given."""
    out = {embedding: f32(p["embed"]["embedding"]), final_norm: f32(p["final_norm"]["scale"])}
    if not tied:
        out["lm_head.weight"] = linear_out(p["head"]["kernel"])
    return out


def gated_mlp_from_hf(t: Tensors, pre: str, d: int, f: int) -> dict:
    """``pre`` + ``{gate,up,down}_proj.weight`` (Llama's MLP names) as our gated MLP {gate_up (gate first), down}."""
    gate_up = np.concatenate([t.take(pre + "gate_proj.weight", (f, d)), t.take(pre + "up_proj.weight", (f, d))])
    return {
        "gate_up": {"kernel": linear_in(gate_up)},
        "down": {"kernel": linear_in(t.take(pre + "down_proj.weight", (d, f)))},
    }


def gated_mlp_to_hf(mlp: dict, pre: str) -> dict[str, np.ndarray]:
    """Inverse of ``gated_mlp_from_hf``."""
    gate, up = np.split(linear_out(mlp["gate_up"]["kernel"]), 2)
    down = linear_out(mlp["down"]["kernel"])
    return {pre + "gate_proj.weight": gate, pre + "up_proj.weight": up, pre + "down_proj.weight": down}


def experts_from_hf(t: Tensors, pre: str, n: int, d: int, f: int) -> dict:
    """Experts saved one by one, ``pre`` + ``j.{gate,up,down}_proj.weight`` for j < n, as our stacked expert
    kernels {gate_up [n, d, 2f], down [n, f, d]} (Jamba, Qwen3-Next: transformers saves its fused experts so)."""
    experts = [gated_mlp_from_hf(t, f"{pre}{j}.", d, f) for j in range(n)]
    return {key: {"kernel": np.stack([x[key]["kernel"] for x in experts])} for key in ("gate_up", "down")}


def experts_to_hf(moe: dict, pre: str) -> dict[str, np.ndarray]:
    """Inverse of ``experts_from_hf`` (``moe``: our MoE parameters)."""
    out: dict[str, np.ndarray] = {}
    for j, (gate_up, down) in enumerate(zip(moe["gate_up"]["kernel"], moe["down"]["kernel"])):
        out.update(gated_mlp_to_hf({"gate_up": {"kernel": gate_up}, "down": {"kernel": down}}, f"{pre}{j}."))
    return out


def linear_in(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> our kernel [in, out]."""
    return np.ascontiguousarray(weight.T)


def linear_out(kernel: np.ndarray) -> np.ndarray:
    """Our kernel [in, out] -> torch Linear weight [out, in]."""
    return np.ascontiguousarray(np.asarray(kernel, np.float32).T)


def conv_in(weight: np.ndarray) -> np.ndarray:
    """torch depthwise Conv1d weight [c, 1, k] -> our kernel [k, c]."""
    return np.ascontiguousarray(weight[:, 0, :].T)


def conv_out(kernel: np.ndarray) -> np.ndarray:
    """Our kernel [k, c] -> torch depthwise Conv1d weight [c, 1, k]."""
    return np.ascontiguousarray(np.asarray(kernel, np.float32).T[:, None, :])


def f32(a) -> np.ndarray:
    """Any array (jax or numpy) as a float32 numpy array."""
    return np.asarray(a, dtype=np.float32)
