"""Sweeps: points expand as written, budgets match, finished runs are skipped, interrupted ones resume."""

import csv

import pytest
import yaml

from slm_jax.errors import ConfigError
from slm_jax.sweep import runner
from slm_jax.sweep.report import write_report
from slm_jax.sweep.runner import run_sweep
from slm_jax.sweep.spec import expand, load_sweep, quantity
from slm_jax.training.tracking import read_metrics

BASE = {
    "name": "tiny",
    "model": {"n_layers": 1, "d_model": 32, "n_heads": 2},
    "data": {"synthetic": "reverse"},
    "train": {"steps": 6, "batch_size": 2, "seq_len": 16, "log_every": 1},
    "eval": {"every": 6, "batches": 1},
    "checkpoint": {"every": 3},
}


def write(tmp_path, sweep, base=BASE):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({**base, "data": {**base["data"], "cache_dir": str(tmp_path / "cache")}})
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **sweep}, sort_keys=False))
    return load_sweep(path)


def test_grid_and_points_expand_in_order(tmp_path):
    sweep = write(
        tmp_path,
        {
            "grid": {"model.preset": ["transformer", "mamba"], "model.d_model": [32, 48]},
            "points": [{"model.preset": "mamba2", "model.d_model": 16}],
        },
    )
    points = expand(sweep)
    assert [p.slug for p in points] == [
        "preset=transformer,d_model=32",
        "preset=transformer,d_model=48",
        "preset=mamba,d_model=32",
        "preset=mamba,d_model=48",
        "preset=mamba2,d_model=16",
    ]
    assert points[2].cfg.model.pattern == ("mamba",) and points[2].cfg.model.mlp == "none"  # preset fields follow
    assert points[4].cfg.model.d_model == 16 and points[0].cfg.train.steps == 6


def test_budget_matching_holds_params_close(tmp_path):
    sweep = write(
        tmp_path,
        {
            "grid": {"model.preset": ["transformer", "mamba", "mamba2"]},
            "budget": {"match": "params", "adjust": "model.d_model", "multiple": 8},
        },
    )
    points = expand(sweep)
    target = quantity(points[0].cfg, "params")
    for p in points:
        assert abs(quantity(p.cfg, "params") / target - 1) < 0.25, p.slug
    assert len({p.values["model.d_model"] for p in points}) > 1  # the width really moved


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"grid": {"model.n_layer": [1]}}, "model.n_layers"),
        ({"gird": {}}, "grid"),
        ({}, "varies nothing"),
        ({"grid": {"model.d_model": [32]}, "budget": {"match": "speed"}}, "budget.match"),
    ],
)
def test_bad_sweep_files_are_clear_errors(tmp_path, sweep, message):
    with pytest.raises(ConfigError, match=message):
        write(tmp_path, sweep)


def test_sweep_runs_skips_finished_and_resumes_interrupted(tmp_path, monkeypatch):
    sweep = write(tmp_path, {"grid": {"model.preset": ["transformer", "mamba"]}, "lrs": [1e-3, 3e-3]})
    points = expand(sweep)
    out = tmp_path / "out"
    # Interrupt the second run after step 3 (as Ctrl-C would), before the sweep ever started.
    name, cfg = runner._runs_of(sweep, points[0])[1]
    runner.train(cfg, out / "runs" / name, until_step=3, progress=False)
    calls = []
    real_train = runner.train
    monkeypatch.setattr(
        runner,
        "train",
        lambda cfg, run_dir, progress: calls.append(run_dir.name) or real_train(cfg, run_dir, progress=False),
    )
    records = run_sweep(sweep, points, out, progress=False)
    assert len(records) == 4 and len(calls) == 4
    resumed = [m["step"] for m in read_metrics(out / "runs" / name) if "loss" in m]
    assert resumed == [1, 2, 3, 4, 5, 6]  # continued, not restarted
    table = write_report(sweep, records, out)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model.preset"] for r in rows] == ["transformer", "mamba"]  # one row per point
    assert len(list(csv.DictReader((out / "all_runs.csv").open()))) == 4
    assert "preset" in table and (out / "loss_curves.png").is_file() and (out / "metric_vs_state.png").is_file()
    calls.clear()
    assert len(run_sweep(sweep, points, out, progress=False)) == 4 and calls == []  # all skipped now


def test_interrupted_run_stops_the_sweep_with_a_resume_hint(tmp_path, monkeypatch):
    sweep = write(tmp_path, {"grid": {"model.preset": ["transformer"]}})
    real_train = runner.train
    monkeypatch.setattr(
        runner, "train", lambda cfg, run_dir, progress: real_train(cfg, run_dir, until_step=2, progress=False)
    )
    with pytest.raises(runner.SweepInterrupted, match="run the same sweep command again"):
        run_sweep(sweep, expand(sweep), tmp_path / "out", progress=False)


def test_list_values_make_glob_safe_directory_names(tmp_path):
    sweep = write(
        tmp_path,
        {"points": [{"model.layer_pattern": ["rglru", "local_attention"], "model.mixers.local_attention.window": 4}]},
    )
    (point,) = expand(sweep)
    assert point.slug == "layer_pattern=rglru+local_attention,window=4"
    assert point.cfg.model.pattern == ("rglru", "local_attention")
    (empty,) = expand(write(tmp_path, {"points": [{"train.curriculum": []}]}))
    assert empty.slug == "curriculum=none"
