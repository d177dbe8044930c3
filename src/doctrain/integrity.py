"""Is what lies in results/ what the stages vouched for? The chain of stamps, checked cheaply.

Every stage writes, last, a small stamp holding the sha256 of the artefacts it produced
(`_io.write_stamp`). Snakemake alone cannot keep a published model honest: it deletes the outputs
of a failed job and then, on the next run, sees the downstream files as current and reports
success with the old model; and it never looks inside a large file again (they go downstream as
ancient() inputs). So before each run the workflow walks an experiment's chain, in stage order,
and finds the first stage that must run again:
  - its stamp is missing while a later stage's results exist (it failed, or was interrupted);
  - its stamp is unreadable;
  - an artefact no longer has the digest its stamp recorded (a flipped byte, a truncation).
Digests go through the hash cache, so an unchanged file costs one stat.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from doctrain._io import HashCache
from doctrain.stages import DATASET_FINGERPRINT, EXPERIMENT_STAGES, stamp_path

# Each stage's stamp, in pipeline order (paths relative to the workflow directory).
CHAIN = (("dataset_fingerprint", DATASET_FINGERPRINT),) + tuple(
    (stage.name, stamp_path(stage)) for stage in EXPERIMENT_STAGES
)
# Stamps in the data owner's results (doctrain.experiments): the data stages and what they read.
SHARED = {"dataset_fingerprint", *(stage.name for stage in EXPERIMENT_STAGES if stage.shared)}
PUBLISHED = "results/{exp}.onnx"
PUBLISHING = [stage for stage, _ in CHAIN].index("verify")  # stages after it follow publication


@dataclass(frozen=True)
class Break:
    """The first stage of an experiment whose results cannot be trusted, and why."""

    stage: str
    stamp: str  # an output of the stage: forcing it makes the stage run again
    reason: str

    def message(self, exp: str) -> str:
        return f"{exp}: {self.reason}; the {self.stage} step runs again, and every step after it"


def read_record(path: str) -> dict | None:
    """A stamp or other JSON record the stages write; None when missing, unreadable or not one."""
    try:
        with open(path, "rb") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("artefacts", {}), dict):
        return None
    return record


def chain(exp: str, owner: str | None = None) -> list[tuple[str, str]]:
    """(stage, stamp path) of `exp` in pipeline order; `owner` holds its data stages' results."""
    return [
        (stage, template.format(exp=owner or exp if stage in SHARED else exp)) for stage, template in CHAIN
    ]


def first_break(exp: str, cache: HashCache, owner: str | None = None) -> Break | None:
    """The earliest stage of `exp` to run again, or None when every stamp present holds."""
    stamps = chain(exp, owner)
    present = [os.path.exists(stamp) for _, stamp in stamps]
    published = PUBLISHED.format(exp=exp)
    for position, (stage, stamp) in enumerate(stamps):
        if not present[position]:
            later = [s for i, (_, s) in enumerate(stamps) if i > position and present[i]]
            if position <= PUBLISHING and os.path.exists(published):
                later.append(published)
            if later:
                reason = f"{stamp} is missing (a failed or interrupted run) while {later[-1]} exists"
                return Break(stage, stamp, reason)
            return None  # never built this far: Snakemake builds it
        record = read_record(stamp)
        if record is None:
            return Break(stage, stamp, f"{stamp} is damaged (not the JSON record the {stage} step writes)")
        for artefact, recorded in record.get("artefacts", {}).items():
            actual = cache.sha256(artefact)
            if actual is None:
                return Break(stage, stamp, f"{artefact} is missing")
            if actual != recorded:
                return Break(
                    stage,
                    stamp,
                    f"{artefact} has changed since the {stage} step wrote it (sha256 {actual[:12]}…, "
                    f"{stamp} records {str(recorded)[:12]}…)",
                )
    return None


def _origin(settings: dict, stage: str, cache: HashCache | None = None) -> dict:
    from doctrain.fingerprint import code_digests, dotted_settings, environment_digest

    return {
        "settings": dotted_settings(settings, stage),
        "code": code_digests(stage, cache),
        "environment": environment_digest(),
    }


def record_origin(stamp: str | Path, stage: str, settings: dict) -> None:
    """Add to a stage's fresh stamp what the stage was run with (its settings by dotted key, the
    digests of its code, the environment), so `doctrain status` can name what changed since."""
    from doctrain._io import write_json_atomic

    record = json.loads(Path(stamp).read_text())
    record["built_from"] = _origin(settings, stage)
    write_json_atomic(stamp, record)


