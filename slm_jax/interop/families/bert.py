"""BERT and DistilBERT masked-LM models (BertForMaskedLM, DistilBertForMaskedLM) <-> a post-norm encoder.

Both are (Devlin et al. 2019, arXiv:1810.04805; Sanh et al. 2019, arXiv:1910.01108)
LayerNorm(word + position [+ token type 0]) -> per layer x = LN(x + attn(x)), x = LN(x + mlp(x))
with a non-gated exact-GELU MLP and biases everywhere -> the MLM head dense -> GELU -> LN -> tied
decoder + bias. Ours: ``norm: layer``, ``norm_bias``, ``norm_position: post``, ``embed_norm``,
``position: learned``, ``mlp: gelu``, ``mlm_head_transform``, ``head_bias``, ``causal: false``.

Vocabulary: our ``vocab_size`` is the Hugging Face ``vocab_size`` V, so the logits cover all V ids
(HF's own [MASK] keeps its id). An encoder's embedding has one more row, id V, which slm_jax's MLM
training uses as its mask id: it is imported as zeros and dropped on export.

Token types: BERT adds ``token_type_embeddings[token_type_ids]``; only single-segment inputs
(all type 0, transformers' default) are supported: row 0 is folded into the position table on
import, the other rows are dropped, and export writes an all-zero token-type table.

Tensor names (torch [out, in] weights; ours [in, out]); B = ``bert.``, E = ``bert.embeddings.``,
L = ``bert.encoder.layer.i.``; DistilBERT names after the slash, D = ``distilbert.``:
  E word_embeddings / D embeddings.word_embeddings          -> embed/embedding (+ a zero row V)
  E position_embeddings (+ token_type_embeddings[0])        -> pos_embed/embedding
  E LayerNorm / D embeddings.LayerNorm                      -> embed_norm/{scale, bias}
  L attention.self.{query,key,value} / attention.{q,k,v}_lin -> layers_i/mixer/qkv (concatenated)
  L attention.output.dense / attention.out_lin              -> layers_i/mixer/o
  L attention.output.LayerNorm / sa_layer_norm              -> layers_i/mixer_norm
  L intermediate.dense / ffn.lin1                           -> layers_i/mlp/up
  L output.dense / ffn.lin2                                 -> layers_i/mlp/down
  L output.LayerNorm / output_layer_norm                    -> layers_i/mlp_norm
  cls.predictions.transform.dense / vocab_transform         -> mlm_transform
  cls.predictions.transform.LayerNorm / vocab_layer_norm    -> mlm_transform_norm
  cls.predictions.bias / vocab_projector.bias               -> head_bias
  cls.predictions.decoder.weight / vocab_projector.weight   -> head/kernel (untied only)
BERT checkpoints saved from BertForPreTraining also hold a pooler and a next-sentence head; they do
not touch the MLM logits and are read and dropped.
"""

from __future__ import annotations

import numpy as np

from slm_jax.errors import CheckpointError
from slm_jax.interop.hf_config import HFConfig, layer_windows, require_block_options, require_exportable
from slm_jax.interop.hf_weights import Tensors, f32, linear_in, linear_out

ARCHITECTURES = {"bert": "BertForMaskedLM", "distilbert": "DistilBertForMaskedLM"}
DISTILBERT_EPS = 1e-12  # hard-coded in transformers' DistilBERT


# --------------------------------------------------------------------------- import


