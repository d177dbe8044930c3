"""The pipeline on a real SLURM cluster (tests/slurm_cluster.py), through profiles/slurm."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    SNAKEMAKE,
    TARGET,
    TWO_RANKS,
    copy_workflow,
    snakemake,
    snakemake_env,
    state_sha,
)
from tests.slurm_cluster import ON_SLURM, on_slurm, sacct

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
RULES = ("synth", "dataset_fingerprint", "validate", "prepare", "train", "export", "verify")


def test_smoke_pipeline_runs_as_slurm_jobs(cluster, built, tmp_path):
    workdir = copy_workflow(tmp_path / "doctrain")
    result = on_slurm(cluster, workdir, "--verbose", TARGET)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (workdir / TARGET).read_bytes() == (built / TARGET).read_bytes()
    jobs = sacct(cluster)
    print("\n".join(line for line in (result.stdout + result.stderr).splitlines() if "sbatch" in line))
    print("\n".join(f"{j['id']} {j['state']} {j['tres']} {j['comment']}" for j in jobs))
    rule_of = {j["id"]: re.match(r"rule_(\w+?)_wildcards", j["comment"]).group(1) for j in jobs}
    assert sorted(rule_of.values()) == sorted(RULES)
    assert all(j["state"] == "COMPLETED" for j in jobs)
    assert not [job for job in jobs if "gpu" in job["tres"]], "the smoke config trains on the CPU"


def test_a_failing_step_is_reported_and_a_rerun_completes(cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "doctrain")
    assert snakemake(workdir, "data/synth/smoke/manifest.csv").returncode == 0
    image = next((workdir / "data/synth/smoke/train").rglob("*.png"))
    good = image.read_bytes()
    image.write_bytes(b"not a png")
    validated = "results/smoke/data/validated.parquet"  # the failing step's output (the rest: above)
    failed = on_slurm(cluster, workdir, validated)
    assert failed.returncode != 0
    assert "does not decode as an image" in failed.stdout + failed.stderr
    assert not (workdir / validated).exists()
    image.write_bytes(good)
    rerun = on_slurm(cluster, workdir, validated)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert (workdir / validated).exists()


def _longer_training(workdir: Path) -> None:
    path = workdir / "configs" / "smoke.yaml"
    config = yaml.safe_load(path.read_text())
    config["data"]["samples_per_epoch"] = 4096  # 128 steps an epoch: past a minute in all
    config["schedule"]["epochs"] = 8
    path.write_text(yaml.safe_dump(config))


def test_a_killed_training_job_resumes_and_ends_at_the_same_model(cluster, tmp_path):
    reference = copy_workflow(tmp_path / "reference")
    _longer_training(reference)
    # The uninterrupted run, locally and meanwhile (each training uses one thread of the two).
    uninterrupted = subprocess.Popen(
        [*SNAKEMAKE, TARGET],
        cwd=reference,
        env=snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workdir = copy_workflow(tmp_path / "doctrain")
    _longer_training(workdir)
    run = subprocess.Popen(
        [*SNAKEMAKE, *ON_SLURM, "--retries", "0", TARGET],
        cwd=workdir,
        env=snakemake_env(SLURM_CONF=cluster.env["SLURM_CONF"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoints = workdir / "results/smoke/work/train/checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "last.ckpt").exists():
        assert time.monotonic() < deadline and run.poll() is None, "training never saved an epoch"
        time.sleep(0.5)
    queue = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i %k").stdout.split("\n")
    job = next(line.split()[0] for line in queue if "rule_train" in line)
    # The scheduler kills it at a one-minute time limit (state TIMEOUT). A plain `scancel` would
    # do the same to the job, but snakemake-executor-plugin-slurm 2.8.0 misses the resulting state
    # 'CANCELLED by UID' and waits for the job forever.
    cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=1")
    output, _ = run.communicate(timeout=400)
    assert run.returncode != 0, output[-3000:]
    for name in ("model.ckpt", "model.stamp.json", "metrics.json"):
        assert not (workdir / "results/smoke" / name).exists()
    assert not list((workdir / "results/smoke").glob(".*.partial"))
    resumed = on_slurm(cluster, workdir, TARGET)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    log = (workdir / "results/smoke/logs/train.log").read_text()
    assert "resuming from" in log
    output, _ = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, output[-3000:]
    digests = [
        json.loads((d / "results/smoke/provenance.json").read_text())["state_dict_sha256"]
        for d in (reference, workdir)
    ]
    assert digests[0] == digests[1]
    assert (workdir / TARGET).read_bytes() == (reference / TARGET).read_bytes()


def test_two_ranks_train_as_one_job_of_two_srun_tasks_to_the_local_weights(cluster, two_ranks, tmp_path):
    workdir = Path(shutil.copytree(two_ranks, tmp_path / "doctrain", symlinks=True))
    target = f"results/{TWO_RANKS}/model.stamp.json"
    result = on_slurm(cluster, workdir, target, "--verbose", "--forcerun", "train")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    sbatch = [line for line in (result.stdout + result.stderr).splitlines() if "sbatch" in line]
    print("\n".join(sbatch))
    assert any("--ntasks-per-node=2" in line and "--nodes=1" in line for line in sbatch), sbatch
    job = next(
        j for j in sacct(cluster) if j["comment"].startswith("rule_train") and TWO_RANKS in j["comment"]
    )
    steps = cluster.run("sacct", "-j", job["id"], "-n", "-P", "--format=JobID,NTasks,State").stdout
    print(steps)
    assert any(
        line.split("|")[0] == f"{job['id']}.0" and line.split("|")[1:] == ["2", "COMPLETED"]
        for line in steps.splitlines()
    ), steps
    log = (workdir / f"results/{TWO_RANKS}/logs/train.log").read_text()
    assert "starting 2 ranks as SLURM tasks" in log and "Starting with 2 processes" in log
    assert state_sha(workdir) == state_sha(two_ranks)
