"""Typed, frozen, nested configs: YAML files plus dotted ``--set a.b=value`` overrides.

``load_config(path, overrides)`` is the one entry point. Resolution order, later wins:
dataclass defaults < the named preset's fields (``model.preset``) < YAML < ``--set``.
Every key is checked against the dataclasses (the closest valid key is suggested), every
value against its field's type, and sizes against each other (``validate``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from slm_jax.errors import ConfigError
from slm_jax.mixers.registry import MixerOptions, build_mixer
from slm_jax.presets import preset_fields, preset_pattern


@dataclass(frozen=True)
class RopeScalingConfig:
    """RoPE frequency scaling for long context, as imported checkpoints use it; ``none`` keeps them."""

    kind: str = "none"  # none | linear (frequencies / factor) | llama3 (Llama 3.1's banded scaling)
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_len: int = 8192  # llama3 only: the pretraining context length


@dataclass(frozen=True)
class QuantConfig:
    """Post-training weight-only quantization of every ``Linear`` kernel, set by ``slm quantize`` (slm_jax/quant/)."""

    bits: int = 0  # 0 -> float weights; 8 -> int8; 4 -> int4 packed two per byte
    # inputs per scale; 0 -> int8: the whole input width (per output channel), int4: largest divisor <= 64
    group_size: int = 0
    method: str = "rtn"  # rtn (round to nearest) | gptq | awq (calibrated: quant/gptq.py, quant/awq.py)


@dataclass(frozen=True)
class MoEConfig:
    """A mixture-of-experts MLP in place of the dense MLP on chosen layers (slm_jax/modules/moe.py); 0 experts = off.

    A router (d -> E, no bias) scores the experts; each token runs its ``top_k`` experts (MLPs of width
    ``d_expert`` of the kind ``model.mlp``), summed with the router weights, plus an optional shared expert.
    Layer i is MoE when it is in ``layers`` or, with ``layers`` empty, when ``i % period == offset``.
    """

    n_experts: int = 0  # E routed experts; 0 -> off (every layer keeps its dense MLP)
    top_k: int = 2  # experts per token, 1..E
    routing: str = "softmax"  # softmax (Switch, Jamba, Qwen, Granite) | sigmoid (DeepSeek-V3-style scores)
    normalize_top_k: bool = False  # divide the k chosen weights by their sum (Qwen's norm_topk_prob; Granite: true)
    d_expert: int = 0  # hidden width of each expert; 0 -> model.d_ff's width
    d_shared: int = 0  # width of a shared expert every token passes through (Qwen, Granite); 0 -> none
    shared_gate: bool = False  # scale the shared expert by sigmoid(x . w) (Qwen's shared_expert_gate)
    # a per-expert bias added to the scores to choose experts, not to weigh them (DeepSeek-V3's aux-loss-free
    # e_score_correction_bias; Nemotron-H)
    score_bias: bool = False
    n_groups: int = 1  # group-limited routing (DeepSeek-V3's n_group): the experts in this many equal groups, and
    top_groups: int = 1  # each token chooses among the groups with the best two-expert score sums, this many of them
    scale: float = 1.0  # the routed experts' weights are multiplied by this (DeepSeek-V3's routed_scaling_factor)
    period: int = 1  # layer i is MoE when i % period == offset (Jamba: expert_layer_period 2, offset 1)
    offset: int = 0
    layers: tuple[int, ...] = ()  # explicit MoE layer indices (replaces period / offset), e.g. Qwen's sparse layers
    aux_loss_weight: float = 0.01  # weight of the load-balancing loss (Switch Transformer) in the training loss

    def at(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) has the MoE MLP."""
        if not self.n_experts:
            return False
        return layer in self.layers if self.layers else layer % self.period == self.offset


@dataclass(frozen=True)
class SharedBlockConfig:
    """Transformer blocks whose parameters several layers reuse (slm_jax/models/shared_block.py); 0 blocks = off.

    Zamba / Zamba2 (Glorioso et al. 2024, arXiv:2405.16712, arXiv:2411.15242): before each layer in ``layers`` its
    use k runs block k % n_blocks on u = [x ; embeddings] (``concat_embed``, 2 d wide) or on x:
    y = proj_k(mlp(norm(attention(norm(u))))) with no residual inside, model.n_heads / n_kv_heads heads, the use's
    own adapters (low-rank, added to the query/key/value and MLP input projections) and its own KV cache; y then
    joins that layer's mixer input (``add_to: mixer_input``) or the residual stream (``add_to: residual``).
    """

    n_blocks: int = 0  # distinct parameter sets, used in turn; 0 -> off
    layers: tuple[int, ...] = ()  # 0-based indices of the layers a shared block runs before, ascending
    concat_embed: bool = False  # the block reads [x ; the input embeddings] (2 d wide), Zamba's concatenation
    head_dim: int = 0  # width of each attention head; 0 -> the input width / model.n_heads
    mlp: str = "swiglu"  # the block's MLP kind, as model.mlp (none: attention only)
    d_ff: int = 0  # the block's MLP hidden width; 0 -> model.d_ff's width
    attn_adapter_rank: int = 0  # rank of each use's adapters on the query/key/value projections; 0 -> none
    mlp_adapter_rank: int = 0  # rank of each use's adapter on the MLP input projection; 0 -> none
    out_proj: bool = False  # each use projects the block's output with its own d x d matrix (Zamba2's linear)
    add_to: str = "residual"  # residual: x + y | mixer_input: the next layer's mixer reads norm(x + y) (Zamba2)


# A layer-pattern entry for a block without a mixer, x + mlp(norm(x)) (Nemotron-H's "-" and, with model.moe, "E").
MLP_LAYER = "mlp"