def config_from_hf(c: HFConfig) -> dict:
    """The ``model`` section of our config for a BERT / DistilBERT ``config.json``."""
    distil = c.model_type == "distilbert"
    names = ("dim", "n_layers", "n_heads", "hidden_dim", "activation") if distil else None
    d_key, l_key, h_key, f_key, act_key = names or (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
    )
    c.expect(act_key, ("gelu",), "gelu", "BERT-family converters implement the exact erf GELU only")
    if distil:
        c.expect("sinusoidal_pos_embds", (False, True), False)  # either way the table is a stored tensor
        c.ignore("dropout", "qa_dropout", "seq_classif_dropout")
        eps = DISTILBERT_EPS
    else:
        c.expect("position_embedding_type", ("absolute",), "absolute", "only absolute positions are implemented")
        c.expect("is_decoder", (False,), False, "a BERT decoder is causal; convert the masked-LM encoder")
        c.expect("add_cross_attention", (False,), False, "cross-attention is not implemented")
        c.get("type_vocab_size", 2)  # only type 0 is used (module docstring)
        c.ignore("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "gradient_checkpointing")
        eps = float(c.get("layer_norm_eps", 1e-12))
    d, h = int(c.get(d_key, 768)), int(c.get(h_key, 12))
    return {
        "preset": "bert_like",
        "layer_pattern": ["attention"],
        "causal": False,
        "n_layers": int(c.get(l_key, 12 if not distil else 6)),
        "d_model": d,
        "n_heads": h,
        "vocab_size": int(c.get("vocab_size", 30522)),
        "d_ff": int(c.get(f_key, 4 * d if distil else 3072)),
        "mlp": "gelu",
        "mlp_bias": True,
        "qkv_bias": True,
        "attn_out_bias": True,
        "norm": "layer",
        "norm_bias": True,
        "norm_eps": eps,
        "norm_position": "post",
        "embed_norm": True,
        "position": "learned",
        "max_positions": int(c.get("max_position_embeddings", 512)),
        "mlm_head_transform": True,
        "mlm_head_transform_bias": True,
        "head_bias": True,
        "tie_embeddings": bool(c.get("tie_word_embeddings", True)),
    }


def _layer_norm(t: Tensors, name: str, d: int) -> dict:
    return {"scale": t.take(name + ".weight", (d,)), "bias": t.take(name + ".bias", (d,))}


def _dense(t: Tensors, name: str, d_in: int, d_out: int) -> dict:
    return {"kernel": linear_in(t.take(name + ".weight", (d_out, d_in))), "bias": t.take(name + ".bias", (d_out,))}


def _names(distil: bool, i: int) -> dict[str, str]:
    """HF module names (without .weight / .bias) of layer ``i``'s parts."""
    if distil:
        p = f"distilbert.transformer.layer.{i}."
        return {
            "q": p + "attention.q_lin",
            "k": p + "attention.k_lin",
            "v": p + "attention.v_lin",
            "o": p + "attention.out_lin",
            "mixer_norm": p + "sa_layer_norm",
            "up": p + "ffn.lin1",
            "down": p + "ffn.lin2",
            "mlp_norm": p + "output_layer_norm",
        }
    p = f"bert.encoder.layer.{i}."
    return {
        "q": p + "attention.self.query",
        "k": p + "attention.self.key",
        "v": p + "attention.self.value",
        "o": p + "attention.output.dense",
        "mixer_norm": p + "attention.output.LayerNorm",
        "up": p + "intermediate.dense",
        "down": p + "output.dense",
        "mlp_norm": p + "output.LayerNorm",
    }


def _head_names(distil: bool) -> dict[str, str]:
    if distil:
        return {
            "emb": "distilbert.embeddings.",
            "transform": "vocab_transform",
            "transform_norm": "vocab_layer_norm",
            "bias": "vocab_projector.bias",
            "decoder": "vocab_projector.weight",
        }
    return {
        "emb": "bert.embeddings.",
        "transform": "cls.predictions.transform.dense",
        "transform_norm": "cls.predictions.transform.LayerNorm",
        "bias": "cls.predictions.bias",
        "decoder": "cls.predictions.decoder.weight",
    }


def params_from_hf(t: Tensors, m, raw: dict) -> dict:
    """Our parameter tree ``{"params": ...}`` from the tensors; ``raw``: config.json."""
    distil = raw["model_type"] == "distilbert"
    d, f, v = m.d_model, m.ff_width, m.vocab_size
    hn = _head_names(distil)
    words = t.take(hn["emb"] + "word_embeddings.weight", (v, d))
    positions = t.take(hn["emb"] + "position_embeddings.weight", (m.max_positions, d))
    if not distil:
        types = t.take("bert.embeddings.token_type_embeddings.weight")
        positions = positions + types[0]  # single-segment inputs: type 0 everywhere
    p: dict = {
        "embed": {"embedding": np.concatenate([words, np.zeros((1, d), np.float32)])},  # row v: our mask id
        "pos_embed": {"embedding": positions},
        "embed_norm": _layer_norm(t, hn["emb"] + "LayerNorm", d),
    }
    for i in range(m.n_layers):
        n = _names(distil, i)
        qkv = [_dense(t, n[x], d, d) for x in "qkv"]
        p[f"layers_{i}"] = {
            "mixer": {
                "qkv": {
                    "kernel": np.concatenate([a["kernel"] for a in qkv], axis=1),
                    "bias": np.concatenate([a["bias"] for a in qkv]),
                },
                "o": _dense(t, n["o"], d, d),
            },
            "mixer_norm": _layer_norm(t, n["mixer_norm"], d),
            "mlp": {"up": _dense(t, n["up"], d, f), "down": _dense(t, n["down"], f, d)},
            "mlp_norm": _layer_norm(t, n["mlp_norm"], d),
        }
    p["mlm_transform"] = _dense(t, hn["transform"], d, d)
    p["mlm_transform_norm"] = _layer_norm(t, hn["transform_norm"], d)
    p["head_bias"] = t.take(hn["bias"], (v,))
    if not distil and t.has("cls.predictions.decoder.bias"):  # tied to cls.predictions.bias in transformers
        _same(t, "cls.predictions.decoder.bias", p["head_bias"], "cls.predictions.bias")
    if not m.tie_embeddings:
        p["head"] = {"kernel": linear_in(t.take(hn["decoder"], (v, d)))}
    elif t.has(hn["decoder"]):
        _same(t, hn["decoder"], words, "the word embeddings (tie_word_embeddings is true)")
    if not distil:
        for name in ("bert.pooler.dense.weight", "bert.pooler.dense.bias") + _NSP:
            if t.has(name):
                t.take(name)  # the pooler and next-sentence head never reach the MLM logits
    return {"params": p}


_NSP = ("cls.seq_relationship.weight", "cls.seq_relationship.bias")


def _same(t: Tensors, name: str, expected: np.ndarray, what: str) -> None:
    if not np.array_equal(t.take(name, expected.shape), expected):
        raise CheckpointError(f"{t.where}: tensor {name} differs from {what}, which it must equal; re-save the model.")


# --------------------------------------------------------------------------- export


def check_exportable(m, family: str) -> None:
    """Raise a ConfigError naming the first field of ModelConfig ``m`` that ``family`` cannot express."""
    name = ARCHITECTURES[family]
    require_block_options(m, name)
    fix = "start from an imported BERT-family run or export as another family"
    require_exportable(
        set(m.layers) == {"attention"}, "layer_pattern", list(m.pattern), name, f"only global attention; {fix}"
    )
    windows = layer_windows(m)
    require_exportable(set(windows) == {0}, "mixers.attention.window", windows, name, f"only global attention; {fix}")
    fixed = {
        "causal": False,
        "n_kv_heads": m.n_heads if m.n_kv_heads else 0,
        "head_dim": m.d_model // m.n_heads if m.head_dim else 0,
        "mlp": "gelu",
        "mlp_bias": True,
        "qkv_bias": True,
        "attn_out_bias": True,
        "qk_norm": False,
        "norm": "layer",
        "norm_bias": True,
        "norm_position": "post",
        "embed_norm": True,
        "first_mixer_norm": True,
        "position": "learned",
        "mlm_head_transform": True,
        "mlm_head_transform_bias": True,
        "head_bias": True,
        "embed_scale": 1.0,
        "logit_softcap": 0.0,
    }
    if family == "distilbert":
        fixed["norm_eps"] = DISTILBERT_EPS
    for key, value in fixed.items():
        require_exportable(getattr(m, key) == value, key, getattr(m, key), name, f"it must be {value!r} there; {fix}")
    require_exportable(m.d_model % m.n_heads == 0, "n_heads", m.n_heads, name, "heads must split d_model evenly")


def config_to_hf(m, family: str) -> dict:
    """The ``config.json`` mapping for ModelConfig ``m`` as ``family`` (after ``check_exportable``)."""
    common = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_positions,
        "tie_word_embeddings": m.tie_embeddings,
        "dtype": "float32",
        "pad_token_id": None,
    }
    if family == "distilbert":
        return common | {
            "dim": m.d_model,
            "n_layers": m.n_layers,
            "n_heads": m.n_heads,
            "hidden_dim": m.ff_width,
            "activation": "gelu",
            "sinusoidal_pos_embds": False,
        }
    return common | {
        "hidden_size": m.d_model,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "intermediate_size": m.ff_width,
        "hidden_act": "gelu",
        "layer_norm_eps": m.norm_eps,
        "type_vocab_size": 2,
    }


