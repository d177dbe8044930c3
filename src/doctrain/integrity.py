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

from doctrain.fingerprint import HashCache

# Each stage's stamp, in pipeline order (paths relative to the workflow directory).
CHAIN = (
    ("dataset_fingerprint", "results/{exp}/dataset.fingerprint.json"),
    ("validate", "results/{exp}/data/validation.json"),
    ("prepare", "results/{exp}/cache/summary.json"),
    ("train", "results/{exp}/model.stamp.json"),
    ("export", "results/{exp}/model.unverified.stamp.json"),
    ("verify", "results/{exp}/provenance.json"),
)
PUBLISHED = "results/{exp}.onnx"


@dataclass(frozen=True)
class Break:
    """The first stage of an experiment whose results cannot be trusted, and why."""

    stage: str
    stamp: str  # an output of the stage: forcing it makes the stage run again
    reason: str

    def message(self, exp: str) -> str:
        return f"{exp}: {self.reason}; the {self.stage} step runs again, and every step after it"


def _read_stamp(path: str) -> dict | None:
    try:
        with open(path, "rb") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("artefacts", {}), dict):
        return None
    return record


def first_break(exp: str, cache: HashCache) -> Break | None:
    """The earliest stage of `exp` to run again, or None when every stamp present holds."""
    stamps = [(stage, template.format(exp=exp)) for stage, template in CHAIN]
    present = [os.path.exists(stamp) for _, stamp in stamps]
    published = PUBLISHED.format(exp=exp)
    for position, (stage, stamp) in enumerate(stamps):
        if not present[position]:
            later = [s for i, (_, s) in enumerate(stamps) if i > position and present[i]]
            later += [published] if os.path.exists(published) else []
            if later:
                reason = f"{stamp} is missing (a failed or interrupted run) while {later[-1]} exists"
                return Break(stage, stamp, reason)
            return None  # never built this far: Snakemake builds it
        record = _read_stamp(stamp)
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


def status(exp: str, config: dict, cache: HashCache) -> list[str]:
    """Why results/{exp}.onnx is not what the current config, code and data build ([] when it is)."""
    import onnx

    from doctrain.fingerprint import dataset_fingerprint, lineage
    from doctrain.provenance import from_metadata

    published = PUBLISHED.format(exp=exp)
    if not os.path.exists(published):
        return [f"{published} has not been built"]
    problems = []
    damage = first_break(exp, cache)
    if damage is not None:
        problems.append(damage.reason)
    try:
        model = onnx.load(published, load_external_data=False)
        built = from_metadata({p.key: p.value for p in model.metadata_props})
    except Exception as exc:  # protobuf raises its own DecodeError for a damaged file
        return problems + [f"{published} cannot be read as ONNX ({exc})"]
    now = lineage(config)
    for key, what in (
        ("config_sha256", f"the settings in configs/{exp}.yaml"),
        ("code_sha256", "the library code"),
        ("environment_sha256", "the pinned software environment"),
    ):
        if built.get(key) != now[key]:
            problems.append(f"{what} changed since it was built")
    recorded = Path(f"results/{exp}/dataset.fingerprint.json")
    current = dataset_fingerprint(config["data"]["manifest"], cache)
    if current is None or not recorded.exists() or recorded.read_text() != current:
        problems.append(f"the data listed in {config['data']['manifest']} changed since it was built")
    return problems