@dataclass(frozen=True)
class ModelConfig:
    """The architecture. ``layer_pattern`` (mixer names, or ``mlp`` for an MLP-only block) is cycled to ``n_layers``."""

    preset: str = "transformer"
    layer_pattern: tuple[str, ...] = ()  # () -> the preset's pattern
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 0  # 0 -> n_heads (MHA); 1 -> MQA; otherwise GQA
    head_dim: int = 0  # 0 -> d_model // n_heads
    vocab_size: int = 0  # 0 -> taken from the data
    # swiglu | geglu (tanh GELU) | geglu_erf (exact GELU) | gelu (not gated, exact) | relu2 (not gated, relu(x)^2:
    # Primer, Nemotron-H) | none
    mlp: str = "swiglu"
    # False: blocks with a mixer have no MLP (mixer-only layers; the MLP lives in `mlp` pattern entries, Nemotron-H)
    mixer_mlp: bool = True
    d_ff: int = 0  # 0 -> 8/3 * d_model rounded up to a multiple of 16
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0  # share of each head's width that RoPE rotates (Phi-3, RecurrentGemma: partial)
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    qk_norm: bool = False  # RMSNorm over the head width of queries and keys before RoPE (Qwen3)
    qk_norm_all_heads: bool = False  # with qk_norm: one RMSNorm over all heads' queries (keys) at once (OLMo 2)
    qkv_bias: bool = False  # biases on the query/key/value projection (Qwen2)
    attn_output_gate: bool = False  # attention output times sigmoid(x W_g) per head channel (Qwen3-Next, Qwen3.5)
    attn_out_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False  # biases on the MLP projections
    embed_scale: float = 1.0  # input embeddings are multiplied by this (Gemma: sqrt(d_model))
    norm_offset: float = 0.0  # RMSNorm multiplies by (offset + scale): 1 is Gemma's (1 + w)
    norm_eps: float = 1e-5
    norm: str = "rms"  # rms | layer (LayerNorm: BERT, DistilBERT, ModernBERT)
    norm_bias: bool = False  # LayerNorm with a bias (BERT, DistilBERT); norm: layer only
    norm_position: str = "pre"  # pre: x + f(norm(x)) and a final norm | post: norm(x + f(x)), no final norm (BERT)
    embed_norm: bool = False  # a norm after the embedding sum (BERT, DistilBERT, ModernBERT)
    first_mixer_norm: bool = True  # False: layer 0's mixer reads the (normed) embedding directly (ModernBERT)
    position: str = "rope"  # rope | learned (absolute table added to the embedding, BERT) | none
    max_positions: int = 0  # rows of the learned position table (position: learned); the longest sequence
    mlm_head_transform: bool = False  # dense -> exact GELU -> norm before the output head (BERT's MLM head)
    mlm_head_transform_bias: bool = True  # bias on that dense layer (ModernBERT: classifier_bias, default off)
    head_bias: bool = False  # a bias on the output logits (BERT, DistilBERT, ModernBERT decoder_bias)
    logit_softcap: float = 0.0  # 0 -> off; else cap * tanh(logits / cap)
    attn_scale: float = 0.0  # attention scores are q.k times this; 0 -> 1 / sqrt(head width) (Gemma 2: its own)
    attn_softcap: float = 0.0  # 0 -> off; else attention scores -> cap * tanh(scores / cap) before softmax (Gemma 2)
    post_norms: bool = False  # a norm on the mixer's and the MLP's output before each residual add (Gemma 2's sandwich)
    reordered_norms: tuple[str, ...] = ()  # mixers whose layers norm only each branch's output, x + norm(f(x)) (OLMo 2)
    parallel_residual: bool = False  # x + mixer(norm(x)) + mlp(norm'(x)): both branches read the block input (GPT-NeoX)
    residual_scale: float = 1.0  # each branch's output is multiplied by this before its residual add (Granite)
    logit_divisor: float = 1.0  # the output logits are divided by this, before logit_softcap (Granite's logits_scaling)
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False  # nn.scan over repeats of the pattern period
    remat: bool = False
    mixers: MixerOptions = field(default_factory=MixerOptions)  # model.mixers.<name>.<field>: each mixer's own options
    moe: MoEConfig = field(default_factory=MoEConfig)  # model.moe.<field>: mixture-of-experts MLPs
    shared_block: SharedBlockConfig = field(default_factory=SharedBlockConfig)  # weight-shared blocks (Zamba2)
    quant: QuantConfig = field(default_factory=QuantConfig)
    # none | int8 (KV and recurrent states) | int8_kv (KV only): decode cache stored int8 with group-wise scales
    # (quant/cache.py)
    cache_quant: str = "none"
    causal: bool = True  # False -> an encoder: every mixer sees both directions (mixers/bidirectional.py), no cache
    bidirectional_combine: str = "sum"  # sum | concat (+ a projection): how a wrapped mixer's two directions combine

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Leading channels of each head that RoPE rotates (HF: int(head_dim * partial_rotary_factor))."""
        return int(self.attn_head_dim * self.rotary_fraction)

    @property
    def ff_width(self) -> int:
        return self.d_ff or 16 * -(-(8 * self.d_model // 3) // 16)

    @property
    def pattern(self) -> tuple[str, ...]:
        """The layer pattern (one period), from the field or else the preset."""
        return self.layer_pattern or preset_pattern(self.preset)

    @property
    def layers(self) -> tuple[str, ...]:
        """Mixer name of every layer: the pattern cycled to ``n_layers``."""
        p = self.pattern
        return tuple(p[i % len(p)] for i in range(self.n_layers))

    def has_mlp(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) has an MLP branch (dense or, where ``moe`` selects it, MoE)."""
        if self.mlp == "none":
            return False
        return self.mixer_mlp or self.layers[layer] == MLP_LAYER