def params_to_hf(params: dict, m, family: str) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array for our per-layer ``params`` (``{"params": ...}``)."""
    p, distil, d = params["params"], family == "distilbert", m.d_model
    hn = _head_names(distil)

    def dense(name: str, leaf: dict) -> dict:
        return {name + ".weight": linear_out(leaf["kernel"]), name + ".bias": f32(leaf["bias"])}

    def norm(name: str, leaf: dict) -> dict:
        return {name + ".weight": f32(leaf["scale"]), name + ".bias": f32(leaf["bias"])}

    out = {
        hn["emb"] + "word_embeddings.weight": f32(p["embed"]["embedding"])[: m.vocab_size],  # drop our mask row
        hn["emb"] + "position_embeddings.weight": f32(p["pos_embed"]["embedding"]),
        **norm(hn["emb"] + "LayerNorm", p["embed_norm"]),
        **dense(hn["transform"], p["mlm_transform"]),
        **norm(hn["transform_norm"], p["mlm_transform_norm"]),
        hn["bias"]: f32(p["head_bias"]),
    }
    if not distil:
        out["bert.embeddings.token_type_embeddings.weight"] = np.zeros((2, d), np.float32)
    for i in range(m.n_layers):
        layer, n = p[f"layers_{i}"], _names(distil, i)
        qkv = layer["mixer"]["qkv"]
        for j, x in enumerate("qkv"):
            cols = slice(j * d, (j + 1) * d)
            out.update(dense(n[x], {"kernel": f32(qkv["kernel"])[:, cols], "bias": f32(qkv["bias"])[cols]}))
        out.update(dense(n["o"], layer["mixer"]["o"]))
        out.update(norm(n["mixer_norm"], layer["mixer_norm"]))
        out.update(dense(n["up"], layer["mlp"]["up"]))
        out.update(dense(n["down"], layer["mlp"]["down"]))
        out.update(norm(n["mlp_norm"], layer["mlp_norm"]))
    if not m.tie_embeddings:
        out[hn["decoder"]] = linear_out(p["head"]["kernel"])
    return out
