"""Sweeps: many experiments from one file, the Snakemake way (one named experiment per point).

configs/sweeps/NAME.yaml names a base experiment config and the dotted keys to vary:

    base: smoke
    set: {schedule.epochs: 1}              # in every experiment, not in the names
    grid: {optimizer.lr: [1.0e-3, 3.0e-3], loss.m: [0.2, 0.3]}
    variants: [{loss.name: arcface, loss.s: 30.0}]   # optional, each combined with the grid

Each point is an experiment named NAME.KEY-VALUE_KEY-VALUE (`lrs.lr-0.001_m-0.2`), KEY the last
part of the dotted key unless two keys of the sweep share it. A name is a function of the point
alone, so adding a value to the grid leaves every other experiment, and its results, as they were.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctrain.config import (
    NAME,
    _key_path,
    canonical_json,
    format_overrides,
    read_yaml,
    schema_validator,
    yaml_number,
)
from doctrain.errors import UserError

SCHEMA = "sweep.schema.yaml"


@dataclass(frozen=True)
class Point:
    name: str  # the experiment's name
    overrides: dict[str, Any]  # every dotted key set on the base, `set` included
    varied: dict[str, Any]  # the keys that make this point differ from the others


@dataclass(frozen=True)
class Sweep:
    name: str
    base: str
    points: tuple[Point, ...]


def _token(value: Any) -> str:
    """A value as it appears in an experiment name: readable where it can be, else a short digest."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return format(value, "g")
    if isinstance(value, str) and NAME.fullmatch(value):
        return value
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:8]


def _short_keys(keys: list[str]) -> dict[str, str]:
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {
        key: tail if last.count(tail) == 1 else key.replace(".", "-")
        for key, tail in zip(keys, last, strict=True)
    }


def _numbers(overrides: dict[str, Any]) -> dict[str, Any]:
    return {key: yaml_number(value) for key, value in overrides.items()}


def load(path: str | Path) -> Sweep:
    """Read a sweep file and expand it into its points (the configs are validated by the caller)."""
    path = Path(path)
    raw = read_yaml(path)
    errors = sorted(schema_validator(SCHEMA).iter_errors(raw), key=_key_path)
    if errors:
        problems = "; ".join(f"{_key_path(e)}: {e.message}" for e in errors)
        raise UserError(f"{path} is not a valid doctrain sweep: {problems}")
    grid = {key: [yaml_number(v) for v in values] for key, values in raw.get("grid", {}).items()}
    variants = [_numbers(variant) for variant in raw.get("variants", [{}])]
    common = _numbers(raw.get("set", {}))
    varied_keys = list(dict.fromkeys([*grid, *(key for variant in variants for key in variant)]))
    short = _short_keys(varied_keys)
    points, seen = [], {}
    for variant in variants:
        for values in itertools.product(*grid.values()):
            varied = {**variant, **dict(zip(grid, values, strict=True))}
            ordered = {key: varied[key] for key in varied_keys if key in varied}
            name = f"{path.stem}." + "_".join(f"{short[k]}-{_token(v)}" for k, v in ordered.items())
            if name in seen:
                raise UserError(
                    f"{path}: {format_overrides(seen[name])} and {format_overrides(ordered)} both make "
                    f"the experiment {name}; give each point distinct values"
                )
            seen[name] = ordered
            points.append(Point(name, {**common, **ordered}, ordered))
    return Sweep(path.stem, raw["base"], tuple(points))
