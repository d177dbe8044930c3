"""What is published is what the current inputs build (issue 9), run by the real snakemake.

Each test breaks a copy of a complete smoke build the way a failed run, a flipped byte or a hostile
name would, and checks that the next run rebuilds (to the same bytes) or fails the same way, never
reporting success with a stale or damaged model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TARGET, planned_jobs, snakemake

pytestmark = pytest.mark.slow
FROM_TRAIN = {"train", "export", "verify"}


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A complete smoke build of its own (mtimes kept, so Snakemake sees it as built)."""
    return Path(shutil.copytree(built, tmp_path / "doctrain", symlinks=True))


def output(result) -> str:
    return result.stdout + result.stderr


def plan(workdir: Path) -> tuple[set[str], str]:
    result = snakemake(workdir, "-n", TARGET)
    return set(planned_jobs(result)), output(result)


def edit_config(workdir: Path, change) -> None:
    path = workdir / "configs" / "smoke.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def set_opset(opset: int):
    return lambda config: config["onnx"].setdefault("options", {}).update(opset_version=opset)


def test_a_failed_export_fails_again_on_rerun_and_rebuilds_once_fixed(copy):
    """Reproduction 1: the second run said "Nothing to be done" (rc 0) with the opset-16 model."""
    published = (copy / TARGET).read_bytes()
    edit_config(copy, set_opset(99))
    assert snakemake(copy, TARGET).returncode != 0
    again = snakemake(copy, TARGET)
    assert again.returncode != 0
    assert "model.unverified.stamp.json is missing (a failed or interrupted run)" in output(again)
    edit_config(copy, set_opset(16))
    assert snakemake(copy, TARGET).returncode == 0
    assert (copy / TARGET).read_bytes() == published
    assert plan(copy)[0] == set()


def test_a_manifest_row_that_fails_validation_fails_every_rerun(copy):
    """Reproduction 1, the data side: a row naming a missing file."""
    manifest = copy / "data" / "synth" / "smoke" / "manifest.csv"
    original = manifest.read_text()
    first = original.splitlines()[1].split(",")
    manifest.write_text(original + f"missing.png,{first[1]},{first[2]},\n")
    for _ in range(2):
        result = snakemake(copy, TARGET)
        assert result.returncode != 0 and "file data/synth/smoke/missing.png does not exist" in output(result)
    manifest.write_text(original)
    # The data changed back: fingerprinted again, and rebuilt (to the same bytes, as the opset case shows)
    assert plan(copy)[0] == {"dataset_fingerprint", "validate", "prepare"} | FROM_TRAIN


def flip_published_byte(workdir: Path) -> None:
    path = workdir / TARGET
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def truncate_checkpoint(workdir: Path) -> None:
    os.truncate(workdir / "results/smoke/model.ckpt", 1000)


def invert_cached_pixels(workdir: Path) -> None:
    images = np.load(workdir / "results/smoke/cache/images.npy", mmap_mode="r+")
    images[:] = 255 - images
    images.flush()


def truncate_cache(workdir: Path) -> None:
    path = workdir / "results/smoke/cache/images.npy"
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    ("damage", "reruns", "message"),
    [
        (flip_published_byte, {"verify"}, "results/smoke.onnx has changed since the verify step wrote it"),
        (truncate_checkpoint, FROM_TRAIN, "results/smoke/model.ckpt has changed since the train step"),
        (invert_cached_pixels, {"prepare"} | FROM_TRAIN, "cache/images.npy has changed since the prepare"),
        (truncate_cache, {"prepare"} | FROM_TRAIN, "cache/images.npy has changed since the prepare"),
    ],
)
def test_a_damaged_artefact_is_noticed_and_rebuilt_to_the_same_bytes(copy, damage, reruns, message):
    """Reproduction 2: each of these said "Nothing to be done"."""
    published = (copy / TARGET).read_bytes()
    damage(copy)
    jobs, said = plan(copy)
    assert jobs == reruns and message in said
    if damage in (truncate_cache, truncate_checkpoint):
        return  # rebuilt as the inverted pixels are (prepare, then train starting over, and after)
    result = snakemake(copy, TARGET)
    assert result.returncode == 0, output(result)[-3000:]
    assert (copy / TARGET).read_bytes() == published
    assert plan(copy)[0] == set()


def test_a_damaged_stamp_reruns_its_step(copy):
    (copy / "results/smoke/model.unverified.stamp.json").write_text("{not json")
    jobs, said = plan(copy)
    assert jobs == {"export", "verify"} and "model.unverified.stamp.json is damaged" in said


