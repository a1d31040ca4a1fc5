"""A sweep file: a base config, the axes to vary, and how to compare the points.

    name: mqar_quick
    base: ../experiments/mqar.yaml       # a config YAML, relative to this file
    set: [train.steps=400]                # overrides for every point (optional)
    grid:                                 # the cartesian product of these values ...
      model.preset: [transformer, hawk, mamba]
      model.d_model: [32, 64]
    points: []                            # ... or / and listed points ({key: value} each)
    lrs: [1.0e-3, 3.0e-3]                 # train each point at each lr, keep the best (optional)
    metric: val_accuracy                  # what "best" means: *loss* is minimised, others maximised
    budget: {match: params, adjust: model.d_model, multiple: 16}   # optional, see below
    plot: {x: model.d_model, series: model.preset}                  # optional

Budget matching holds ``params``, ``flops_per_token`` or ``decode_state_bytes`` roughly fixed
across architectures: for every point the integer key ``adjust`` is searched over multiples of
``multiple`` for the value whose quantity is closest (in ratio) to ``target`` (default: the
base config's own quantity). Only the model's arithmetic is evaluated, nothing is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slm_jax.config import Config, all_keys, config_from_dict, read_yaml_config
from slm_jax.data.task_data import head_fraction
from slm_jax.errors import ConfigError
from slm_jax.models import accounting

BUDGET_QUANTITIES = ("params", "flops_per_token", "decode_state_bytes")


@dataclass(frozen=True)
class Budget:
    match: str = ""  # params | flops_per_token | decode_state_bytes; "" -> no matching
    adjust: str = "model.d_model"
    multiple: int = 16
    target: float = 0.0  # 0 -> the base config's value


@dataclass(frozen=True)
class Sweep:
    name: str
    base: Path
    set: tuple[str, ...] = ()
    grid: dict = field(default_factory=dict)
    points: tuple[dict, ...] = ()
    lrs: tuple[float, ...] = ()
    metric: str = "val_loss"
    budget: Budget = Budget()
    plot: dict = field(default_factory=dict)

    @property
    def maximize(self) -> bool:
        return "loss" not in self.metric

    @property
    def axes(self) -> list[str]:
        """The keys that vary between points, in the order the file names them."""
        keys = list(self.grid)
        for p in self.points:
            keys += [k for k in p if k not in keys]
        if self.budget.match and self.budget.adjust not in keys:
            keys.append(self.budget.adjust)
        return keys


@dataclass(frozen=True)
class Point:
    """One configuration of a sweep: its axis values (after budget matching) and config."""

    values: dict
    cfg: Config

    @property
    def slug(self) -> str:
        """A directory name: ``preset=mamba,d_model=64`` (last part of each key); a list value is
        joined with ``+`` (``layer_pattern=rglru+local_attention``), as brackets are glob characters;
        an empty one is ``none``."""
        text = lambda v: ("+".join(map(str, v)) or "none") if isinstance(v, (list, tuple)) else str(v)
        return ",".join(f"{k.split('.')[-1]}={text(v)}" for k, v in self.values.items())


def _check_keys(raw: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(allowed)}."
            raise ConfigError(f"Unknown key {key!r} in {where}; {hint}")


# What each top-level key of a sweep file must hold: (accepted types, how to write it).
_SHAPES = {
    "name": ((str, int), "a string"),
    "base": ((str,), "a config path relative to the sweep file"),
    "set": ((list,), "a list of key=value strings"),
    "grid": ((dict,), "a mapping of config keys to lists of values"),
    "points": ((list,), "a list of {key: value} mappings"),
    "lrs": ((list,), "a list of positive numbers"),
    "metric": ((str,), "a metric name such as val_loss"),
    "budget": ((dict,), "a mapping such as {match: params}"),
    "plot": ((dict,), "a mapping such as {x: model.d_model}"),
}


def _check_shapes(raw: dict, path: Path) -> None:
    """Raise one ConfigError for the first value of the wrong kind: a wrong type, an empty axis, a bad lr or point."""
    for key, value in raw.items():
        types_, shape = _SHAPES[key]
        if value is not None and not isinstance(value, types_):
            raise ConfigError(f"{key}: in {path} must be {shape}, got {value!r}.")
    for key, values in (raw.get("grid") or {}).items():
        if isinstance(values, list) and not values:
            raise ConfigError(f"Sweep axis {key!r} in {path} has no values; give it at least one value or remove it.")
    for item in raw.get("set") or ():
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(
                f"set: in {path} must be {_SHAPES['set'][1]}, got {item!r}; write e.g. [train.steps=400]."
            )
    for point in raw.get("points") or ():
        if not isinstance(point, dict):
            raise ConfigError(f"points: in {path} must be {_SHAPES['points'][1]}, got {point!r}.")
    for lr in raw.get("lrs") or ():
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ConfigError(f"lrs: in {path} must be {_SHAPES['lrs'][1]}, got {lr!r}; write e.g. [1.0e-3, 3.0e-3].")
    budget = raw.get("budget") or {}
    if "multiple" in budget and (not isinstance(budget["multiple"], int) or budget["multiple"] <= 0):
        raise ConfigError(f"budget.multiple in {path} must be a positive integer, got {budget['multiple']!r}.")
    if "target" in budget and (
        isinstance(budget["target"], bool) or not isinstance(budget["target"], (int, float)) or budget["target"] < 0
    ):
        raise ConfigError(
            f"budget.target in {path} must be a number >= 0 (0: the base config's own), got {budget['target']!r}."
        )


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (see the module docstring)."""
    path = Path(path)
    raw = read_yaml_config(path)
    fields = tuple(f.name for f in dataclasses.fields(Sweep))
    _check_keys(raw, fields, str(path))
    _check_shapes(raw, path)
    if "base" not in raw:
        raise ConfigError(f"{path} has no 'base:'; name the config YAML the sweep varies, relative to the sweep file.")
    budget = raw.get("budget") or {}
    _check_keys(budget, tuple(f.name for f in dataclasses.fields(Budget)), f"{path} budget")
    sweep = Sweep(
        name=str(raw.get("name") or path.stem),
        base=(path.parent / raw["base"]).resolve(),
        set=tuple(raw.get("set") or ()),
        grid={k: list(v) if isinstance(v, list) else [v] for k, v in (raw.get("grid") or {}).items()},
        points=tuple(raw.get("points") or ()),
        lrs=tuple(float(x) for x in raw.get("lrs") or ()),
        metric=str(raw.get("metric", "val_loss")),
        budget=Budget(**budget),
        plot=dict(raw.get("plot") or {}),
    )
    known = set(all_keys())
    for key in sweep.axes + [sweep.budget.adjust] * bool(sweep.budget.match):
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise ConfigError(
                f"Sweep axis {key!r} is not a config key; "
                + (f"did you mean {close[0]!r}?" if close else "see docs/config.md.")
            )
    if sweep.budget.match and sweep.budget.match not in BUDGET_QUANTITIES:
        raise ConfigError(f"budget.match {sweep.budget.match!r} is not one of {', '.join(BUDGET_QUANTITIES)}.")
    if not sweep.axes and not sweep.lrs:
        raise ConfigError(f"{path} varies nothing; give it a grid:, points: or lrs:.")
    return sweep


