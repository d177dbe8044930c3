"""Shared fixtures: a temporary copy of the workflow, small images, a tiny trained module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = "results/smoke.onnx"
WORKFLOW_PARTS = (
    "Snakefile",
    "rules",
    "configs",
    "src",
    "envs",
    "profiles",
    "containers",
    "report",
)


def copy_workflow(dest: Path) -> Path:
    """The workflow as a user's checkout would hold it, without results or caches."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, dest / part)
    return dest


def apt_install(*packages: str) -> None:
    """Debian packages that a real component of the tests needs, installed where missing (a fresh
    CI machine has none of them)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], check=True, capture_output=True, env=env, timeout=900
    )


def install_missing(packages: dict[str, str]) -> None:
    """The Debian package of each command (command -> package) that is not on PATH."""
    missing = [package for command, package in packages.items() if not shutil.which(command)]
    if missing:
        apt_install(*missing)


def snakemake_env(**extra: str) -> dict[str, str]:
    """This environment, with its python first on PATH (the rules call `python -m doctrain`)."""
    env = dict(os.environ, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


SNAKEMAKE = (sys.executable, "-m", "snakemake", "--cores", "2")


def snakemake(
    workdir: Path, *args: str, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real snakemake of this environment in `workdir`."""
    return subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=workdir,
        env=env or snakemake_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run ({} when nothing is to be done)."""
    assert result.returncode == 0, result.stdout + result.stderr
    jobs, table = {}, False
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("job ") and "count" in line:
            table = True
        elif table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                jobs[parts[0]] = int(parts[1])
    return jobs


def write_png(path: Path, seed: int = 0, size: tuple[int, int] = (40, 60)) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return path


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """tmp/data/{train,val}/<label>/<n>.png: 3 train and 2 val labels, 2 images each."""
    root = tmp_path / "data"
    seed = 0
    for split, labels in (("train", "abc"), ("val", "de")):
        for label in labels:
            for n in range(2):
                write_png(root / split / label / f"{n}.png", seed)
                seed += 1
    return root


# One training as two CPU ranks (gloo): a sweep point of the smoke experiment, so it shares the
# smoke data; its 9 validation images (3 classes; the other 3 calibrate) in three batches of 4, 4
# and 1, so the ranks share them unevenly.
TWO_RANKS = "ranks.devices-2"
TWO_RANK_SWEEP = {
    "base": "smoke",
    "set": {"data.val_batch_size": 4, "schedule.epochs": 4},
    "grid": {"trainer.devices": [2]},
}


# A training that a stop can land inside of (tests/test_resume.py, the SLURM resume tests): a sweep
# point of the smoke experiment with one persistent loader worker (every GPU
# config's kind of loader, where Lightning's own resume replays epoch 0), 3 epochs of 32 batches,
# and a loss and rate under which validation picks epoch 2, so the compared weights are ones a
# resume trained.
RESUMABLE = "resume.num_workers-1"
RESUMABLE_EPOCHS, RESUMABLE_BATCHES = 3, 32
RESUMABLE_SWEEP = {
    "base": "smoke",
    "set": {
        "data.samples_per_epoch": RESUMABLE_BATCHES * 32,
        "schedule.epochs": RESUMABLE_EPOCHS,
        "data.loader.persistent_workers": True,
        "data.loader.prefetch_factor": 2,
        "loss.s": 16.0,
        "loss.m": 0.1,
        "optimizer.lr": 2.0e-3,
    },
    "grid": {"data.loader.num_workers": [1]},
}


def write_sweep(workdir: Path, name: str, sweep: dict) -> None:
    import yaml

    (workdir / "configs" / "sweeps" / f"{name}.yaml").write_text(yaml.safe_dump(sweep))


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """A complete local smoke build in a copy of the workflow (tests that edit it restore it)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("first") / "doctrain")
    result = snakemake(workdir, TARGET)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def state_sha(workdir: Path, exp: str = TWO_RANKS) -> str:
    """The digest of the trained weights, from the training's stamp."""
    import json

    return json.loads((workdir / f"results/{exp}/model.stamp.json").read_text())["state_dict_sha256"]


def _train_a_sweep_point(built: Path, folder: Path, sweep: str, content: dict, exp: str) -> Path:
    """A copy of the smoke build with a sweep on smoke's data, and `exp` of it trained locally."""
    workdir = Path(shutil.copytree(built, folder / "doctrain", symlinks=True))
    write_sweep(workdir, sweep, content)
    result = snakemake(workdir, f"results/{exp}/model.stamp.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def two_ranks(built, tmp_path_factory) -> Path:
    """The smoke build plus one training as two CPU ranks, trained locally (its data is smoke's)."""
    return _train_a_sweep_point(built, tmp_path_factory.mktemp("ranks"), "ranks", TWO_RANK_SWEEP, TWO_RANKS)


@pytest.fixture(scope="session")
def resumable(built, tmp_path_factory) -> Path:
    """The smoke build plus RESUMABLE's uninterrupted training, trained locally (on smoke's data)."""
    return _train_a_sweep_point(
        built, tmp_path_factory.mktemp("resumable"), "resume", RESUMABLE_SWEEP, RESUMABLE
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The real SLURM cluster of tests/slurm_cluster.py, installed if missing, up for the session."""
    from tests import slurm_cluster

    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root")
    if slurm_cluster.available():
        apt_install(*slurm_cluster.PACKAGES)
    started = time.monotonic()
    running = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    print(f"test cluster up in {time.monotonic() - started:.1f} s")
    yield running
    running.stop()


def pytest_collection_modifyitems(config, items):
    # The cluster tests go last: they install and start system services, and nothing after them
    # should run beside a cluster being torn down.
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)