ABSENT = "(absent)"


def _short(value) -> str:
    text = value if value is ABSENT else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "…"


def changes(exp: str, config: dict, owner: str | None = None, cache: HashCache | None = None) -> list[str]:
    """What differs, stage by stage, between what built the results and what would build them now:
    `train: optimizer.lr 0.002 → 0.003`, `export: code of doctrain.export`, and the like (`cache`
    remembers the code digests)."""
    found, environment_changed = [], False
    for stage, stamp in chain(exp, owner)[1:]:
        record = read_record(stamp) or {}
        built = record.get("built_from")
        if not isinstance(built, dict):
            continue
        now = _origin(config, stage, cache)
        before, after = built.get("settings", {}), now["settings"]
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key, ABSENT), after.get(key, ABSENT)
            if old != new:
                found.append(f"{stage}: {key} {_short(old)} → {_short(new)}")
        code = built.get("code", {})
        modules = sorted(m for m in set(code) | set(now["code"]) if code.get(m) != now["code"].get(m))
        found += [f"{stage}: code of {', '.join(modules)}"] if modules else []
        environment_changed = environment_changed or built.get("environment") != now["environment"]
    return found + (["the pinned software environment"] if environment_changed else [])


def status(exp: str, config: dict, cache: HashCache, owner: str | None = None) -> list[str]:
    """Why results/{exp}.onnx is not what the current config, code and data build ([] when it is)."""
    import onnx

    from doctrain.fingerprint import lineage
    from doctrain.onnx_model import from_metadata

    published = PUBLISHED.format(exp=exp)
    if not os.path.exists(published):
        return [f"{published} has not been built"]
    problems = []
    damage = first_break(exp, cache, owner)
    if damage is not None:
        problems.append(damage.reason)
    try:
        model = onnx.load(published, load_external_data=False)
        built = from_metadata({p.key: p.value for p in model.metadata_props})
    except Exception as exc:  # protobuf raises its own DecodeError for a damaged file
        return problems + [f"{published} cannot be read as ONNX ({exc})"]
    detail = changes(exp, config, owner)
    if detail:
        return (
            problems
            + [f"changed since it was built: {', '.join(detail)}"]
            + _data_changed(owner or exp, config, cache)
        )
    now = lineage(config)
    for key, what in (
        ("config_sha256", f"the settings of {exp}"),
        ("code_sha256", "the library code"),
        ("environment_sha256", "the pinned software environment"),
    ):
        if built.get(key) != now[key]:
            problems.append(f"{what} changed since it was built")
    return problems + _data_changed(owner or exp, config, cache)


def built_elsewhere(exp: str) -> str | None:
    """A sentence when results/{exp}.onnx was trained on another kernel path than this machine
    offers (another CPU or GPU model): what the inputs build here may then be other weights. Said,
    not a reason to rebuild."""
    import torch

    from doctrain.onnx_model import read_metadata
    from doctrain.provenance import cpu_model

    try:
        kernels = read_metadata(PUBLISHED.format(exp=exp)).get("kernels")
    except Exception:  # missing or damaged: status says so
        return None
    if not kernels:
        return None
    if kernels["device"] == "cuda":
        here = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        there = kernels["gpu"]
    else:
        here, there = cpu_model(), kernels["cpu"]
    if here == there:
        return None
    isa = f", {kernels['cpu_isa']} kernels" if kernels["device"] == "cpu" else ""
    return f"built elsewhere: trained on {there}{isa}, {kernels['threads']} threads; this machine has {here}"


def data_changed(exp: str, current: str | None) -> bool:
    """Whether `exp`'s dataset fingerprint records other data than `current` (the fingerprint of
    its manifest and listed files now); False while there is none yet: its job will make one."""
    recorded = Path(DATASET_FINGERPRINT.format(exp=exp))
    return recorded.exists() and recorded.read_text() != current


def _data_changed(exp: str, config: dict, cache: HashCache) -> list[str]:
    from doctrain.fingerprint import dataset_fingerprint

    current = dataset_fingerprint(config["data"]["manifest"], cache)
    if not Path(DATASET_FINGERPRINT.format(exp=exp)).exists() or data_changed(exp, current):
        return [f"the data listed in {config['data']['manifest']} changed since it was built"]
    return []
