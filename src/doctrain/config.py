"""Experiment configs: load YAML, validate against the schema (config.schema.yaml, package data
beside this module, so an installed doctrain finds it too), fill defaults."""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import jsonschema

from doctrain.errors import UserError

# What an experiment (its config file's stem) and a value in a sweep point's name may be: names reach
# paths and shell lines, so only characters that need no quoting.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SYNTH_MANIFEST = re.compile(r"data/synth/(?P<name>[A-Za-z0-9_.-]+)/manifest\.csv")
SCHEMA = "config.schema.yaml"
# libyaml's loader where PyYAML was built with it (the wheels are): the same safe loading, 6x faster
# (a plan reads every config again once one has changed; the commands read them each time).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAML_LOADER)


def load_schema(name: str = SCHEMA) -> dict:
    return load_yaml(importlib.resources.files("doctrain").joinpath(name).read_text())


@functools.cache
def schema_validator(name: str = SCHEMA) -> jsonschema.protocols.Validator:
    """A validator of the named schema that also fills in each property's default (the recipe of the
    jsonschema FAQ). jsonschema is imported here, not above: a plan that finds its experiments
    remembered (doctrain.experiments) validates nothing and spares the import (~40 ms)."""
    import jsonschema

    validate_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    with_defaults = jsonschema.validators.extend(
        jsonschema.Draft202012Validator, {"properties": set_defaults}
    )
    return with_defaults(load_schema(name))


def _stringify_int_keys(value: Any) -> Any:
    # YAML reads `{0: batch_size}` (the reference format of dynamic_axes) with an int key; JSON
    # Schema and JSON only know string keys.
    if isinstance(value, dict):
        return {str(k): _stringify_int_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_int_keys(v) for v in value]
    return value


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _non_finite(value: Any, path: str = "") -> list[str]:
    """'key.path: value' of NaN and infinite numbers (YAML's .nan and .inf pass as JSON Schema numbers)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}.{i}")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: {value} is not a finite number"]
    return []


def _number_hint(error: jsonschema.ValidationError) -> str:
    """YAML 1.1 (PyYAML) reads 6e-3, without a dot, as text: say how to write the number."""
    value = error.instance
    if error.validator != "type" or "number" not in str(error.validator_value) or not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    mantissa, _, exponent = value.lower().partition("e")
    if not exponent or "." in mantissa:
        return ""
    return f" (YAML reads {value} as text; write {mantissa}.0e{exponent})"


def validate_config(raw: Any, source: str = "config") -> dict:
    """Return a validated copy of `raw` with every default filled in, or raise UserError."""
    if raw is None:
        raw = {}
    config = _stringify_int_keys(copy.deepcopy(raw))
    errors = sorted(schema_validator().iter_errors(config), key=_key_path)
    lines = [f"{_key_path(e)}: {e.message}{_number_hint(e)}" for e in errors]
    lines += _non_finite(config)
    if lines:
        raise UserError(f"{source} is not a valid doctrain config: " + "; ".join(lines))
    _check_consistency(config, source)
    return config


def ranks(trainer: dict) -> int:
    """Processes of one training: trainer.devices on each of trainer.num_nodes nodes."""
    return trainer["devices"] * trainer["num_nodes"]


def _check_consistency(config: dict, source: str) -> None:
    onnx = config["onnx"]
    size = config["data"]["image_size"]
    problems = []
    data = config["data"]
    if data["samples_per_epoch"] < data["batch_size"]:
        problems.append(
            f"data.samples_per_epoch ({data['samples_per_epoch']}) must be at least data.batch_size "
            f"({data['batch_size']}): an epoch of fewer samples than one batch trains nothing"
        )
    processes = ranks(config["trainer"])
    if data["batch_size"] % processes:
        problems.append(
            f"data.batch_size ({data['batch_size']}) is the global batch and must divide evenly among "
            f"the {processes} ranks (trainer.devices x trainer.num_nodes)"
        )
    if list(onnx["input_shape"]) != onnx["input_names"]:
        problems.append(f"onnx.input_names {onnx['input_names']} must name the onnx.input_shape entries")
    for name, spec in onnx["input_shape"].items():
        if spec["shape"][1:] != [3, size, size]:
            problems.append(
                f"onnx.input_shape.{name}.shape {spec['shape']} does not match data.image_size {size}"
            )
    tensors = set(onnx["input_names"]) | set(onnx["output_names"])
    for name in onnx["dynamic_axes"]:
        if name not in tensors:
            problems.append(f"onnx.dynamic_axes.{name} names no input or output (have {sorted(tensors)})")
    if config["model"]["init_from"] is not None and config["model"]["weights"] is not None:
        problems.append("set model.weights or model.init_from, not both: the network starts from one of them")
    if config["data"]["synth"] is not None and not SYNTH_MANIFEST.fullmatch(config["data"]["manifest"]):
        problems.append(
            f"data.manifest '{config['data']['manifest']}' must be data/synth/NAME/manifest.csv "
            "when data.synth is set (the workflow renders the demo data there)"
        )
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        return load_yaml(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None


def load_config(path: str | Path) -> dict:
    """Read and validate one experiment config file."""
    return validate_config(read_yaml(path), source=str(path))


def with_overrides(raw: Any, overrides: dict[str, Any], source: str) -> dict:
    """A copy of a raw config with each dotted key set (`optimizer.lr` -> raw["optimizer"]["lr"]);
    the schema then judges the result like any config file."""
    config = copy.deepcopy(raw) if raw is not None else {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise UserError(f"{source}: '{dotted}' is not a dotted config key like optimizer.lr")
        node = config
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise UserError(
                    f"{source}: '{'.'.join(parts[: depth + 1])}' is a value, not a block of settings"
                )
        node[parts[-1]] = value
    return config


def parse_overrides(text: str, source: str) -> dict[str, Any]:
    """`optimizer.lr=1e-3 loss.m=0.3` -> {"optimizer.lr": 0.001, "loss.m": 0.3}: pairs separated by
    spaces, each value read as YAML (numbers, true/false, [lists], strings)."""
    overrides = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{source}: '{pair}' is not KEY=VALUE (for example optimizer.lr=1.0e-3)")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"{source}: the value of {key} is not valid YAML ({exc})") from None
        overrides[key] = yaml_number(overrides[key])
    return overrides


def yaml_number(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as a string; where a value is given to set a key, it means the
    number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def format_overrides(overrides: dict[str, Any]) -> str:
    return " ".join(f"{key}={json.dumps(value)}" for key, value in overrides.items())


def get_key(config: dict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def flatten(prefix: str, value: Any) -> dict:
    """{prefix: {"a": {"b": 1}}} as {"prefix.a.b": 1}: one entry per leaf, keyed by dotted path."""
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in flatten(f"{prefix}.{key}", sub).items()}
    return {prefix: value}


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces (re-ordered YAML gives the same text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