@dataclass(frozen=True)
class TaskConfig:
    """A generated sequence task (data/synthetic.py), scored only at its labelled positions.

    Sequences have ``train.seq_len`` tokens from ``model.vocab_size`` (which must be set).
    """

    name: str = ""  # mqar | selective_copying | induction_heads; "" -> text data
    n_pairs: int = 8  # mqar: key-value pairs per sequence (Zoology's D)
    alpha: float = 0.01  # mqar: power-law exponent of the query gaps (Zoology)
    random_filler: bool = False  # mqar: random tokens instead of zeros between queries
    n_tokens: int = 16  # selective_copying: tokens to remember and copy
    min_train_len: int = 0  # > 0: training examples have lengths log-uniform in [this, seq_len], left-padded with 0
    train_examples: int = 100_000  # distinct training sequences (repeated in epochs)
    val_examples: int = 1_000
    eval_lengths: tuple[int, ...] = ()  # also evaluate at these lengths (length extrapolation)


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from: a text file, a prepared directory, a generated corpus or a task."""

    path: str = ""  # raw text file (prepared on the fly, cached) or a prepared directory
    synthetic: str = ""  # name of a generated corpus, used when path is empty (see data/corpora.py)
    tokenizer: str = "char"  # char | byte (for raw text files)
    val_fraction: float = 0.1
    cache_dir: str = ""  # where raw files are prepared; "" -> $SLM_JAX_CACHE or ~/.cache/slm_jax
    pack: bool = False  # packed rows: documents kept apart (segment ids, positions, no loss across; data/pipeline.py)
    mixture: dict[str, float] = field(default_factory=dict)  # source (text file, prepared dir, corpus) -> weight
    task: TaskConfig = field(default_factory=TaskConfig)  # a synthetic task instead of text, when named


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a decay mask, warmup + cosine or warmup-stable-decay, clipping."""

    lr: float = 1e-3
    min_lr: float = 1e-4
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end
    weight_decay: float = 0.1
    no_decay: tuple[str, ...] = ("norm", "embed", "bias", "scale")  # parameter-path substrings
    frozen: tuple[str, ...] = ()  # parameter-path substrings that are not trained
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; 0 -> off


@dataclass(frozen=True)
class MeshConfig:
    """Device-mesh axis sizes for ``train.parallel.strategy: mesh``; -1 means "the devices left over"."""

    data: int = -1  # data parallel (replicated params)
    fsdp: int = 1  # data parallel with params and optimizer state sharded (ZeRO-3 / FSDP)
    tensor: int = 1  # tensor parallel: attention heads, MLP hidden, recurrent width, vocab, MoE experts


@dataclass(frozen=True)
class ParallelConfig:
    """How a train step is spread over devices (slm_jax/training/parallel.py, docs/scaling.md)."""

    strategy: str = (
        "none"  # none: one device | pmap: data parallel over every device | mesh: jit over a data/fsdp/tensor Mesh
    )
    devices: int = 0  # pmap / mesh: use the first N devices; 0 -> all of them
    mesh: MeshConfig = field(default_factory=MeshConfig)


@dataclass(frozen=True)
class FederatedConfig:
    """Federated training (slm_jax/federated/, docs/federated.md): with ``algorithm`` set, ``slm train`` runs rounds."""

    algorithm: str = ""  # "" -> centralized | fedavg | fedsgd | fedprox | diloco
    partition: str = "iid"  # iid (equal random shares of the train split) | role (Shakespeare speaking roles, LEAF)
    # | dirichlet (lines dealt by label = first token, Dir(dirichlet_alpha) shares per label; Hsu et al. 2019)
    n_clients: int = 0  # iid, dirichlet: clients to cut the data into; role: the N largest roles (0 -> every role)
    dirichlet_alpha: float = 0.5  # dirichlet: concentration; small -> few labels per client, large -> IID
    fraction: float = 1.0  # C: share of the clients sampled each round
    clients_per_round: int = 0  # 0 -> max(1, round(fraction * n_clients))
    rounds: int = 100
    local_steps: int = 1  # E local steps (H for DiLoCo) of client_batch windows per round; fedsgd: 1
    client_batch: int = 0  # B windows per local step; 0 -> train.batch_size
    client_optimizer: str = ""  # sgd (client_lr) | adamw (the optim section, kept per client); "" -> by algorithm
    client_lr: float = 0.1
    mu: float = 0.0  # FedProx proximal weight: mu / 2 * ||w - w_global||^2 in the client loss
    server_optimizer: str = ""  # sgd | momentum | adam | yogi | nesterov; "" -> nesterov for diloco, else sgd
    server_lr: float = 0.0  # 0 -> 1.0 for sgd and momentum, 0.7 for nesterov (DiLoCo), 0.01 for adam and yogi
    server_momentum: float = 0.9  # momentum, nesterov; beta1 of adam and yogi
    server_beta2: float = 0.99  # adam, yogi
    server_eps: float = 1e-3  # adam, yogi: tau of Reddi et al. 2021
    clients_in_parallel: int = 0  # clients vmapped together; 0 -> all clients of a round at once
    client_devices: int = 0  # devices the vmapped clients axis is sharded over; 0 -> every local device
    compression: str = "none"  # none | int8 | int4 | topk: uplink compression with error feedback
    topk_fraction: float = 0.01  # topk: share of each tensor's entries sent
    drop_fraction: float = 0.0  # share of the sampled clients that fail each round (stragglers)
    dp_clip: float = 0.0  # S: clip each client update to this L2 norm; 0 -> no DP
    dp_noise: float = 0.0  # z: Gaussian noise std z * S on the sum of clipped updates
    dp_delta: float = 1e-5
    dp_epsilon: float = 0.0  # privacy budget: stop before a round would exceed it; 0 -> no budget
    secure_agg: bool = False  # pairwise additive masks that cancel in the sum (Bonawitz et al. 2017)
    target_accuracy: float = 0.0  # stop once an eval's val_accuracy reaches it (rounds to target); 0 -> off


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 12
    seq_len: int = 64
    seed: int = 0
    grad_accum: int = 1  # micro-batches per step; batch_size is the total over them
    z_loss: float = 0.0  # weight of log(Z)^2 (PaLM); 0 -> off
    log_every: int = 10
    peak_flops: float = 0.0  # device peak FLOP/s for MFU; 0 -> table for GPU/TPU, measured on CPU
    init_from: str = ""  # a run directory whose latest parameters start this run (fresh optimizer, step 0)
    curriculum: tuple[tuple[int, ...], ...] = ()  # [seq_len, steps] stages trained first, each warm-starting the next
    objective: str = "clm"  # clm (next token) | mlm (masked tokens, encoders only: training/mlm.py)
    mask_rate: float = 0.15  # mlm: share of each sequence's tokens that are predicted (BERT 0.15, ModernBERT 0.3)
    mask_token_prob: float = 0.8  # mlm: a predicted token is replaced by the mask id with this probability,
    random_token_prob: float = 0.1  # by a random token with this one, and left as is otherwise (BERT's 80/10/10)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)


