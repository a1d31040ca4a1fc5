"""The model shapes that ../shared/peers/ measures, shared by the benchmark scripts.

vocab 512, width 256, 4 layers, 4 heads, SwiGLU/GeGLU 688, untied head, float32; Griffin as
recurrentgemma_bench.py builds it: pattern R,R,A,R, multi-query attention, recurrence width =
model width and an attention window of 2048.
"""

from slm_jax.config import Config, config_from_dict

BASE = {
    "model": {"vocab_size": 512, "d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 688, "tie_embeddings": False},
    "train": {"batch_size": 16, "seq_len": 256},
    "optim": {"warmup_steps": 10},
}
TWEAKS = {"griffin": {"n_kv_heads": 1, "mixers": {"local_attention": {"window": 2048}, "rglru": {"width": 256}}}}


def peer_config(preset: str | None, overrides: list[str] = ()) -> Config:
    """The peer-shaped config of ``preset`` (None: the base transformer), then ``overrides``."""
    raw = {**BASE, "model": {**BASE["model"], **({"preset": preset} if preset else {}), **TWEAKS.get(preset, {})}}
    return config_from_dict(raw, list(overrides))
