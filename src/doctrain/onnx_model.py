"""An exported model as its users open it: the doctrain record in its ONNX metadata, and an
onnxruntime session configured as the consumer runs it. Light on purpose (no torch): the commands
that only use a model (`classify`, `provenance`, `status`) import this and nothing of training."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort

METADATA_PREFIX = "doctrain."


def session(path: str | Path) -> ort.InferenceSession:
    """An onnxruntime CPU session with every graph optimisation on, as the consumer runs it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return from_metadata({p.key: p.value for p in model.metadata_props})


def to_metadata(record: dict) -> dict[str, str]:
    """Flat string pairs for ONNX metadata_props, every value a JSON document (strings quoted): the
    consumer's ONNX engine json-decodes each value when it opens the model, and a bare word or a
    digest that starts with digits stops it from loading."""
    return {
        METADATA_PREFIX + key: json.dumps(value, sort_keys=True)
        for key, value in sorted(record.items())
        if value is not None
    }


def from_metadata(props: dict[str, str]) -> dict:
    out = {}
    for key, value in props.items():
        if key.startswith(METADATA_PREFIX):
            try:
                out[key[len(METADATA_PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError:  # written by doctrain before every value was JSON
                out[key[len(METADATA_PREFIX) :]] = value
    return out


def format_record(record: dict) -> str:
    """Human-readable lines, one per field, nested fields indented; values as JSON writes them
    (true, null, [1, 3]) except text, which is shown bare."""
    lines = []

    def emit(key: str, value, indent: int) -> None:
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            for sub in sorted(value):
                emit(sub, value[sub], indent + 2)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(" " * indent + f"{key}: {text}")

    for key in sorted(record):
        emit(key, record[key], 0)
    return "\n".join(lines)
