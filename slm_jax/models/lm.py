"""CausalLM: embedding, a stack of blocks from the layer pattern, final norm, output head.

BERT-family options (Devlin et al. 2019; Warner et al. 2024, ModernBERT): learned absolute positions
added to the embedding (``model.position: learned``), a norm after the embedding sum
(``model.embed_norm``), post-norm blocks without a final norm (``model.norm_position: post``), and
the masked-LM head transform dense -> GELU -> norm before the tied decoder (``model.mlm_head_transform``)
plus an output bias (``model.head_bias``).

Model contract (DESIGN.md): ``params = model.init(rng, tokens, positions)`` and
``logits, cache = model.apply(params, tokens, positions, cache)``; the cache is an explicit
pytree created by ``model.init_cache(batch, max_len)`` and passed in and out, None when not
decoding. With ``scan_layers`` the repeats of the pattern's period are stacked with
``nn.scan`` (compile time flat in depth); layers left over when the period does not divide
``n_layers`` are unrolled after them. Parameter paths therefore differ between the two modes:
``stack_layers`` / ``unstack_layers`` convert between them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from slm_jax.array_typing import Array, PyTree
from slm_jax.config import ModelConfig
from slm_jax.errors import ConfigError
from slm_jax.mixers.bidirectional import NO_CACHE
from slm_jax.models.block import Block, build_block, layer_mixer
from slm_jax.models.shared_block import SharedBlocks, init_shared_cache
from slm_jax.modules.embed import Embed, soft_cap
from slm_jax.modules.linear import Linear, dtype_of
from slm_jax.modules.norms import make_norm
from slm_jax.ops.segments import check_parallel_only
from slm_jax.quant.cache import quantize_cache


class Period(nn.Module):
    """One repeat of the layer pattern; the unit that ``nn.scan`` stacks."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, caches: PyTree, lengths: Array | None = None, segment_ids: Array | None = None
    ) -> tuple[Array, PyTree]:
        block_cls = nn.remat(Block, prevent_cse=False) if self.cfg.remat else Block
        new = []
        for j, mixer_name in enumerate(self.cfg.pattern):
            x, c = build_block(self.cfg, mixer_name, block_cls, name=f"block_{j}", layer=j)(
                x, positions, None if caches is None else caches[j], lengths, segment_ids
            )
            new.append(c)
        return x, None if caches is None else tuple(new)


def _layout(cfg: ModelConfig) -> tuple[int, int]:
    """(number of scanned periods, index of the first unrolled layer)."""
    if not cfg.scan_layers:
        return 0, 0
    n_rep = cfg.n_layers // len(cfg.pattern)
    return n_rep, n_rep * len(cfg.pattern)


def check_packing(cfg: ModelConfig, positions: Array | None, cache: PyTree) -> None:
    """One sentence for each way packed rows (``segment_ids``) cannot be used."""
    if not cfg.causal:
        raise ConfigError("Packed rows (segment_ids) are for causal models; give an encoder one document per row.")
    check_parallel_only(True, cache)
    if positions is None:
        raise ConfigError("Packed rows need positions that restart at 0 in each document; pass positions too.")


