"""The experiments of a checkout: one per configs/NAME.yaml and one per point of each sweep
(configs/sweeps/NAME.yaml, doctrain.sweeps), each validated on its own.

An experiment's name becomes part of file names, Snakemake wildcard patterns and shell commands, so
it is restricted to a safe alphabet. A config or sweep that is broken or badly named stops only its
own targets: the others still build.

Experiments of a sweep whose data settings agree share the data stages (doctrain.stages marks them
`shared`): each is served by the first of them, its `data_owner`, so the cache is built once."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from doctrain import sweeps
from doctrain._io import HashCache
from doctrain.config import (
    NAME,
    SCHEMA,
    canonical_json,
    format_overrides,
    read_yaml,
    validate_config,
    with_overrides,
)
from doctrain.errors import UserError
from doctrain.fingerprint import PACKAGE_DIR, data_settings_json, environment_digest, module_digests

ALL = "all"  # results/compare/all.md compares every experiment


@dataclass
class Experiments:
    configs: dict[str, dict] = field(default_factory=dict)  # name -> validated config
    broken: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be used
    sweeps: dict[str, list[str]] = field(default_factory=dict)  # sweep -> its experiments
    broken_sweeps: dict[str, str] = field(default_factory=dict)  # sweep -> why it cannot be used
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # sweep experiment -> keys set
    data_owner: dict[str, str] = field(default_factory=dict)  # experiment -> whose data stages serve it

    def broken_message(self) -> str:
        """All broken configs and sweeps at once, one per line."""
        problems = [*self.broken.values(), *self.broken_sweeps.values()]
        return f"{len(problems)} experiment config(s) or sweep(s) cannot be used:\n  " + "\n  ".join(problems)

    def owner(self, exp: str) -> str:
        return self.data_owner.get(exp, exp)

    def select(self, names: list[str]) -> list[str]:
        """Experiments by name, a sweep's name standing for its experiments; all of them for none."""
        if not names:
            return sorted(self.configs)
        unknown = [n for n in names if n not in self.configs and n not in self.sweeps]
        if set(unknown) & (set(self.broken) | set(self.broken_sweeps)):
            raise UserError(self.broken_message())
        if unknown:
            plain = sorted(set(self.configs) - set(self.overrides))
            raise UserError(
                f"no experiment or sweep named {unknown[0]} (experiments are configs/NAME.yaml, sweeps "
                f"configs/sweeps/NAME.yaml; have: {', '.join(plain)}; "
                f"sweeps: {', '.join(self.sweeps) or 'none'})"
            )
        return list(dict.fromkeys(m for n in names for m in self.sweeps.get(n, [n])))


def _bad_name(path: Path, what: str) -> str | None:
    if NAME.fullmatch(path.stem):
        return None
    return (
        f"{path}: the {what} name '{path.stem}' may only hold letters, digits, '_', '-' and '.', "
        "and must start with a letter or digit; rename the file"
    )


def find(
    config_dir: str | Path, overrides: dict[str, Any] | None = None, cache: HashCache | None = None
) -> Experiments:
    """Every experiment under config_dir, with `overrides` (dotted key -> value) set in each. With a
    cache, what was found is remembered by all it depends on (the config and sweep files, the
    schemas, the code that reads them, the pinned environment): a plan of a 100-point sweep then
    validates nothing (~0.15 s)."""
    overrides, folder = overrides or {}, Path(config_dir)
    if cache is None:
        return _find(folder, overrides)
    files = [*sorted(folder.glob("*.yaml")), *sorted(folder.joinpath("sweeps").glob("*.yaml"))]
    depends_on = {
        "folder": str(folder),
        "overrides": overrides,
        "files": {str(path): cache.sha256(path) for path in files},
        "schemas": {name: cache.sha256(PACKAGE_DIR / name) for name in (SCHEMA, sweeps.SCHEMA)},
        "code": module_digests(__name__, cache),
        "environment": environment_digest(),
    }
    text = cache.remembered(
        "experiments", canonical_json(depends_on), lambda: json.dumps(asdict(_find(folder, overrides)))
    )
    return Experiments(**json.loads(text))


def _find(config_dir: Path, overrides: dict[str, Any]) -> Experiments:
    found = Experiments()
    raw_configs = {}
    for path in sorted(config_dir.glob("*.yaml")):
        name = path.stem
        problem = _bad_name(path, "experiment")
        if problem:
            found.broken[name] = problem
            continue
        try:
            raw_configs[name] = read_yaml(path)
            source = f"{path} with --config overrides" if overrides else str(path)
            found.configs[name] = validate_config(
                with_overrides(raw_configs[name], overrides, source), source
            )
        except UserError as exc:
            found.broken[name] = str(exc)
    for path in sorted(config_dir.joinpath("sweeps").glob("*.yaml")):
        try:
            _add_sweep(found, path, raw_configs, overrides)
        except UserError as exc:
            found.broken_sweeps[path.stem] = str(exc)
    _check_warm_starts(found)
    return found


def _check_warm_starts(found: Experiments) -> None:
    """model.init_from must name a usable experiment, and following it must never come back."""
    changed = True
    while changed:
        changed = False
        for name, config in list(found.configs.items()):
            chain, start = [name], config["model"]["init_from"]
            while start is not None and start not in chain and start in found.configs:
                chain.append(start)
                start = found.configs[start]["model"]["init_from"]
            if start is None:
                continue
            if start in chain:
                why = f"model.init_from makes a loop: {' -> '.join([*chain, start])}"
            elif start in found.broken:
                why = f"model.init_from names {start}, which cannot be used"
            else:
                why = (
                    f"model.init_from names {start}, which is no experiment (configs/NAME.yaml or a sweep's)"
                )
            del found.configs[name]
            found.broken[name] = f"{name}: {why}"
            for sweep, members in list(found.sweeps.items()):
                if name in members:
                    found.broken_sweeps[sweep] = f"{sweep}: experiment {found.broken[name]}"
                    del found.sweeps[sweep]
            changed = True


def _add_sweep(
    found: Experiments, path: Path, raw_configs: dict[str, Any], overrides: dict[str, Any]
) -> None:
    problem = _bad_name(path, "sweep")
    if problem:
        raise UserError(problem)
    if path.stem == ALL:
        raise UserError(f"{path}: '{ALL}' names the table of every experiment; rename the sweep")
    sweep = sweeps.load(path)
    if sweep.base not in found.configs:
        why = found.broken.get(sweep.base, f"configs/{sweep.base}.yaml does not exist")
        raise UserError(f"{path}: its base experiment '{sweep.base}' cannot be used ({why})")
    taken = [
        point.name for point in sweep.points if point.name in found.configs or point.name in found.broken
    ]
    if taken:
        raise UserError(f"{path}: experiment {taken[0]} is also defined elsewhere; rename the sweep")
    configs, problems = {}, []
    for point in sweep.points:
        source = f"{path} ({format_overrides(point.varied)})"
        try:
            configs[point.name] = validate_config(
                with_overrides(raw_configs[sweep.base], {**point.overrides, **overrides}, source), source
            )
        except UserError as exc:
            problems.append(str(exc))
    if problems:
        raise UserError("; ".join(problems))
    owners = {data_settings_json(found.configs[sweep.base]): sweep.base}
    for point in sweep.points:
        found.configs[point.name] = configs[point.name]
        found.overrides[point.name] = point.overrides
        found.data_owner[point.name] = owners.setdefault(data_settings_json(configs[point.name]), point.name)
    found.sweeps[sweep.name] = [point.name for point in sweep.points]
