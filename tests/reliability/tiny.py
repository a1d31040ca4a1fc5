"""Helpers of the reliability tests: a tiny char-level config, its losses, and the one-line error check."""

from __future__ import annotations

from pathlib import Path

import yaml

from slm_jax.training.tracking import read_metrics

PHRASE = "the cat sat on the mat. "


def write_config(tmp: Path, name: str = "tiny", corpus_text: str = PHRASE * 300, **sections) -> Path:
    """``<tmp>/<name>.yaml``: a 1-layer, 16-wide transformer on ``corpus_text``, 4 steps, checkpoints every 2.

    ``sections`` update the config's sections, e.g. ``train={"steps": 6}``.
    """
    corpus = tmp / f"{name}_corpus.txt"
    corpus.write_text(corpus_text)
    cfg = {
        "name": name,
        "model": {"n_layers": 1, "d_model": 16, "n_heads": 2},
        "data": {"path": str(corpus), "cache_dir": str(tmp / "cache")},
        "train": {"steps": 4, "batch_size": 2, "seq_len": 8, "log_every": 1},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "eval": {"every": 4, "batches": 1},
        "checkpoint": {"every": 2, "keep": 3, "async_save": False},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> training loss from a run's metrics.jsonl."""
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def one_error_line(capsys) -> str:
    """The captured stderr, asserted to be exactly one ``error: ...`` line without a traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err
