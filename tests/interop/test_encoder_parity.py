"""Hugging Face masked-LM encoders (BERT, DistilBERT, ModernBERT) both ways, on tiny random models built here.

Each case saves a random ``*ForMaskedLM`` (every weight perturbed, so zero-initialised biases and
unit norms are exercised), converts it with ``from_hf``, compares the logits over the whole HF
vocabulary on a right-padded batch of two unequal lengths (HF ``attention_mask`` vs our
``lengths``, valid positions only), then exports the run with ``to_hf``, reloads it with
``from_pretrained`` and compares again. Needs the ``interop`` extra (torch, transformers).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slm_jax.errors import CheckpointError  # noqa: E402
from slm_jax.inference.run import load_run  # noqa: E402
from slm_jax.interop.convert import from_hf, to_hf  # noqa: E402

TOL = 1e-4
SEQ = 12  # longer than ModernBERT's local window below (|i - j| <= 2)
LENGTHS = (SEQ, 7)
VOCAB = 97

CASES = {
    # post-norm, learned positions + token type 0, GELU MLP, tied decoder + bias
    "bert": ("BertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)),
    # DistilBERT names, an untied vocab projector
    "distilbert": (
        "DistilBertConfig",
        dict(dim=32, n_layers=2, n_heads=4, hidden_dim=40, tie_word_embeddings=False),
    ),
    # global, local, local (window 4 -> |i - j| <= 2), two RoPE bases, GeGLU, biased LayerNorms and attention
    "modernbert": (
        "ModernBertConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=40,
            local_attention=4,
            norm_bias=True,
            attention_bias=True,
            classifier_bias=True,
            global_rope_theta=1000.0,
            local_rope_theta=50.0,
            bos_token_id=None,
            eos_token_id=None,
            cls_token_id=None,
            sep_token_id=None,
        ),
    ),
}


def _hf_model(family, **overrides):
    cls_name, kwargs = CASES[family]
    config = getattr(transformers, cls_name)(
        vocab_size=VOCAB, max_position_embeddings=16, pad_token_id=0, **{**kwargs, **overrides}
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForMaskedLM.from_config(config, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_logits(model, tokens, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.logits.float().numpy()


def _max_valid_diff(a, b, lengths):
    return max(float(np.abs(a[i, :n] - b[i, :n]).max()) for i, n in enumerate(lengths))


@pytest.mark.parametrize("family", list(CASES))
def test_encoder_round_trip_parity(family, tmp_path):
    rng = np.random.RandomState(0)
    tokens = rng.randint(1, VOCAB, (2, SEQ))
    lengths = np.array(LENGTHS, np.int32)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    tokens = np.where(mask == 1, tokens, 0)  # right padding with the pad id
    model = _hf_model(family)
    hf_dir, run_dir, out_dir = tmp_path / "hf", tmp_path / "run", tmp_path / "hf_out"
    model.save_pretrained(hf_dir)
    ref = _hf_logits(model, tokens, mask)

    from_hf(hf_dir, run_dir)
    run = load_run(run_dir)
    ours = np.asarray(run.model.apply(run.params, tokens, lengths=lengths)[0])
    assert ours.shape == ref.shape  # the logits cover the whole HF vocabulary
    to_ours = _max_valid_diff(ours, ref, LENGTHS)
    assert to_ours <= TOL, f"{family}: HF -> slm_jax logits differ by {to_ours}"
    alone = np.asarray(run.model.apply(run.params, tokens[1:, : LENGTHS[1]])[0])
    assert float(np.abs(alone[0] - ours[1, : LENGTHS[1]]).max()) <= TOL  # padding changes nothing

    summary = to_hf(run_dir, out_dir)
    assert summary["family"] == family
    back, info = transformers.AutoModelForMaskedLM.from_pretrained(
        out_dir, output_loading_info=True, dtype=torch.float32, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    back_logits = _hf_logits(back.eval(), tokens, mask)
    to_hf_diff = _max_valid_diff(back_logits, ours, LENGTHS)
    assert to_hf_diff <= TOL, f"{family}: slm_jax -> HF logits differ by {to_hf_diff}"
    print(f"\n{family}: max |logit diff| HF->ours {to_ours:.2e}, ours->HF {to_hf_diff:.2e}")


@pytest.mark.parametrize(
    ("family", "field", "value"),
    [
        ("bert", "position_embedding_type", "relative_key"),
        ("bert", "hidden_act", "gelu_new"),
        ("distilbert", "some_new_switch", True),
        ("modernbert", "classifier_activation", "silu"),
    ],
)
def test_unimplemented_field_stops_the_conversion(family, field, value, tmp_path):
    model = _hf_model(family)
    model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=field):
        from_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run").exists()
