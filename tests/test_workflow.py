"""The real workflow, run by the real snakemake in temporary copies of the checkout.

The rerun table of the incremental-rebuild issue: after a complete smoke build, each change must
make `snakemake -n` plan exactly the stages that read what changed."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest
import yaml

from doctrain import _io, fingerprint
from doctrain.onnx_model import read_metadata
from tests.conftest import TARGET, copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.slow
AFTER_VALIDATE = {"validate", "prepare", "train", "export", "verify"}
EVALUATION = "results/smoke/evaluation.json"


def plan(workdir: Path) -> set[str]:
    return set(planned_jobs(snakemake(workdir, "-n", TARGET)))


def test_smoke_build_publishes_a_verified_model(built):
    results = built / "results"
    assert (results / "smoke.onnx").is_file()
    report = json.loads((results / "smoke" / "parity.json").read_text())
    assert report["passed"] and all(c["passed"] for c in report["checks"])
    metrics = json.loads((results / "smoke" / "metrics.json").read_text())
    assert 0 <= metrics["val"]["auroc"] <= 1 and metrics["selected"]["monitor"] == "val/auroc"
    for name in ("train_log.csv", "roc.png", "training_curves.png", "model.ckpt", "provenance.json"):
        assert (results / "smoke" / name).stat().st_size > 0
    provenance = json.loads((results / "smoke" / "provenance.json").read_text())
    assert set(provenance["versions"]) == {"torch", "timm", "lightning", "onnx", "onnxruntime"}
    for key in ("config_sha256", "code_sha256", "dataset_sha256", "state_dict_sha256"):
        assert len(provenance[key]) == 64
    assert plan(built) == set()


def test_tensorboard_lists_each_experiment_with_its_scalars_and_figures(built):
    """What `tensorboard --logdir results` reads, read by TensorBoard's own multiplexer."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    watched = EventMultiplexer(size_guidance={"scalars": 0, "images": 0})
    watched.AddRunsFromDirectory(str(built / "results"))
    watched.Reload()
    assert list(watched.Runs()) == ["smoke/tensorboard"]
    tags = watched.Runs()["smoke/tensorboard"]
    logged = {"train/loss_step", "train/loss_epoch", "train/lr", "val/auroc", "val/tpr@0.01"}
    assert logged <= set(tags["scalars"])
    assert set(tags["images"]) == {"roc", "training_curves"}
    log = (built / "results/smoke/train_log.csv").read_text().splitlines()
    steps = [int(row.split(",")[1]) for row in log[1:] if row.split(",")[1]]
    assert max(e.step for e in watched.Scalars("smoke/tensorboard", "val/auroc")) == max(steps)
    figure = watched.Images("smoke/tensorboard", "roc")[-1]
    assert figure.step >= max(steps) and figure.width > 100


def test_the_shipped_file_is_evaluated_on_every_pair_with_intervals(restore):
    built = restore
    result = snakemake(built, EVALUATION)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert planned_jobs(result) == {"evaluate": 1}  # the model is not rebuilt to be measured
    record = json.loads((built / EVALUATION).read_text())
    assert record["model"]["sha256"] == _io.sha256_file(built / TARGET)
    val, calibration = record["val"], record["calibration"]
    # The smoke data's 6 validation classes of 3 photos: 3 select the checkpoint, 3 choose the
    # threshold; every pair of each is scored, not only those within batches.
    assert (val["images"], val["classes"], val["positive_pairs"]) == (9, 3, 3 * 3)
    assert (calibration["images"], calibration["classes"]) == (9, 3)
    assert val["role"] == "selected the checkpoint" and calibration["role"] == "chose the shipped threshold"
    shipped = read_metadata(built / TARGET)["operating_point"]
    assert shipped["chosen_on"].startswith("36 calibration pairs (9 images of 3 classes")
    assert shipped["fpr"] == 0.1 and shipped["requested_fpr"] == 1e-3  # 27 different-class pairs
    # measured again on the shipped file's pairs: what it promised, with an interval
    there = calibration["at_shipped_threshold"]
    assert there["threshold"] == shipped["threshold"] and there["fpr"] <= 0.1
    assert there["fpr_95"][0] <= there["fpr"] <= there["fpr_95"][1]
    # (the pair whose score is the threshold counts at it in the ROC, not in the consumer's strict `>`)
    assert abs(there["tpr"] - shipped["tpr"]) <= 1 / calibration["positive_pairs"] + 1e-9
    low, high = val["auroc_95"]
    assert low <= val["auroc"] <= high
    assert val["at_fpr"]["0.001"] == {**val["at_fpr"]["0.001"], "resolvable": False, "tpr_95": None}
    training = json.loads((built / "results/smoke/metrics.json").read_text())
    assert record["within_batch_val"]["auroc"] == training["val"]["auroc"]
    assert "test" not in record  # the smoke data has no test split
    baseline = val["baseline"]  # raw pixels on the same pairs, and the paired difference
    assert baseline["positive_pairs"] == val["positive_pairs"] and 0 <= baseline["auroc"] <= 1
    difference = val["against_baseline"]["auroc"]
    assert difference["difference"] == pytest.approx(val["auroc"] - baseline["auroc"])
    assert "raw-pixel baseline" in (built / "results/smoke/logs/evaluate.log").read_text()
    _edit_config(built, "evaluation.bootstrap_resamples", 200)
    assert set(planned_jobs(snakemake(built, "-n", EVALUATION))) == {"evaluate"}


