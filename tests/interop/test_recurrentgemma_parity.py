"""Griffin parity against Google DeepMind's ``recurrentgemma`` JAX package (a tiny random config).

Its parameters are mapped into ours by hand below. Two conventions differ from Hugging Face's
port: the local-attention window there admits ``attention_window_size + 1`` tokens (the query
and W earlier ones: ``q <= k + W``), so our ``model.mixers.local_attention.window`` is W + 1; and its ``a_param`` is
Hugging Face's ``recurrent_param`` (ours is its negation). Skipped when the package is absent:
``pip install recurrentgemma`` pins numpy < 2.4 and absl-py < 2, which conflicts with this
environment, so install it with ``--no-deps`` into a separate directory on PYTHONPATH.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

rg = pytest.importorskip("recurrentgemma.jax")

from slm_jax.config import config_from_dict  # noqa: E402
from slm_jax.interop.hf_config import bfloat16_round  # noqa: E402
from slm_jax.models.lm import CausalLM  # noqa: E402

D, V, H, F, LRU, W = 64, 97, 4, 96, 48, 8


def _ours_from_deepmind(p: dict, block_types) -> dict:
    """DeepMind Griffin params -> our {"params": ...} (per-layer layout)."""
    out = {"embed": {"embedding": p["embedder"]["input_embedding"]}, "final_norm": {"scale": p["final_norm"]["scale"]}}
    for i, kind in enumerate(block_types):
        b = p[f"blocks.{i}"]
        up = b["mlp_block"]["ffw_up"]
        layer = {
            "mixer_norm": {"scale": b["temporal_pre_norm"]["scale"]},
            "mlp_norm": {"scale": b["channel_pre_norm"]["scale"]},
            "mlp": {
                "gate_up": {"kernel": jnp.concatenate([up["w"][0], up["w"][1]], axis=1), "bias": up["b"].reshape(-1)},
                "down": dict(b["mlp_block"]["ffw_down"]),
            },
        }
        if kind == rg.TemporalBlockType.RECURRENT:
            r = b["recurrent_block"]
            lru = r["rg_lru"]
            layer["mixer"] = {
                "in_proj": {
                    "kernel": jnp.concatenate([r["linear_y"]["kernel"], r["linear_x"]["kernel"]], axis=1),
                    "bias": jnp.concatenate([r["linear_y"]["bias"], r["linear_x"]["bias"]]),
                },
                "conv1d": {"kernel": r["conv_1d"]["w"], "bias": r["conv_1d"]["b"]},
                "gate_a": {"kernel": lru["a_gate"]["w"], "bias": lru["a_gate"]["b"].reshape(-1)},
                "gate_x": {"kernel": lru["input_gate"]["w"], "bias": lru["input_gate"]["b"].reshape(-1)},
                "a_param": -lru["a_param"],
                "out_proj": dict(r["linear_out"]),
            }
        else:
            a = b["attention_block"]
            qkv = jnp.concatenate([a["proj_q"]["kernel"], a["proj_k"]["kernel"], a["proj_v"]["kernel"]], axis=1)
            layer["mixer"] = {"qkv": {"kernel": qkv}, "o": dict(a["proj_final"])}
        out[f"layers_{i}"] = layer
    return {"params": out}


def test_griffin_matches_recurrentgemma():
    blocks = (rg.TemporalBlockType.RECURRENT, rg.TemporalBlockType.RECURRENT, rg.TemporalBlockType.ATTENTION)
    config = rg.GriffinConfig(
        vocab_size=V,
        width=D,
        mlp_expanded_width=F,
        num_heads=H,
        block_types=blocks,
        embeddings_scale_by_sqrt_dim=True,
        attention_window_size=W,
        logits_soft_cap=30.0,
        lru_width=LRU,
    )
    theirs = rg.Griffin(config, gradient_checkpointing=False)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, V, (2, 24)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(24), tokens.shape)
    params = theirs.init(jax.random.key(0), tokens, positions)
    leaves, tree = jax.tree.flatten(params)  # perturb everything so zero-initialised biases count too
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
    ref, _ = theirs.apply(params, tokens, positions, return_cache=False)

    cfg = config_from_dict(
        {
            "model": {
                "preset": "griffin",
                "n_layers": 3,
                "d_model": D,
                "n_heads": H,
                "n_kv_heads": 1,
                "vocab_size": V,
                "d_ff": F,
                "mlp": "geglu",
                "mlp_bias": True,
                "attn_out_bias": True,
                "norm_eps": 1e-6,
                "norm_offset": 1.0,
                "embed_scale": bfloat16_round(D**0.5),
                "logit_softcap": 30.0,
                "rotary_fraction": 0.5,
                "tie_embeddings": True,
                "mixers": {
                    "local_attention": {"window": W + 1},
                    "rglru": {
                        "width": LRU,
                        "n_heads": H,
                        "conv_width": 4,
                        "c": 8.0,
                        "bias": True,
                        "reset_at_zero": True,
                    },
                },
            }
        }
    )
    ours, _ = CausalLM(cfg.model).apply(_ours_from_deepmind(params["params"], blocks), tokens, positions)
    diff = float(jnp.abs(ours - ref).max())
    print(f"\nrecurrentgemma (DeepMind JAX) -> slm_jax: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4
