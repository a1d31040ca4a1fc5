import pathlib

import pytest

from slm_jax.config import Config, all_keys, config_from_dict, load_config, replace, to_dict, to_yaml
from slm_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_defaults_and_public_keys():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config)
    keys = set(all_keys())
    for k in [
        "model.preset",
        "model.n_layers",
        "model.d_model",
        "model.n_heads",
        "model.n_kv_heads",
        "model.vocab_size",
        "data.path",
        "train.steps",
        "train.batch_size",
        "train.seq_len",
        "train.seed",
        "optim.lr",
    ]:
        assert k in keys


def test_overrides_are_typed():
    cfg = config_from_dict({}, ["train.steps=7", "optim.lr=3e-4", "model.layer_pattern=[attention]", "optim.lr=1"])
    assert cfg.train.steps == 7
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.layer_pattern == ("attention",)


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'train.steps'"):
        config_from_dict({}, ["train.step=5"])
    with pytest.raises(ConfigError, match="model.d_model"):
        config_from_dict({"model": {"d_modl": 64}})


def test_wrong_type():
    with pytest.raises(ConfigError, match="expects int"):
        config_from_dict({}, ["train.steps=abc"])
    with pytest.raises(ConfigError, match="expects bool"):
        config_from_dict({"model": {"tie_embeddings": "yes"}})


def test_inconsistent_sizes():
    with pytest.raises(ConfigError, match="divisible by model.n_heads"):
        config_from_dict({"model": {"d_model": 100, "n_heads": 3}})
    with pytest.raises(ConfigError, match="divisible by model.n_kv_heads"):
        config_from_dict({"model": {"n_heads": 4, "n_kv_heads": 3}})
    with pytest.raises(ConfigError, match="Unknown mixer"):
        config_from_dict({"model": {"layer_pattern": ["atention"]}})
    with pytest.raises(ConfigError, match="Unknown model.preset"):
        config_from_dict({"model": {"preset": "gpt5"}})
    with pytest.raises(ConfigError, match="grad_accum"):
        config_from_dict({"train": {"batch_size": 10, "grad_accum": 3}})


def test_override_without_equals_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no '='"):
        config_from_dict({}, ["train.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_preset_supplies_defaults_and_user_wins():
    cfg = config_from_dict({"model": {"preset": "transformer", "mlp": "geglu"}})
    assert cfg.model.pattern == ("attention",) and cfg.model.mlp == "geglu"


def test_yaml_round_trip():
    cfg = config_from_dict({}, ["model.d_model=96", "model.n_heads=3"])
    import yaml

    assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
    assert replace(cfg, **{"train.steps": 3}).train.steps == 3
    assert to_dict(cfg)["model"]["d_model"] == 96


MODEL_CONFIGS = sorted(ROOT.glob("configs/models/*.yaml")) + sorted(ROOT.glob("configs/experiments/*.yaml"))


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_every_config_in_repo_parses_and_builds(path):
    import jax
    import numpy as np

    from slm_jax.models.lm import CausalLM

    raw_cfg = load_config(path)
    cfg = replace(raw_cfg, **{"model.vocab_size": raw_cfg.model.vocab_size or 65})
    params = jax.eval_shape(lambda: CausalLM(cfg.model).init(jax.random.key(0), np.zeros((1, 8), np.int32)))
    assert params


def test_every_key_is_documented():
    """docs/config.md names every key, in full or as `section.*` with the leaf name in the row."""
    from pathlib import Path

    from slm_jax.config import all_keys

    doc = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| `")}
    missing = []
    for key in all_keys():
        if f"`{key}`" in doc:
            continue
        parts = key.split(".")
        groups = [rows.get(f"`{'.'.join(parts[:i])}.*`", "") for i in range(1, len(parts))]
        if not any(
            f"`{parts[-1]}`" in g or f" {parts[-1]} " in g or f"`{parts[-1]}` " in g for g in groups
        ) and not any(f"`{parts[-1]}`" in line for k, line in rows.items() if k.startswith(f"`{parts[0]}.")):
            missing.append(key)
    assert not missing, f"document these keys in docs/config.md: {missing}"