def test_artefacts_are_readable_as_the_umask_allows(built):
    """Reproduction 7: every artefact was written mode 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for name in (TARGET, "results/smoke/model.ckpt", "results/smoke/provenance.json"):
        assert (built / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_hostile_manifest_path_and_config_names_run_no_command(copy):
    """Reproduction 4: `$(...)` in data.manifest ran, a config named `e;touch PWNED;f.yaml` ran
    `touch` when its target was built, a space broke the command line, `p(q.yaml` broke every target."""
    hostile = copy / "data" / "x$(touch PWNED) y"
    shutil.copytree(copy / "data" / "synth" / "smoke", hostile)
    config = yaml.safe_load((copy / "configs" / "smoke.yaml").read_text())
    config["data"] |= {"manifest": "data/x$(touch PWNED) y/manifest.csv", "synth": None}
    (copy / "configs" / "mine.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(copy / "configs" / "smoke.yaml", copy / "configs" / "e;touch PWNED;f.yaml")
    shutil.copy(copy / "configs" / "smoke.yaml", copy / "configs" / "p(q.yaml")

    validated = snakemake(copy, "results/mine/data/validation.json")
    assert validated.returncode == 0, output(validated)[-3000:]
    report = json.loads((copy / "results/mine/data/validation.json").read_text())
    assert report["splits"]["train"]["images"] > 0

    refused = snakemake(copy, "results/e;touch PWNED;f.onnx")
    assert refused.returncode != 0
    assert "2 experiment config(s) or sweep(s) cannot be used" in output(refused)
    assert "the experiment name 'e;touch PWNED;f' may only hold letters" in output(refused)
    assert "the experiment name 'p(q' may only hold letters" in output(refused)

    assert plan(copy)[0] == set()  # the other experiments still plan and build
    assert not list(copy.rglob("PWNED"))


def test_odd_manifest_rows_do_not_break_planning_and_are_reported_by_validation(copy):
    """Reproduction 5: these rows crashed the planning of every experiment at parse time."""
    folder = copy / "data" / "synth" / "smoke"
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    os.mkfifo(folder / "fifo.png")
    (folder / "empty.png").write_bytes(b"")
    manifest = folder / "manifest.csv"
    lines = manifest.read_text().splitlines()
    label, split = lines[1].split(",")[1:3]
    rows = ["loop-a.png", f"{lines[1].split(',')[0]}/x.png", "n" * 300 + ".png", "fifo.png", "empty.png"]
    manifest.write_text("\n".join(lines + [f"{row},{label},{split}," for row in rows]) + "\n")
    jobs, _ = plan(copy)
    assert "validate" in jobs
    result = snakemake(copy, TARGET)
    assert result.returncode != 0
    said = (copy / "results/smoke/logs/validate.log").read_text()
    assert "5 manifest problem(s)" in said and "Traceback" not in said


def test_a_damaged_hash_cache_is_discarded_with_a_warning(copy):
    """Reproduction 6: the cache was a pickle loaded at parse time."""
    (copy / ".doctrain" / "hash-cache.json").write_bytes(b"\x80\x04garbage")
    jobs, said = plan(copy)
    assert jobs == set() and "hash-cache.json is damaged; files are hashed again" in said
    assert (copy / ".doctrain" / "hash-cache.json").read_bytes() == b"\x80\x04garbage"  # plans write nothing
    subprocess.run(  # what checks, and does not plan, saves what it hashed
        [sys.executable, "-m", "doctrain", "status", "smoke"],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy / "src")},
        capture_output=True,
        check=True,
    )
    assert json.loads((copy / ".doctrain" / "hash-cache.json").read_text())["format"]


def test_a_damaged_resume_checkpoint_is_set_aside_and_training_starts_over(built, tmp_path, capsys):
    """Reproduction 3: a truncated last.ckpt with a matching resume key failed every rerun."""
    import tempfile

    from doctrain import training
    from doctrain.config import load_config
    from doctrain.fingerprint import stage_settings

    settings = stage_settings(load_config(built / "configs" / "smoke.yaml"), "train")
    cache, work = built / "results/smoke/cache", tmp_path / "train"
    first = training.train(settings, cache, work, resume_key="same training")
    assert tempfile.tempdir != str(work / "tmp")  # Lightning's temporary files went beside it, then back
    last = work / "checkpoints" / "last.ckpt"
    os.truncate(last, last.stat().st_size // 2)
    second = training.train(settings, cache, work, resume_key="same training")
    assert f"{last} does not load (damaged)" in capsys.readouterr().out
    assert (tmp_path / "train.damaged-last.ckpt").stat().st_size == last.stat().st_size // 2
    assert second["state_dict_sha256"] == first["state_dict_sha256"]


def test_status_says_whether_the_published_model_is_what_the_inputs_build(copy):
    def status(*experiments: str) -> tuple[int, str]:
        result = subprocess.run(
            [sys.executable, "-m", "doctrain", "status", *(experiments or ["smoke"])],
            cwd=copy,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(copy / "src")},  # the copy's code, as its workflow runs
        )
        return result.returncode, result.stdout

    assert status() == (0, "smoke: current: results/smoke.onnx is what it builds\n")
    # Without names: the experiments built so far, and the others in one line (not a failure).
    code, said = status("--")
    assert code == 0 and said.endswith("\nsmoke: current: results/smoke.onnx is what it builds\n"), said
    assert said.startswith("not built (name them to check them): ") and "demo" in said.splitlines()[0]
    edit_config(copy, lambda config: config["optimizer"].update(lr=3.0e-3))
    flip_published_byte(copy)
    code, said = status()
    assert code == 1 and "changed since it was built: train: optimizer.lr 0.002 → 0.003" in said
    planned = snakemake(copy, "-n", TARGET)  # the same line, before Snakemake's JSON of the settings
    assert "doctrain: smoke: changed since it was built: train: optimizer.lr 0.002 → 0.003" in (
        planned.stdout + planned.stderr
    )
    assert "results/smoke.onnx has changed since the verify step wrote it" in said


def test_the_installed_snakemake_still_forces_jobs_through_dag_forcefiles():
    """Issue 25, item 6: a broken step is made to run by adding its stamp to workflow.dag.forcefiles
    (rules/common.smk, force_if_broken): Snakemake has no public setting that forces one file (its
    --forcerun takes rules, which would rerun every experiment). Should a Snakemake upgrade drop it,
    this says so before the integrity tests fail obscurely."""
    import inspect

    import snakemake.api  # noqa: F401  (snakemake.dag imports only after the package's own order)
    from snakemake.dag import DAG

    source = inspect.getsource(DAG)
    assert "self.forcefiles = set()" in source and "self.forcefiles.isdisjoint(job.output)" in source, (
        "this Snakemake's DAG no longer has forcefiles, through which doctrain reruns a step whose "
        "stamp no longer holds: port force_if_broken in rules/common.smk, or pin the Snakemake of "
        "envs/requirements.txt"
    )