def test_report_shows_how_good_the_model_is(built, tmp_path):
    assert snakemake(built, EVALUATION).returncode == 0
    result = snakemake(built, "--report", str(tmp_path / "report.html"), EVALUATION)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for item in ("roc.png", "training_curves.png", "metrics.json", "parity.json", "evaluation.json"):
        assert f"Adding {item}" in result.stdout + result.stderr
    assert "operating points of" in (tmp_path / "report.html").read_text()  # the ROC plot's caption


def test_reference_config_plans_the_whole_chain(tmp_path):
    workdir = copy_workflow(tmp_path / "doctrain")
    jobs = planned_jobs(snakemake(workdir, "-n", "results/lcnet050_cosface_96.onnx"))
    assert set(jobs) == {"synth", "dataset_fingerprint"} | AFTER_VALIDATE


def _edit_config(workdir: Path, dotted: str, value) -> None:
    path = workdir / "configs" / "smoke.yaml"
    config = yaml.safe_load(path.read_text())
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def restore(built):
    """Undo a test's edits to the checkout (configs, code, data) after it."""
    saved = {p: p.read_bytes() for p in (built / "configs").glob("*.yaml")}
    saved |= {p: p.read_bytes() for p in (built / "src" / "doctrain").glob("*.py")}
    data = built / "data" / "synth" / "smoke"
    shutil.copytree(data, built.parent / "data-backup", dirs_exist_ok=True)
    yield built
    for path, content in saved.items():
        if path.read_bytes() != content:
            path.write_bytes(content)
    shutil.rmtree(data)
    shutil.copytree(built.parent / "data-backup", data)
    assert plan(built) == set(), "restoring the checkout must make the build current again"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("onnx.options.opset_version", 17, {"export", "verify"}),
        ("parity.max_abs_diff", 2.0e-5, {"verify"}),
        ("optimizer.lr", 3.0e-3, {"train", "export", "verify"}),
        ("data.image_size", 48, {"prepare", "train", "export", "verify"}),
        # Re-rendered data reaches the model in the same invocation, not only in the next one.
        ("data.synth.seed", 2, {"synth", "dataset_fingerprint"} | AFTER_VALIDATE),
    ],
)
def test_config_change_reruns_the_stages_that_read_it(restore, key, value, expected):
    _edit_config(restore, key, value)
    if key == "data.image_size":
        _edit_config(restore, "onnx.input_shape", {"img": {"shape": [1, 3, 48, 48], "dtype": "float32"}})
    assert plan(restore) == expected


def test_reformatted_yaml_with_reordered_keys_changes_nothing(restore):
    path = restore / "configs" / "smoke.yaml"
    config = yaml.safe_load(path.read_text())
    reordered = dict(reversed(list(config.items())))
    path.write_text(
        "# reformatted\n" + yaml.safe_dump(reordered, sort_keys=False, default_flow_style=False, indent=4)
    )
    assert plan(restore) == set()


def test_added_manifest_row_reruns_validation_and_after(restore):
    manifest = restore / "data" / "synth" / "smoke" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    first = lines[1].split(",")
    shutil.copy(manifest.parent / first[0], manifest.parent / "extra.png")
    manifest.write_text("\n".join([*lines, f"extra.png,{first[1]},{first[2]},"]) + "\n")
    assert plan(restore) == {"dataset_fingerprint"} | AFTER_VALIDATE


def test_image_bytes_changed_in_place_rerun_validation_and_after(restore):
    manifest = restore / "data" / "synth" / "smoke" / "manifest.csv"
    image = manifest.parent / manifest.read_text().splitlines()[1].split(",")[0]
    stat = image.stat()
    content = bytearray(image.read_bytes())
    content[-20] ^= 0xFF  # inside the PNG's last chunk
    image.write_bytes(bytes(content))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old mtime restored
    before = _files(restore)
    planned = snakemake(restore, "-n", TARGET)
    assert set(planned_jobs(planned)) == {"dataset_fingerprint"} | AFTER_VALIDATE
    assert "smoke: the data listed in data/synth/smoke/manifest.csv changed since it was fingerprinted" in (
        planned.stdout + planned.stderr
    )
    # Issue 25, item 2: planning wrote the new fingerprint and the hash cache before Snakemake's lock.
    for args in (
        ["--lint"],
        ["--dag", "dot", TARGET],
        ["--report", str(restore.parent / "report.html"), TARGET],
    ):
        assert snakemake(restore, *args).returncode == 0, args
    assert _files(restore) == before, "planning, a lint, a DAG or a report wrote in the checkout"