@dataclass(frozen=True)
class EvalConfig:
    every: int = 250  # steps between validation passes; 0 -> only at the end
    batches: int = 20  # batches of (batch_size, seq_len) per validation pass
    batch_size: int = 0  # sequences per validation batch; 0 -> train.batch_size (lower it for long eval_lengths)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between saves; the final step is always saved
    keep: int = 2  # most recent checkpoints kept
    keep_best: bool = True  # also keep the best step by validation loss (beyond `keep`)
    async_save: bool = True


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a trained teacher run (Hinton et al. 2015); read only by ``slm distill``.

    ``loss: hinton`` is ``alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``;
    ``loss: triple`` is DistilBERT's (Sanh et al. 2019, arXiv:1910.01108)
    ``alpha_ce * T^2 * KL + alpha_mlm * CE(labels) + alpha_cos * (1 - cos(student, teacher hidden))``.
    """

    teacher: str = ""  # the teacher's run directory; `slm distill --teacher` overrides it
    alpha: float = 0.5  # weight of the hard-label cross-entropy (1: no distillation, 0: teacher only)
    temperature: float = 2.0  # T: both distributions are softmax(logits / T)
    top_k: int = 0  # 0: KL over the whole vocabulary; k: over the teacher's top-k tokens, renormalised
    precomputed: str = ""  # directory from `slm distill precompute`; "" computes teacher logits on the fly
    best: bool = False  # use the teacher's best checkpoint by validation loss instead of its latest
    loss: str = "hinton"  # hinton (alpha) | triple (alpha_ce, alpha_mlm, alpha_cos: DistilBERT's loss)
    alpha_ce: float = 5.0  # triple: weight of T^2 * KL (DistilBERT's 5.0)
    alpha_mlm: float = 2.0  # triple: weight of the hard-label loss, MLM on an encoder, next token on a decoder
    alpha_cos: float = 1.0  # triple: weight of the cosine loss between final hidden states (widths must match)
    init: str = ""  # "" the student's own init | every_other_layer: teacher layers 0, 2, 4, ... (DistilBERT)


@dataclass(frozen=True)
class Config:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# ----------------------------------------------------------------------------- building


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass, e.g. ``model.mixers.rglru.width``."""
    keys = []
    for f in dataclasses.fields(cls):
        t = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(key: str) -> ConfigError:
    """The error for an unknown key, suggesting the closest key or section (``modle`` -> ``model``)."""
    keys = all_keys()
    sections = sorted({".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1)})
    close = difflib.get_close_matches(key, keys + sections, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "run `slm config show` to list valid keys."
    return ConfigError(f"Unknown config key {key!r}; {hint}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; allow int->float and list->tuple."""
    origin = typing.get_origin(tp)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"Config key {key!r} expects a mapping, got {value!r}; write e.g. {{a: 1, b: 2}}.")
        return {_coerce(key, k, key_tp): _coerce(f"{key}.{k}", v, value_tp) for k, v in value.items()}
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key {key!r} expects a list, got {value!r}; write e.g. [a, b].")
        return tuple(_coerce(key, v, item_tp) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"Union field types are not supported ({key}).")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"Config key {key!r} expects {tp.__name__}, got {type(value).__name__} {value!r}.")
    return value


def _build(cls: type, raw: dict, prefix: str) -> Any:
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in raw.items():
        key = prefix + name
        if name not in types_:
            raise _unknown_key(key)
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key {key!r} is a section; give it a mapping of keys.")
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise _unknown_key(key)
    node[parts[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides are legitimate
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice, on lines {first_line[key]} and {line}, and only one can count",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                first_line[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``, refusing duplicate keys; a mistake is one ConfigError naming ``source``, line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source} line {mark.line + 1}, column {mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: {e.problem or e.context}; fix the YAML there.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML ({e}); fix it.") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=10"`` -> ``("train.steps", 10)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} has no '='; write it as key=value, e.g. train.steps=100.")
    key, value = text.split("=", 1)
    return key.strip(), load_yaml(value, f"the value of --set {text!r}") if value.strip() else ""


def config_from_dict(raw: dict, overrides: Sequence[str | tuple[str, Any]] = ()) -> Config:
    """Build and validate a Config from a nested dict plus overrides.

    Each override is ``"key=value"`` text (the value read as YAML) or a ``(key, value)`` pair.
    Overrides are applied before the preset, so changing ``model.preset`` brings its fields.
    """
    raw = _deep_copy(raw or {})
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        if key not in all_keys():
            raise _unknown_key(key)
        _set_dotted(raw, key, value)
    model_raw = raw.get("model", {})
    if not isinstance(model_raw, dict):
        raise ConfigError("Config key 'model' is a section; give it a mapping of keys.")
    preset = model_raw.get("preset", ModelConfig.preset)
    raw["model"] = _merge(preset_fields(preset), model_raw)
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def read_yaml_config(path: str | Path) -> dict:
    """The raw mapping of a YAML config file, before defaults, presets and checks."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"Config file {str(p)!r} does not exist; "
            "pass a YAML file such as configs/experiments/shakespeare_char.yaml."
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {str(p)!r} is not UTF-8 text; pass a YAML file.") from None
    raw = load_yaml(text, str(p))
    if raw is None:
        raise ConfigError(f"Config file {str(p)!r} is empty; give it at least a name: or a model: section.")
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {str(p)!r} must hold a mapping of sections (model:, train:, ...).")
    return raw


def load_config(path: str | Path | None, overrides: Sequence[str | tuple[str, Any]] = ()) -> Config:
    """Read a YAML config (or only defaults when ``path`` is None) and apply overrides."""
    return config_from_dict(read_yaml_config(path) if path is not None else {}, overrides)


def to_dict(cfg: Any) -> dict:
    """A plain nested dict (tuples as lists) of a config, for YAML/JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Config, **dotted: Any) -> Config:
    """A copy of ``cfg`` with dotted keys changed, e.g. ``replace(cfg, **{"model.vocab_size": 65})``."""
    raw = to_dict(cfg)
    for key, value in dotted.items():
        if key not in all_keys():
            raise _unknown_key(key)
        _set_dotted(raw, key, value)
    out = _build(Config, raw, "")
    validate(out)
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


# ----------------------------------------------------------------------------- validation


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Check sizes and names against each other; raise one clear ConfigError."""
    m, t, o = cfg.model, cfg.train, cfg.optim
    for key in ("n_layers", "d_model", "n_heads"):
        _require(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}.")
    _require(
        m.head_dim > 0 or m.d_model % m.n_heads == 0,
        f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads}); "
        "change one, or set model.head_dim.",
    )
    _require(m.kv_heads > 0, f"model.n_kv_heads must be >= 0, got {m.n_kv_heads}.")
    _require(
        m.n_heads % m.kv_heads == 0,
        f"model.n_heads ({m.n_heads}) must be divisible by model.n_kv_heads ({m.kv_heads}); "
        f"pick a divisor such as 1 or {m.n_heads}.",
    )
    _require(0.0 <= m.rotary_fraction <= 1.0, f"model.rotary_fraction must be in [0, 1], got {m.rotary_fraction}.")
    _require(
        m.rotary_dim % 2 == 0,
        f"RoPE rotates {m.rotary_dim} channels per head (head width {m.attn_head_dim} x model.rotary_fraction "
        f"{m.rotary_fraction}), "
        "which must be even; change model.d_model, model.n_heads or model.rotary_fraction.",
    )
    rs = m.rope_scaling
    _require(
        rs.kind in ("none", "linear", "llama3"),
        f"model.rope_scaling.kind must be none, linear or llama3, got {rs.kind!r}.",
    )
    _require(rs.factor > 0, f"model.rope_scaling.factor must be positive, got {rs.factor}.")
    _require(
        rs.kind != "llama3" or (0 < rs.low_freq_factor < rs.high_freq_factor and rs.original_max_len > 0),
        "model.rope_scaling (llama3) needs 0 < low_freq_factor < high_freq_factor and original_max_len > 0.",
    )
    _require(m.embed_scale > 0, f"model.embed_scale must be positive (1 = no scaling), got {m.embed_scale}.")
    _require(
        m.mlp in ("swiglu", "geglu", "geglu_erf", "gelu", "relu2", "none"),
        f"model.mlp must be swiglu, geglu, geglu_erf, gelu, relu2 or none, got {m.mlp!r}.",
    )
    _validate_mlp_layers(m)
    _validate_norms_positions(m)
    _validate_moe(m)
    _validate_shared_block(m)
    for key in ("dtype", "param_dtype"):
        _require(
            getattr(m, key) in ("float32", "bfloat16", "float16"),
            f"model.{key} must be float32, bfloat16 or float16, got {getattr(m, key)!r}.",
        )
    _require(len(m.pattern) > 0, "model.layer_pattern is empty; give mixer names, e.g. [attention].")
    _require(
        m.bidirectional_combine in ("sum", "concat"),
        f"model.bidirectional_combine must be sum or concat, got {m.bidirectional_combine!r}.",
    )
    for name in m.pattern:
        if name != MLP_LAYER:
            build_mixer(m, name)  # an unknown name, or a mixer's own options that do not fit the model, fail here
    _require(
        m.quant.bits in (0, 4, 8) and m.quant.group_size >= 0,
        "model.quant.bits must be 0, 4 or 8 and model.quant.group_size >= 0, "
        f"got {m.quant.bits} and {m.quant.group_size}.",
    )
    _require(
        m.quant.method in ("rtn", "gptq", "awq"),
        f"model.quant.method must be rtn, gptq or awq, got {m.quant.method!r}.",
    )
    _require(
        m.cache_quant in ("none", "int8", "int8_kv"),
        f"model.cache_quant must be none, int8 or int8_kv, got {m.cache_quant!r}.",
    )
    _require(m.vocab_size >= 0, f"model.vocab_size must be >= 0 (0 takes it from the data), got {m.vocab_size}.")
    for key in ("steps", "batch_size", "seq_len", "grad_accum", "log_every"):
        _require(getattr(t, key) > 0, f"train.{key} must be positive, got {getattr(t, key)}.")
    _require(
        all(len(stage) == 2 and min(stage) > 0 for stage in t.curriculum),
        "train.curriculum is a list of [seq_len, steps] pairs of positive integers, "
        f"got {[list(s) for s in t.curriculum]}; write e.g. [[64, 400]].",
    )
    _require(
        t.batch_size % t.grad_accum == 0,
        f"train.batch_size ({t.batch_size}) must be divisible by train.grad_accum ({t.grad_accum}).",
    )
    _require(t.objective in ("clm", "mlm"), f"train.objective must be clm or mlm, got {t.objective!r}.")
    _require(
        t.objective != "mlm" or not m.causal,
        "train.objective=mlm needs an encoder; set model.causal=false or pick an encoder preset such as bert_like.",
    )
    _require(
        t.objective != "mlm" or not cfg.data.task.name,
        f"train.objective=mlm masks text, but data.task is {cfg.data.task.name!r}; drop one of them.",
    )
    _require(0.0 < t.mask_rate < 1.0, f"train.mask_rate must be in (0, 1), got {t.mask_rate}.")
    _require(
        t.mask_token_prob >= 0 and t.random_token_prob >= 0 and t.mask_token_prob + t.random_token_prob <= 1,
        "train.mask_token_prob and train.random_token_prob must be >= 0 with a sum <= 1, "
        f"got {t.mask_token_prob} and {t.random_token_prob}.",
    )
    par = t.parallel
    _require(
        par.strategy in ("none", "pmap", "mesh"),
        f"train.parallel.strategy must be none, pmap or mesh, got {par.strategy!r}.",
    )
    _require(par.devices >= 0, f"train.parallel.devices must be >= 0 (0 = all devices), got {par.devices}.")
    sizes = [par.mesh.data, par.mesh.fsdp, par.mesh.tensor]
    _require(
        all(s > 0 or s == -1 for s in sizes) and sizes.count(-1) <= 1,
        f"train.parallel.mesh sizes (data, fsdp, tensor) = {tuple(sizes)} must be positive, "
        "with at most one -1 (the rest of the devices).",
    )
    _require(
        o.schedule in ("cosine", "wsd", "constant"),
        f"optim.schedule must be cosine, wsd or constant, got {o.schedule!r}.",
    )
    _require(o.lr > 0 and o.min_lr >= 0, f"optim.lr must be > 0 and optim.min_lr >= 0, got {o.lr} and {o.min_lr}.")
    _require(0 <= o.warmup_steps, "optim.warmup_steps must be >= 0.")
    _require(0.0 < o.decay_fraction <= 1.0, "optim.decay_fraction must be in (0, 1].")
    d = cfg.data
    _require(d.tokenizer in ("char", "byte"), f"data.tokenizer must be char or byte, got {d.tokenizer!r}.")
    _require(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}.")
    _require(
        all(w > 0 for w in d.mixture.values()),
        f"data.mixture weights must be positive, got {d.mixture}; drop a source instead of giving it weight 0.",
    )
    _require(
        not (d.mixture and (d.path or d.synthetic or d.task.name)),
        "data.mixture lists every source itself; leave data.path, data.synthetic and data.task.name empty with it.",
    )
    _require(cfg.eval.batches > 0 and cfg.eval.every >= 0, "eval.batches must be > 0 and eval.every >= 0.")
    _require(
        cfg.eval.batch_size >= 0, f"eval.batch_size must be >= 0 (0 = train.batch_size), got {cfg.eval.batch_size}."
    )
    _require(
        cfg.checkpoint.every > 0 and cfg.checkpoint.keep > 0, "checkpoint.every and checkpoint.keep must be positive."
    )
    kd = cfg.distill
    _require(0.0 <= kd.alpha <= 1.0, f"distill.alpha must be in [0, 1], got {kd.alpha}.")
    _require(kd.loss in ("hinton", "triple"), f"distill.loss must be hinton or triple, got {kd.loss!r}.")
    _require(
        min(kd.alpha_ce, kd.alpha_mlm, kd.alpha_cos) >= 0,
        f"distill.alpha_ce, alpha_mlm and alpha_cos must be >= 0, got {kd.alpha_ce}, {kd.alpha_mlm}, {kd.alpha_cos}.",
    )
    _require(kd.init in ("", "every_other_layer"), f"distill.init must be empty or every_other_layer, got {kd.init!r}.")
    _require(
        not (kd.init and t.init_from),
        "distill.init and train.init_from both choose the student's starting weights; clear one of them.",
    )
    _require(
        kd.temperature > 0 and kd.top_k >= 0,
        f"distill.temperature must be > 0 and distill.top_k >= 0, got {kd.temperature} and {kd.top_k}.",
    )
    _validate_federated(t.federated)


def _validate_norms_positions(m: ModelConfig) -> None:
    """``model.norm*``, ``model.position`` and friends: one sentence per mistake, naming the key."""
    _require(m.norm in ("rms", "layer"), f"model.norm must be rms or layer, got {m.norm!r}.")
    _require(
        not m.norm_bias or m.norm == "layer",
        "model.norm_bias needs model.norm=layer (RMSNorm has no bias); set one of them.",
    )
    _require(
        m.norm == "rms" or m.norm_offset == 0,
        f"model.norm_offset ({m.norm_offset}) is an RMSNorm option; set it to 0 with model.norm=layer.",
    )
    _require(m.norm_position in ("pre", "post"), f"model.norm_position must be pre or post, got {m.norm_position!r}.")
    _require(
        m.first_mixer_norm or (m.norm_position == "pre" and not m.scan_layers),
        "model.first_mixer_norm=false needs model.norm_position=pre and model.scan_layers=false "
        "(layer 0 then differs from the other layers); change one of them.",
    )
    _require(
        m.position in ("rope", "learned", "none"), f"model.position must be rope, learned or none, got {m.position!r}."
    )
    _require(
        m.qk_norm or not m.qk_norm_all_heads,
        "model.qk_norm_all_heads shapes the qk norms, but model.qk_norm is false; set model.qk_norm=true or drop it.",
    )
    for key in ("attn_scale", "attn_softcap"):
        _require(getattr(m, key) >= 0, f"model.{key} must be >= 0 (0 = off / the default), got {getattr(m, key)}.")
    for key in ("residual_scale", "logit_divisor"):
        _require(getattr(m, key) > 0, f"model.{key} must be positive (1 = off), got {getattr(m, key)}.")
    unused = sorted(set(m.reordered_norms) - set(m.pattern))
    _require(
        not unused,
        f"model.reordered_norms names {unused}, which no layer of model.layer_pattern uses; name its mixers.",
    )
    for key in ("post_norms", "parallel_residual", "reordered_norms"):
        _require(
            not getattr(m, key) or m.norm_position == "pre",
            f"model.{key} is a pre-norm block option; set model.norm_position=pre or model.{key}=false.",
        )
    _require(
        not m.parallel_residual or m.mlp != "none",
        "model.parallel_residual runs the MLP beside the mixer, but model.mlp is none; give an MLP or set it false.",
    )
    _require(
        (m.max_positions > 0) == (m.position == "learned"),
        f"model.max_positions ({m.max_positions}) is the learned position table's size: set it > 0 exactly when "
        f"model.position=learned (now {m.position!r}).",
    )


def _validate_mlp_layers(m: ModelConfig) -> None:
    """``mlp`` pattern entries (MLP-only blocks) and ``model.mixer_mlp`` (mixer-only blocks): one sentence each."""
    _require(
        m.mlp != "none" or MLP_LAYER not in m.pattern,
        f"model.layer_pattern has {MLP_LAYER!r} layers (an MLP alone) but model.mlp is none; give an MLP kind or "
        "drop those layers.",
    )
    _require(
        m.mixer_mlp or m.mlp != "none",
        "model.mixer_mlp=false drops the MLP of mixer layers, but model.mlp is none already; leave mixer_mlp true.",
    )
    _require(
        not m.parallel_residual or m.mixer_mlp,
        "model.parallel_residual runs the MLP beside the mixer, but model.mixer_mlp=false takes it out of mixer "
        "layers; set one of them back.",
    )


def _validate_shared_block(m: ModelConfig) -> None:
    """``model.shared_block``: one sentence per mistake, naming the key."""
    s, k = m.shared_block, "model.shared_block."
    _require(s.n_blocks >= 0, f"{k}n_blocks must be >= 0 (0 = off), got {s.n_blocks}.")
    if not s.n_blocks:
        return
    _require(
        list(s.layers) == sorted(set(s.layers)) and all(0 <= i < m.n_layers for i in s.layers),
        f"{k}layers must be distinct ascending layer indices below model.n_layers ({m.n_layers}), got {s.layers}.",
    )
    _require(
        len(s.layers) >= s.n_blocks,
        f"{k}layers has {len(s.layers)} uses for {s.n_blocks} blocks, so some block is never used; "
        "lower n_blocks or add layers.",
    )
    _require(not m.scan_layers, f"{k}n_blocks > 0 needs unrolled layers; set model.scan_layers: false.")
    _require(m.causal and m.norm_position == "pre", f"{k}n_blocks > 0 needs a causal pre-norm model; set it to 0.")
    _require(m.cache_quant == "none", f"{k}n_blocks > 0 keeps a float KV cache; set model.cache_quant: none.")
    _require(s.add_to in ("residual", "mixer_input"), f"{k}add_to must be residual or mixer_input, got {s.add_to!r}.")
    _require(
        s.add_to == "residual" or all(m.layers[i] != MLP_LAYER for i in s.layers),
        f"{k}add_to: mixer_input needs a mixer in each of its layers, and some are {MLP_LAYER!r}; use residual.",
    )
    _require(
        s.mlp in ("swiglu", "geglu", "geglu_erf", "gelu", "relu2", "none"),
        f"{k}mlp must be swiglu, geglu, geglu_erf, gelu, relu2 or none, got {s.mlp!r}.",
    )
    for key in ("head_dim", "d_ff", "attn_adapter_rank", "mlp_adapter_rank"):
        _require(getattr(s, key) >= 0, f"{k}{key} must be >= 0, got {getattr(s, key)}.")
    width = m.d_model * (2 if s.concat_embed else 1)
    _require(
        s.head_dim > 0 or width % m.n_heads == 0,
        f"The shared block's input width ({width}) must be divisible by model.n_heads ({m.n_heads}); set {k}head_dim.",
    )


def _validate_moe(m: ModelConfig) -> None:
    """``model.moe``: one sentence per mistake, naming the key."""
    e, k = m.moe, "model.moe."
    _require(e.n_experts >= 0, f"{k}n_experts must be >= 0 (0 = no MoE), got {e.n_experts}.")
    if not e.n_experts:
        return
    _require(
        1 <= e.top_k <= e.n_experts,
        f"{k}top_k ({e.top_k}) must be between 1 and {k}n_experts ({e.n_experts}); lower top_k or add experts.",
    )
    _require(e.routing in ("softmax", "sigmoid"), f"{k}routing must be softmax or sigmoid, got {e.routing!r}.")
    for key in ("d_expert", "d_shared"):
        _require(getattr(e, key) >= 0, f"{k}{key} must be >= 0, got {getattr(e, key)}.")
    _require(not e.shared_gate or e.d_shared > 0, f"{k}shared_gate gates the shared expert; set {k}d_shared > 0 too.")
    _require(e.aux_loss_weight >= 0, f"{k}aux_loss_weight must be >= 0 (0 = no balancing), got {e.aux_loss_weight}.")
    _require(
        e.period >= 1 and 0 <= e.offset < e.period,
        f"{k}period must be >= 1 and {k}offset in [0, period), got period {e.period} and offset {e.offset}.",
    )
    _require(
        not e.layers or (e.period, e.offset) == (1, 0),
        f"{k}layers lists the MoE layers itself; leave {k}period and {k}offset at 1 and 0 with it.",
    )
    _require(
        all(0 <= i < m.n_layers for i in e.layers) and len(set(e.layers)) == len(e.layers),
        f"{k}layers must be distinct indices in [0, model.n_layers = {m.n_layers}), got {list(e.layers)}.",
    )
    _require(
        any(e.at(i) for i in range(m.n_layers)),
        f"{k}period {e.period} and offset {e.offset} select none of the {m.n_layers} layers; lower the offset.",
    )
    _require(
        m.mlp != "none",
        f"{k}n_experts needs a model.mlp kind for its experts (swiglu, geglu, geglu_erf, gelu or relu2), got none.",
    )
    _require(
        all(m.has_mlp(i) for i in range(m.n_layers) if e.at(i)),
        "model.moe selects layers without an MLP branch (model.mixer_mlp=false drops it from mixer layers); choose "
        f"{k}layers among the mlp layers of model.layer_pattern, or set model.mixer_mlp=true.",
    )
    _require(
        e.n_groups >= 1 and e.n_experts % e.n_groups == 0 and 1 <= e.top_groups <= e.n_groups,
        f"{k}n_groups ({e.n_groups}) must divide {k}n_experts ({e.n_experts}) and {k}top_groups ({e.top_groups}) "
        "be between 1 and n_groups; pick a divisor of the experts, or 1 group (no limit).",
    )
    size = e.n_experts // max(e.n_groups, 1)
    _require(
        e.n_groups == 1 or (size >= 2 and e.top_groups * size >= e.top_k),
        f"{k}n_groups {e.n_groups} leaves {size} experts per group: groups need at least 2 (a group's score sums its "
        f"best two) and the {k}top_groups groups at least {k}top_k experts; use fewer groups.",
    )
    _require(e.scale > 0, f"{k}scale must be positive (1 = off), got {e.scale}.")
    _require(not m.mlp_bias, f"MoE experts have no biases; set model.mlp_bias=false with {k}n_experts.")
    n_scanned = (m.n_layers // len(m.pattern)) * len(m.pattern) if m.scan_layers else 0
    _require(
        all(e.at(i) == e.at(i % len(m.pattern)) for i in range(n_scanned)),
        f"model.scan_layers stacks repeats of the {len(m.pattern)}-layer pattern, so the MoE layers must repeat with "
        f"it; choose {k}period / {k}layers to match the pattern or set model.scan_layers=false.",
    )
    _require(
        m.quant.method == "rtn",
        f"model.quant.method {m.quant.method} calibrates each Linear on its inputs, which the MoE experts do not "
        "have one by one; quantize this model with rtn.",
    )


FEDERATED_ALGORITHMS = ("fedavg", "fedsgd", "fedprox", "diloco")
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "nesterov")


def _validate_federated(f: FederatedConfig) -> None:
    """``train.federated``: one sentence per mistake, naming the key."""
    k = "train.federated."
    _require(
        f.algorithm in ("", *FEDERATED_ALGORITHMS),
        f"{k}algorithm must be one of {', '.join(FEDERATED_ALGORITHMS)} (or empty for centralized training), "
        f"got {f.algorithm!r}.",
    )
    partitions = ("iid", "role", "dirichlet")
    _require(f.partition in partitions, f"{k}partition must be iid, role or dirichlet, got {f.partition!r}.")
    _require(f.n_clients >= 0, f"{k}n_clients must be >= 0, got {f.n_clients}.")
    _require(
        not f.algorithm or f.partition == "role" or f.n_clients > 0,
        f"{k}n_clients must be set (> 0) for the {f.partition} partition; it says how many clients share the data.",
    )
    _require(f.dirichlet_alpha > 0, f"{k}dirichlet_alpha must be > 0, got {f.dirichlet_alpha}.")
    _require(0.0 < f.fraction <= 1.0, f"{k}fraction (C) must be in (0, 1], got {f.fraction}.")
    _require(
        f.clients_per_round >= 0, f"{k}clients_per_round must be >= 0 (0 = from fraction), got {f.clients_per_round}."
    )
    _require(
        not f.n_clients or f.clients_per_round <= f.n_clients,
        f"{k}clients_per_round ({f.clients_per_round}) samples more clients than exist ({k}n_clients = "
        f"{f.n_clients}); lower it.",
    )
    for key in ("rounds", "local_steps"):
        _require(getattr(f, key) > 0, f"{k}{key} must be positive, got {getattr(f, key)}.")
    _require(
        f.algorithm != "fedsgd" or f.local_steps == 1,
        f"{k}local_steps must be 1 for fedsgd (one full-batch gradient per client), got {f.local_steps}; "
        "use fedavg for more.",
    )
    _require(f.client_batch >= 0, f"{k}client_batch must be >= 0 (0 = train.batch_size), got {f.client_batch}.")
    _require(
        f.client_optimizer in ("", "sgd", "adamw"),
        f"{k}client_optimizer must be sgd or adamw, got {f.client_optimizer!r}.",
    )
    _require(f.client_lr > 0, f"{k}client_lr must be positive, got {f.client_lr}.")
    _require(f.mu >= 0, f"{k}mu must be >= 0, got {f.mu}.")
    _require(
        f.server_optimizer in ("", *SERVER_OPTIMIZERS),
        f"{k}server_optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {f.server_optimizer!r}.",
    )
    _require(f.server_lr >= 0, f"{k}server_lr must be >= 0 (0 = the optimizer's default), got {f.server_lr}.")
    _require(0.0 <= f.server_momentum < 1.0, f"{k}server_momentum must be in [0, 1), got {f.server_momentum}.")
    _require(0.0 <= f.server_beta2 < 1.0, f"{k}server_beta2 must be in [0, 1), got {f.server_beta2}.")
    _require(f.server_eps > 0, f"{k}server_eps must be positive, got {f.server_eps}.")
    _require(f.clients_in_parallel >= 0, f"{k}clients_in_parallel must be >= 0 (0 = all), got {f.clients_in_parallel}.")
    _require(f.client_devices >= 0, f"{k}client_devices must be >= 0 (0 = every device), got {f.client_devices}.")
    _require(0.0 <= f.target_accuracy < 1.0, f"{k}target_accuracy must be in [0, 1), got {f.target_accuracy}.")
    _require(
        f.compression in ("none", "int8", "int4", "topk"),
        f"{k}compression must be none, int8, int4 or topk, got {f.compression!r}.",
    )
    _require(0.0 < f.topk_fraction <= 1.0, f"{k}topk_fraction must be in (0, 1], got {f.topk_fraction}.")
    _require(0.0 <= f.drop_fraction < 1.0, f"{k}drop_fraction must be in [0, 1), got {f.drop_fraction}.")
    _require(f.dp_clip >= 0 and f.dp_noise >= 0, f"{k}dp_clip and {k}dp_noise must be >= 0.")
    _require(
        f.dp_noise == 0 or f.dp_clip > 0,
        f"{k}dp_noise is set but {k}dp_clip is 0; DP needs a clipping norm S, e.g. {k}dp_clip=1.0.",
    )
    _require(
        f.dp_epsilon == 0 or f.dp_noise > 0,
        f"{k}dp_epsilon (a privacy budget) needs {k}dp_noise > 0; without noise there is no privacy to account.",
    )
    _require(0.0 < f.dp_delta < 1.0, f"{k}dp_delta must be in (0, 1), got {f.dp_delta}.")
    _require(f.dp_epsilon >= 0, f"{k}dp_epsilon must be >= 0 (0 = no budget), got {f.dp_epsilon}.")
    _require(
        not (f.secure_agg and f.compression != "none"),
        f"{k}secure_agg sends 32-bit masked updates, so {k}compression must be none with it, got {f.compression!r}.",
    )
