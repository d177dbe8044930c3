"""The pipeline on a real SLURM cluster (tests/slurm_cluster.py), through profiles/slurm."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    RESUMABLE,
    RESUMABLE_SWEEP,
    SNAKEMAKE,
    TARGET,
    TWO_RANKS,
    copy_workflow,
    snakemake_env,
    state_sha,
    write_sweep,
)
from tests.slurm_cluster import ON_SLURM, on_slurm, sacct

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
RULES = ("synth", "dataset_fingerprint", "validate", "prepare", "train", "export", "verify")


def test_smoke_pipeline_runs_as_slurm_jobs_and_a_failed_step_reruns_to_the_local_model(
    cluster, built, tmp_path
):
    """Every rule as a SLURM job: the rendering first, then the rest with one image broken, so the
    validate job fails and is reported, nothing after it runs; with the image mended the same
    command completes the pipeline, and the published model is the local build's, byte for byte."""
    workdir = copy_workflow(tmp_path / "doctrain")
    earlier = {job["id"] for job in sacct(cluster)}
    rendered = on_slurm(cluster, workdir, "data/synth/smoke/manifest.csv")
    assert rendered.returncode == 0, rendered.stdout[-4000:] + rendered.stderr[-4000:]
    image = next((workdir / "data/synth/smoke/train").rglob("*.png"))
    good = image.read_bytes()
    image.write_bytes(b"not a png")
    failed = on_slurm(cluster, workdir, TARGET, "--retries", "0")  # the profile's retry would fail alike
    assert failed.returncode != 0
    assert "does not decode as an image" in failed.stdout + failed.stderr
    assert not (workdir / "results/smoke/data/validated.parquet").exists()
    image.write_bytes(good)
    result = on_slurm(cluster, workdir, "--verbose", TARGET)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (workdir / TARGET).read_bytes() == (built / TARGET).read_bytes()
    jobs = [job for job in sacct(cluster) if job["id"] not in earlier]
    print("\n".join(line for line in (result.stdout + result.stderr).splitlines() if "sbatch" in line))
    print("\n".join(f"{j['id']} {j['state']} {j['tres']} {j['comment']}" for j in jobs))
    rules = [(re.match(r"rule_(\w+?)_wildcards", j["comment"]).group(1), j["state"]) for j in jobs]
    assert [(rule, state) for rule, state in rules if state != "COMPLETED"] == [("validate", "FAILED")]
    assert {rule for rule, _ in rules} == set(RULES)
    assert [rule for rule, _ in rules].count("train") == 1
    assert not [job for job in jobs if "gpu" in job["tres"]], "the smoke config trains on the CPU"


TRAINED = f"results/{RESUMABLE}/model.stamp.json"


def _resume_point(log_text: str) -> tuple[int, int]:
    """(epoch, batch) where the training's log says it resumed."""
    resumed = re.search(r"resuming from .*last\.ckpt at batch (\d+) of epoch (\d+) ", log_text)
    assert resumed, log_text[-3000:]
    return int(resumed.group(2)), int(resumed.group(1))


def test_a_requeued_then_signalled_training_job_resumes_each_time_to_the_uninterrupted_weights(
    cluster, built, resumable, tmp_path
):
    """RESUMABLE's training as one SLURM job (a copy of the smoke build: only the training runs),
    stopped twice, each time once its log shows an epoch 40 % done:
      1. in epoch 1, `scontrol requeue`, what SLURM does to a job it preempts with
         PreemptMode=REQUEUE: SIGTERM to every process, then the same job from its start. The
         training saves after the batch in progress and the job's second start continues there;
      2. in epoch 2, `scancel --signal=USR1`, what `--signal=USR1@SECONDS` (profiles/slurm) does
         before a time limit: the training saves and fails, and Snakemake's retry continues there.
    It ends at the weights and the log of the same training run locally without a stop."""
    workdir = Path(shutil.copytree(built, tmp_path / "doctrain", symlinks=True))
    write_sweep(workdir, "resume", RESUMABLE_SWEEP)
    run = subprocess.Popen(
        [*SNAKEMAKE, *ON_SLURM, "--latency-wait", "5", "--retries", "1", TRAINED],
        cwd=workdir,
        env=snakemake_env(SLURM_CONF=cluster.env["SLURM_CONF"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = workdir / f"results/{RESUMABLE}/logs/train.log"
    said = []
    for epoch, how in ((1, ("scontrol", "requeue")), (2, ("scancel", "--signal=USR1"))):
        deadline = time.monotonic() + 300
        under_way = re.compile(rf"Epoch {epoch}:\s+[4-9]\d%")
        while not (log.exists() and under_way.search(log.read_text(errors="replace"))):
            assert time.monotonic() < deadline and run.poll() is None, f"no epoch {epoch} in the log"
            time.sleep(0.2)
        said.append(log.read_text(errors="replace"))
        queue = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i %k").stdout.split("\n")
        job = next(line.split()[0] for line in queue if "rule_train" in line)
        cluster.run(*how, job)
        if how[1] == "requeue":
            # SLURM holds a requeued job for two minutes before it may start again; not the test's point.
            while cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() != "PENDING":
                assert run.poll() is None, "the requeued job never waited to start again"
                time.sleep(0.2)
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    output, _ = run.communicate(timeout=400)
    assert run.returncode == 0, output[-4000:]

    shown = cluster.run("scontrol", "show", "job", job).stdout
    assert "Restarts=1" in shown and "JobState=FAILED" in shown, shown  # requeued once, then signalled
    trainings = [
        j for j in sacct(cluster) if j["comment"].startswith("rule_train") and RESUMABLE in j["comment"]
    ]
    assert [j["state"] for j in trainings][-2:] == ["FAILED", "COMPLETED"] and trainings[-2]["id"] == job
    # Each start continued where the stop saved, past the point written after the epoch's first batch.
    assert _resume_point(said[1]) > (1, 1)
    assert _resume_point(log.read_text(errors="replace")) > (2, 1)
    assert state_sha(workdir, RESUMABLE) == state_sha(resumable, RESUMABLE)
    train_log = f"results/{RESUMABLE}/train_log.csv"
    assert (workdir / train_log).read_bytes() == (resumable / train_log).read_bytes()


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