class CausalLM(nn.Module):
    """tokens i32[b, t], positions i32[b, t] -> logits f32[b, t, v] (and the updated cache).

    ``logit_positions`` i32[b, m] computes the logits only at those positions (f32[b, m, v]):
    the final-norm hidden states are gathered before the head, which cuts the head's cost
    by t / m when only a few positions are scored (synthetic recall tasks).

    The final-norm hidden states f32[b, t, d] of every position are sown as
    ``intermediates/final_hidden``: ``apply(..., mutable="intermediates")`` returns them
    (modules/heads.py ``final_hidden``), a no-op otherwise.

    An encoder (``cfg.causal`` false, mixers/bidirectional.py) takes ``lengths`` i32[b], the valid
    tokens of each right-padded row (None: no padding), has no decode cache, and reserves the id
    ``vocab_size`` as its mask token (training/mlm.py): its embedding has one more row, which the
    tied output head leaves out.

    ``segment_ids`` i32[b, t] packs several documents into a row (ops/segments.py): every layer
    keeps them apart, so the logits equal each document's run alone when ``positions`` restart
    at 0 at each document. Parallel path of a causal model only.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        cache: PyTree = None,
        logit_positions: Array | None = None,
        lengths: Array | None = None,
        segment_ids: Array | None = None,
    ) -> tuple[Array, PyTree]:
        cfg = self.cfg
        if segment_ids is not None:
            check_packing(cfg, positions, cache)
        if not cfg.causal and cache is not None:
            raise ConfigError(NO_CACHE)
        lengths = None if cfg.causal else lengths  # right padding never reaches a causal model's real tokens
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        norm = lambda name: make_norm(cfg.norm, cfg.norm_eps, cfg.norm_offset, cfg.norm_bias, dtype, param_dtype, name)
        embed = Embed(cfg.vocab_size + (not cfg.causal), cfg.d_model, dtype, param_dtype, cfg.init_std, name="embed")
        x = embed(tokens)
        if cfg.embed_scale != 1.0:  # Gemma: sqrt(d_model), rounded to the compute dtype like HF
            x = x * jnp.asarray(cfg.embed_scale, x.dtype)
        if cfg.position == "learned":
            if tokens.shape[1] > cfg.max_positions:
                raise ConfigError(
                    f"A sequence of {tokens.shape[1]} tokens is longer than model.max_positions "
                    f"({cfg.max_positions}), the learned position table; shorten the input."
                )
            x = x + Embed(cfg.max_positions, cfg.d_model, dtype, param_dtype, cfg.init_std, name="pos_embed")(positions)
        if cfg.embed_norm:
            x = norm("embed_norm")(x)
        n_rep, first = _layout(cfg)
        new_cache = {}
        if n_rep:
            # With model.remat each block inside the period is rematerialised (Period); wrapping the period too
            # would recompute every block twice in the backward pass.
            scanned = nn.scan(
                Period,
                # MoE layers sow their balancing loss (modules/moe.py): stacked per period, like the params.
                variable_axes={"params": 0, **({"intermediates": 0} if cfg.moe.n_experts else {})},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, 0, nn.broadcast, nn.broadcast),
                length=n_rep,
            )
            x, new_cache["periods"] = scanned(cfg, name="periods")(
                x, positions, None if cache is None else cache["periods"], lengths, segment_ids
            )
        block_cls = nn.remat(Block) if cfg.remat else Block
        layer_caches = []
        # Weight-shared blocks run before some layers (model.shared_block); never scanned, so x is the embedding.
        shared = SharedBlocks(cfg, name="shared") if cfg.shared_block.n_blocks else None
        shared_caches, embeds = None if cache is None else cache.get("shared"), x
        for i in range(first, cfg.n_layers):
            layer_cache = None if cache is None else cache["layers"][i - first]
            mixer_norm = cfg.first_mixer_norm or i > 0
            block = build_block(cfg, cfg.layers[i], block_cls, name=f"layers_{i}", mixer_norm=mixer_norm, layer=i)
            mixer_add = None
            if shared is not None and i in cfg.shared_block.layers:
                x, mixer_add, shared_caches = shared(i, x, embeds, positions, shared_caches, segment_ids)
            x, layer_cache = block(x, positions, layer_cache, lengths, segment_ids, mixer_add)
            layer_caches.append(layer_cache)
        new_cache["layers"] = tuple(layer_caches)
        if shared_caches is not None:
            new_cache["shared"] = shared_caches
        if cfg.norm_position == "pre":  # a post-norm stack ends normalised already
            x = norm("final_norm")(x)
        self.sow("intermediates", "final_hidden", x)  # [b, t, d]: task heads, distillation's cosine loss
        if logit_positions is not None:
            x = jnp.take_along_axis(x, logit_positions[..., None], axis=1)  # [b, m, d]
        if cfg.mlm_head_transform:  # BERT's prediction-head transform: dense -> exact GELU -> norm
            x = Linear(cfg.d_model, cfg.mlm_head_transform_bias, dtype, param_dtype, name="mlm_transform")(x)
            x = norm("mlm_transform_norm")(jax.nn.gelu(x, approximate=False))
        if cfg.tie_embeddings:
            logits = embed.attend(x)[..., : cfg.vocab_size]  # an encoder never predicts its mask id
        else:
            logits = Linear(cfg.vocab_size, dtype=dtype, param_dtype=param_dtype, name="head")(x)
        if cfg.head_bias:
            logits = logits + self.param("head_bias", nn.initializers.zeros, (cfg.vocab_size,), param_dtype)
        logits = logits.astype(jnp.float32)
        if cfg.logit_divisor != 1.0:  # Granite's logits_scaling
            logits = logits / cfg.logit_divisor
        logits = soft_cap(logits, cfg.logit_softcap)
        return logits, None if cache is None else new_cache

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> PyTree:
        """An empty decode cache for ``batch`` sequences of up to ``max_len`` tokens."""
        cfg = self.cfg
        if not cfg.causal:
            raise ConfigError(NO_CACHE)
        dtype = dtype or dtype_of(cfg.dtype)

        def one(name: str) -> PyTree:
            mixer = layer_mixer(cfg, name)
            if mixer is None:  # an MLP-only block keeps no state
                return {}
            cache = mixer.init_cache(batch, max_len, dtype)
            if cfg.cache_quant == "none":
                return cache
            return quantize_cache(cache, leaves=mixer.kv_leaves if cfg.cache_quant == "int8_kv" else None)

        n_rep, first = _layout(cfg)
        cache = {"layers": tuple(one(cfg.layers[i]) for i in range(first, cfg.n_layers))}
        if n_rep:
            stack = lambda a: jnp.broadcast_to(a, (n_rep,) + a.shape)
            cache["periods"] = tuple(jax.tree.map(stack, one(name)) for name in cfg.pattern)
        if cfg.shared_block.n_blocks:
            cache["shared"] = init_shared_cache(cfg, batch, max_len, dtype)
        return cache


def abstract_params(cfg: ModelConfig) -> PyTree:
    """The parameter tree of ``CausalLM(cfg)`` as ``jax.ShapeDtypeStruct`` leaves (no arrays allocated)."""
    return jax.eval_shape(lambda: CausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))


def cache_bytes(cache: PyTree) -> int:
    """Bytes held by a decode cache."""
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(cache))


def stack_layers(params: PyTree, cfg: ModelConfig) -> PyTree:
    """Per-layer params (``layers_i``) -> the ``scan_layers`` layout (``periods/block_j`` stacked)."""
    period = len(cfg.pattern)
    n_rep = cfg.n_layers // period
    p = dict(params["params"])
    blocks = {
        f"block_{j}": jax.tree.map(
            lambda *xs: jnp.stack(xs), *[p.pop(f"layers_{r * period + j}") for r in range(n_rep)]
        )
        for j in range(period)
    }
    return {"params": {**p, "periods": blocks}}


def unstack_layers(params: PyTree, cfg: ModelConfig) -> PyTree:
    """Inverse of ``stack_layers``."""
    period = len(cfg.pattern)
    p = dict(params["params"])
    blocks = p.pop("periods")
    n_rep = cfg.n_layers // period
    for r in range(n_rep):
        for j in range(period):
            p[f"layers_{r * period + j}"] = jax.tree.map(lambda a, r=r: a[r], blocks[f"block_{j}"])
    return {"params": p}