def quantity(cfg: Config, name: str) -> float:
    """params, flops_per_token (training, forward + backward) or decode_state_bytes (one sequence)."""
    info = accounting.summary(cfg.model, cfg.train.seq_len, head_fraction(cfg))
    return float(info["decode_state_bytes_per_seq" if name == "decode_state_bytes" else name])


def _match_budget(raw: dict, overrides: list, budget: Budget, target: float) -> tuple[Any, Config]:
    """The multiple of ``budget.multiple`` for ``budget.adjust`` whose quantity is closest to target."""
    best = None
    for k in range(1, 257):
        value = k * budget.multiple
        try:
            cfg = config_from_dict(raw, overrides + [(budget.adjust, value)])
            q = quantity(cfg, budget.match)
        except ConfigError:
            continue  # e.g. a width that the head count (or Mamba-2's head_dim) does not divide
        gap = abs(math.log(max(q, 1.0) / target))
        if best is None or gap < best[0]:
            best = (gap, value, cfg)
        if q > 2 * target:
            break
    if best is None:
        raise ConfigError(
            f"No value of {budget.adjust} (multiples of {budget.multiple}) gives a valid config; "
            "change budget.multiple."
        )
    return best[1], best[2]


def expand(sweep: Sweep) -> list[Point]:
    """Every point of the sweep (grid product, then listed points), budget-matched."""
    raw = read_yaml_config(sweep.base)
    base_overrides = list(sweep.set)
    combos = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())] if sweep.grid else []
    combos += [dict(p) for p in sweep.points]
    combos = combos or [{}]
    target = sweep.budget.target
    if sweep.budget.match and not target:
        target = quantity(config_from_dict(raw, base_overrides), sweep.budget.match)
    points = []
    for values in combos:
        overrides = base_overrides + list(values.items())
        if sweep.budget.match:
            adjusted, cfg = _match_budget(raw, overrides, sweep.budget, target)
            values = {**values, sweep.budget.adjust: adjusted}
        else:
            cfg = config_from_dict(raw, overrides)
        points.append(Point(values, cfg))
    return points


def describe(points: list[Point]) -> str:
    """A text table of the points and their budgets (``slm sweep --dry-run``)."""
    lines = []
    for i, p in enumerate(points, 1):
        info = accounting.summary(p.cfg.model, p.cfg.train.seq_len, head_fraction(p.cfg))
        lines.append(
            f"{i:3d}. {p.slug:48s} params {info['params']:>10,}  MFLOP/token {info['flops_per_token'] / 1e6:8.2f}  "
            f"state {info['decode_state_bytes_per_seq']:>10,} B"
        )
    return "\n".join(lines)


def dump(sweep: Sweep) -> str:
    """The sweep as YAML (written next to the results)."""
    d = dataclasses.asdict(sweep)
    d["base"] = str(sweep.base)
    d["set"], d["points"], d["lrs"] = list(sweep.set), list(sweep.points), list(sweep.lrs)
    return yaml.safe_dump(d, sort_keys=False)
