"""The Hugging Face round-trip check shared by the parity test files (tiny random models, no download).

``assert_round_trip`` builds a ``transformers`` model from a config class name and keyword
arguments, then: save_pretrained -> ``from_hf`` -> logits equal on a fixed batch; -> ``to_hf`` ->
``from_pretrained`` loads every tensor and gives the same logits; greedy generation of 32 tokens
through our cached decode equals ``transformers``' ``generate``. Callers skip without torch.
"""

import json

import numpy as np
import torch
import transformers

from slm_jax.data.tokenizers import CharTokenizer
from slm_jax.inference.generate import generate
from slm_jax.inference.run import load_run
from slm_jax.interop.convert import from_hf, to_hf
from slm_jax.interop.hf_tokenizer import hf_tokenizer_json

TOL = 1e-4
SEQ = 24  # longer than every sliding window of the test configs
VOCAB = 97


def hf_model(cls_name: str, kwargs: dict, causal_lm: str = "AutoModelForCausalLM"):
    """A random ``transformers`` model of config class ``cls_name``, every parameter perturbed, float32, eval."""
    ids = {"vocab_size": VOCAB, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if "text_config" in kwargs:  # a multimodal config: the vocabulary and token ids are its text model's
        kwargs, ids = {**kwargs, "text_config": {**ids, **kwargs["text_config"]}}, {}
    config = getattr(transformers, cls_name)(**ids, **kwargs)
    torch.manual_seed(0)
    cls = getattr(transformers, causal_lm)
    model = (cls.from_config(config) if hasattr(cls, "from_config") else cls(config)).float().eval()
    with torch.no_grad():  # perturb everything so zero-initialised biases and norms are exercised too
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def hf_greedy(model, prompt: np.ndarray, n: int) -> np.ndarray:
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=n, do_sample=False)
    return out[:, prompt.shape[1] :].numpy()


def assert_round_trip(
    case: str,
    cls_name: str,
    kwargs: dict,
    tmp_path,
    shard: bool = False,
    tol: float = TOL,
    causal_lm: str = "AutoModelForCausalLM",
    exported_as: str | None = None,
) -> dict:
    """Both-direction logit parity and 32 equal greedy tokens; returns the two max |logit diff|.

    ``causal_lm``: the transformers class that builds the source model; ``exported_as``: the model_type our
    export writes when it is not the source's (a multimodal source exports its text model)."""
    tokens = np.random.RandomState(0).randint(0, VOCAB, (2, SEQ))
    model = hf_model(cls_name, kwargs, causal_lm)
    family = model.config.model_type
    hf_dir, run_dir, out_dir = tmp_path / "hf", tmp_path / "run", tmp_path / "hf_out"
    model.save_pretrained(hf_dir, max_shard_size="20KB" if shard else "1GB")
    if shard:
        assert (hf_dir / "model.safetensors.index.json").is_file()  # the sharded path is exercised
    chars = "".join(chr(ord("!") + i) for i in range(VOCAB))
    (hf_dir / "tokenizer.json").write_text(hf_tokenizer_json(CharTokenizer(chars)))
    ref = hf_logits(model, tokens)

    # HF -> ours
    from_hf(hf_dir, run_dir)
    run = load_run(run_dir)
    ours = np.asarray(run.model.apply(run.params, tokens)[0])
    to_ours = float(np.abs(ours - ref).max())
    assert to_ours <= tol, f"{case}: HF -> slm_jax logits differ by {to_ours}"
    assert run.tokenizer.decode(run.tokenizer.encode("!#%")) == "!#%"

    # ours -> HF
    summary = to_hf(run_dir, out_dir)
    assert summary["family"] == (exported_as or family)
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        out_dir, output_loading_info=True, dtype=torch.float32
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    to_hf_diff = float(np.abs(hf_logits(back.eval(), tokens) - ours).max())
    assert to_hf_diff <= tol, f"{case}: slm_jax -> HF logits differ by {to_hf_diff}"
    assert json.loads((out_dir / "tokenizer.json").read_text())["model"]["type"] == "BPE"

    # greedy generation, 32 tokens
    prompt = tokens[:, :8]
    hf_tokens = hf_greedy(model, prompt, 32)
    our_tokens = np.concatenate(list(generate(run.model, run.params, prompt, 32, temperature=0.0, chunk=32)), axis=1)
    np.testing.assert_array_equal(our_tokens, hf_tokens)
    print(f"\n{case}: max |logit diff| HF->ours {to_ours:.2e}, ours->HF {to_hf_diff:.2e}, greedy 32 tokens equal")
    return {"to_ours": to_ours, "to_hf": to_hf_diff}