def _files(workdir: Path) -> dict[str, tuple[str, int]]:
    """Every file of a checkout but Snakemake's own folder, by content and mtime."""
    return {
        str(path.relative_to(workdir)): (_io.sha256_file(path), path.stat().st_mtime_ns)
        for path in workdir.rglob("*")
        if path.is_file() and ".snakemake" not in path.relative_to(workdir).parts
    }


def _edit_module(workdir: Path, module: str, old: str, new: str) -> None:
    path = workdir / "src" / "doctrain" / f"{module}.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_model_code_change_reruns_training_and_after(restore):
    _edit_module(restore, "model", "features.mean(dim=(2, 3))", "features.mean(dim=(3, 2))")
    assert plan(restore) == {"train", "export", "verify"}


def test_code_that_only_commands_use_reruns_nothing(restore):
    """classify and the CLI are in no stage's fingerprint (tests/test_stages.py says why)."""
    _edit_module(restore, "classify", "FALLBACK_THRESHOLD = 0.7", "FALLBACK_THRESHOLD = 0.71")
    _edit_module(restore, "cli", 'help="print JSON instead of text"', 'help="print JSON, not text"')
    assert plan(restore) == set()


def test_export_code_change_reruns_export_and_verify(restore):
    _edit_module(
        restore,
        "export",
        'model.producer_name, model.doc_string = "doctrain"',
        'model.producer_name, model.doc_string = "doctrain-exporter"',
    )
    assert plan(restore) == {"export", "verify"}


def test_comment_and_docstring_edits_change_nothing(restore):
    _edit_module(restore, "model", '"""The embedding network', '"""The embedding network (edited)')
    _edit_module(restore, "training", "def train(", "# a new comment\ndef train(")
    assert plan(restore) == set()


def test_touching_every_file_changes_nothing(restore, monkeypatch):
    files = [p for p in restore.rglob("*") if p.is_file() and ".snakemake" not in p.parts]
    random.Random(0).shuffle(files)  # in no particular order: outputs may end up older than inputs
    now = time.time_ns()
    for offset, path in enumerate(files):
        os.utime(path, ns=(now + offset * 1_000_000, now + offset * 1_000_000))
    assert plan(restore) == set()
    # Issue 25: a run with nothing to do (which Snakemake's onstart never sees) keeps what its plan
    # learnt, so the plans after it read no image again.
    assert snakemake(restore, TARGET).returncode == 0
    monkeypatch.chdir(restore)
    monkeypatch.setattr(_io, "sha256_file", lambda path: pytest.fail(f"{path} was read again"))
    fingerprint.dataset_digest("data/synth/smoke/manifest.csv", _io.HashCache(_io.HASH_CACHE))


def test_two_clean_builds_in_different_directories_are_byte_identical(built, tmp_path):
    second = copy_workflow(tmp_path / "elsewhere" / "checkout")
    result = snakemake(second, TARGET)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first_onnx = (built / TARGET).read_bytes()
    assert (second / TARGET).read_bytes() == first_onnx
    provenance = [json.loads((d / "results/smoke/provenance.json").read_text()) for d in (built, second)]
    assert provenance[0]["state_dict_sha256"] == provenance[1]["state_dict_sha256"]
    assert (second / "results/smoke/model.ckpt").read_bytes() == (
        built / "results/smoke/model.ckpt"
    ).read_bytes()
    assert str(built).encode() not in first_onnx and str(second).encode() not in first_onnx


def test_a_perturbed_export_fails_verification_and_is_not_published(built):
    onnx_path = built / "results/smoke/model.unverified.onnx"
    stamp_path = built / "results/smoke/model.unverified.stamp.json"
    original, original_stamp = onnx_path.read_bytes(), stamp_path.read_bytes()
    try:
        import onnx

        model = onnx.load(str(onnx_path))
        weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        array = onnx.numpy_helper.to_array(weight).copy()
        array.flat[::5] *= 1.01
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        onnx.save(model, str(onnx_path))
        # As an exporter bug would: the stamp vouches for the wrong bytes (else the damage is
        # noticed before verification and the export is simply redone).
        relative = str(onnx_path.relative_to(built))
        stamp_path.write_text(json.dumps({"artefacts": {relative: _io.sha256_file(onnx_path)}}))
        result = snakemake(built, "--forcerun", "verify", TARGET)
        assert result.returncode != 0
        assert "failed parity verification and is not published" in result.stdout + result.stderr
        assert not (built / TARGET).exists()
    finally:
        onnx_path.write_bytes(original)
        stamp_path.write_bytes(original_stamp)
        assert snakemake(built, TARGET).returncode == 0
    assert (built / TARGET).exists()
