"""The experiments of a checkout: one per configs/NAME.yaml, each validated on its own.

An experiment's name becomes part of file names, Snakemake wildcard patterns and shell commands, so
it is restricted to a safe alphabet. A config that is broken or badly named stops only its own
targets: the others still build."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from doctrain.config import load_config
from doctrain.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Experiments:
    configs: dict[str, dict] = field(default_factory=dict)  # name -> validated config
    broken: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be used

    def broken_message(self) -> str:
        """All broken configs at once, one per line."""
        return f"{len(self.broken)} experiment config(s) cannot be used:\n  " + "\n  ".join(
            self.broken.values()
        )


def find(config_dir: str | Path) -> Experiments:
    found = Experiments()
    for path in sorted(Path(config_dir).glob("*.yaml")):
        name = path.stem
        if not NAME.fullmatch(name):
            found.broken[name] = (
                f"{path}: the experiment name '{name}' may only hold letters, digits, '_', '-' and '.', "
                "and must start with a letter or digit; rename the file"
            )
            continue
        try:
            found.configs[name] = load_config(path)
        except UserError as exc:
            found.broken[name] = str(exc)
    return found
