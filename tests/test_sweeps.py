"""Sweeps and command-line overrides: expansion, names, validation and shared data; then the real
workflow building a sweep, its compare table, and what a changed grid value reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from doctrain import experiments, sweeps
from doctrain.config import parse_overrides, validate_config, with_overrides
from doctrain.errors import UserError
from tests.conftest import SNAKEMAKE, copy_workflow, planned_jobs, snakemake, snakemake_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A configs/ folder holding smoke.yaml and an empty sweeps/."""
    folder = tmp_path / "configs"
    (folder / "sweeps").mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "smoke.yaml", folder)
    return folder


def write_sweep(configs: Path, name: str, text: str) -> Path:
    path = configs / "sweeps" / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_shipped_sweep_expands_into_named_experiments_sharing_the_smoke_data():
    found = experiments.find(ROOT / "configs")
    names = found.sweeps["smoke-grid"]
    assert names == [
        "smoke-grid.lr-0.002_m-0.2",
        "smoke-grid.lr-0.002_m-0.3",
        "smoke-grid.lr-0.006_m-0.2",
        "smoke-grid.lr-0.006_m-0.3",
    ]
    config = found.configs["smoke-grid.lr-0.006_m-0.2"]
    assert (config["optimizer"]["lr"], config["loss"]["m"], config["schedule"]["epochs"]) == (6e-3, 0.2, 1)
    assert config["data"] == found.configs["smoke"]["data"]
    assert {found.owner(n) for n in names} == {"smoke"}
    assert found.select(["smoke-grid", "smoke"]) == [*names, "smoke"]


def test_names_are_readable_stable_and_safe(configs):
    write_sweep(
        configs,
        "s",
        "base: smoke\n"
        "grid: {optimizer.lr: [1.0e-3, 3e-3], loss.name: [cosface, 'arc face;rm -rf ~']}\n"
        "variants: [{data.image_size: 64}, {model.embed_dim: 16}]\n",
    )
    points = sweeps.load(configs / "sweeps" / "s.yaml").points
    names = [p.name for p in points]
    assert names[0] == "s.lr-0.001_name-cosface_image_size-64"
    assert len(set(names)) == 8 and all(experiments.NAME.fullmatch(n) for n in names), names
    hostile = [p for p in points if p.varied["loss.name"] != "cosface"][0]
    assert ";" not in hostile.name and " " not in hostile.name  # a digest stands for the value
    assert hostile.varied["optimizer.lr"] in (1e-3, 3e-3)  # 3e-3 without a dot is still a number
    # adding a value to the grid leaves the other names as they were
    write_sweep(configs, "s", (configs / "sweeps" / "s.yaml").read_text().replace("3e-3]", "3e-3, 1.0e-2]"))
    assert set(names) < {p.name for p in sweeps.load(configs / "sweeps" / "s.yaml").points}


def test_keys_that_end_alike_are_named_in_full(configs):
    write_sweep(
        configs, "t", "base: smoke\ngrid: {augment.enabled: [true, false], model.pretrained: [false]}\n"
    )
    write_sweep(
        configs, "u", "base: smoke\ngrid: {loss.s: [16, 30], parity.batch_size: [4], data.batch_size: [32]}\n"
    )
    assert sweeps.load(configs / "sweeps" / "t.yaml").points[0].name == "t.enabled-true_pretrained-false"
    assert sweeps.load(configs / "sweeps" / "u.yaml").points[0].name == (
        "u.s-16_parity-batch_size-4_data-batch_size-32"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grid: {optimizer.lr: [1.0e-3]}\n", r"\(top level\): 'base' is a required property"),
        ("base: smoke\n", "is not valid under any of the given schemas"),
        (
            "base: nope\ngrid: {optimizer.lr: [1.0e-3]}\n",
            r"base experiment 'nope' cannot be used \(configs/nope.yaml",
        ),
        ("base: smoke\ngrid: {optimizer.lr: 0.1}\n", r"grid.optimizer.lr: 0.1 is not of type 'array'"),
        (
            "base: smoke\ngrid: {optimizer.lrr: [1]}\n",
            r"\(optimizer.lrr=1\) is not a valid doctrain config: optimizer: Addit",
        ),
        (
            "base: smoke\ngrid: {optimizer.lr: [-1, 0.1]}\n",
            r"\(optimizer.lr=-1\) .*optimizer.lr: -1 is less than",
        ),
        ("base: smoke\ngrid: {optimizer.lr.x: [1]}\n", r"'optimizer.lr' is a value, not a block of settings"),
        ("base: smoke\ngrid: {optimizer.lr: [0.1, 1.0e-1]}\n", r"both make the experiment bad.lr-0.1"),
        ("base: smoke\ngrid: {seed: [1]}\nbogus: 1\n", r"Additional properties are not allowed \('bogus'"),
    ],
)
def test_a_broken_sweep_names_the_file_and_the_problem_and_stops_only_itself(configs, text, expected):
    write_sweep(configs, "bad", text)
    write_sweep(configs, "good", "base: smoke\ngrid: {seed: [1, 2]}\n")
    found = experiments.find(configs)
    assert list(found.broken_sweeps) == ["bad"]
    assert f"{configs}/sweeps/bad.yaml" in found.broken_sweeps["bad"]
    assert re.search(expected, found.broken_sweeps["bad"]), found.broken_sweeps["bad"]
    assert found.sweeps == {"good": ["good.seed-1", "good.seed-2"]}
    with pytest.raises(UserError, match="cannot be used"):
        found.select(["bad"])


def test_a_badly_named_sweep_is_refused(configs):
    for name in ("x;touch PWNED", "all"):
        write_sweep(configs, name, "base: smoke\ngrid: {seed: [1]}\n")
    found = experiments.find(configs)
    assert "the sweep name 'x;touch PWNED' may only hold" in found.broken_sweeps["x;touch PWNED"]
    assert "'all' names the table of every experiment" in found.broken_sweeps["all"]


def test_experiments_share_data_stages_only_where_their_data_settings_agree(configs):
    write_sweep(
        configs,
        "d",
        "base: smoke\ngrid: {data.expand_dihedral: [true, false], optimizer.lr: [1.0e-3, 2.0e-3]}\n",
    )
    found = experiments.find(configs)
    assert found.data_owner == {
        "d.expand_dihedral-true_lr-0.001": "smoke",
        "d.expand_dihedral-true_lr-0.002": "smoke",
        "d.expand_dihedral-false_lr-0.001": "d.expand_dihedral-false_lr-0.001",
        "d.expand_dihedral-false_lr-0.002": "d.expand_dihedral-false_lr-0.001",
    }


def test_command_line_overrides_are_numbers_and_validated_like_a_file(configs):
    assert parse_overrides("optimizer.lr=1e-3 loss.name=arcface trainer.deterministic=false", "x") == {
        "optimizer.lr": 1e-3,
        "loss.name": "arcface",
        "trainer.deterministic": False,
    }
    with pytest.raises(UserError, match=r"--config overrides: 'lr' is not KEY=VALUE"):
        parse_overrides("lr", "--config overrides")
    found = experiments.find(configs, {"optimizer.lr": 5e-4})
    assert found.configs["smoke"]["optimizer"]["lr"] == 5e-4
    broken = experiments.find(configs, {"optimizer.lrr": 5e-4})
    assert "with --config overrides is not a valid doctrain config" in broken.broken["smoke"]
    config = validate_config(with_overrides({}, {"data.loader.num_workers": 3}, "x"))
    assert config["data"]["loader"]["num_workers"] == 3


SWEEP = "results/compare/smoke-grid.md"
GRID = [f"smoke-grid.lr-{lr}_m-{m}" for lr in ("0.002", "0.006") for m in ("0.2", "0.3")]


def _start(workdir: Path, *args: str) -> subprocess.Popen:
    """A real snakemake run in the background, one core (two at once share this machine's two)."""
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", *args],
        cwd=workdir,
        env=snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_sweep_builds_shares_its_data_and_a_changed_value_reruns_only_its_experiments(built, tmp_path):
    """On a copy of the smoke build: the sweep's four experiments share smoke's data stages, so
    none of those runs again. They are built by two snakemake runs at once in the one checkout (two
    users of a shared workstation): both end correct, and a third run that would build what one of
    them is building is refused by Snakemake's lock."""
    workdir = Path(shutil.copytree(built, tmp_path / "doctrain", symlinks=True))
    halves = [[f"results/{name}.onnx" for name in GRID[:2]], [f"results/{name}.onnx" for name in GRID[2:]]]
    runs = [_start(workdir, *half) for half in halves]
    deadline = time.monotonic() + 120
    while not list((workdir / ".snakemake" / "locks").glob("*.output.lock")):
        assert time.monotonic() < deadline and all(run.poll() is None for run in runs), "no run took its lock"
        time.sleep(0.2)
    overlapping = snakemake(workdir, halves[0][0])
    assert overlapping.returncode != 0
    assert "Directory cannot be locked" in overlapping.stdout + overlapping.stderr, overlapping.stderr[-2000:]
    for run in runs:
        out, _ = run.communicate(timeout=1500)
        assert run.returncode == 0, out[-3000:]
        planned = planned_jobs(subprocess.CompletedProcess([], 0, out, ""))
        assert planned == dict.fromkeys(("train", "export", "verify"), 2)
    cache = json.loads((workdir / ".doctrain" / "hash-cache.json").read_text())["files"]
    assert all(f"results/{name}.onnx" in cache for name in GRID), "a run's hash-cache entries were lost"
    result = snakemake(workdir, SWEEP)
    # Every model and stamp the two runs wrote is sound: what is left is what neither was asked for.
    assert planned_jobs(result) == {"evaluate": 4, "compare": 1}
    for name in GRID:
        assert (workdir / f"results/{name}.onnx").exists()
        assert not (workdir / f"results/{name}/cache").exists()
    table = pd.read_csv(workdir / "results/compare/smoke-grid.csv")
    assert list(table.columns[:3]) == ["experiment", "loss.m", "optimizer.lr"]
    assert sorted(table["experiment"]) == GRID and set(table["parity"]) == {"passed"}
    assert table["auroc"].between(0, 1).all() and table["train_s"].gt(0).all()
    assert (
        "Settings that differ: loss.m, optimizer.lr."
        in (workdir / "results/compare/smoke-grid.md").read_text()
    )
    assert "<table" in (workdir / "results/compare/smoke-grid.html").read_text()

    shown = subprocess.run(
        [sys.executable, "-m", "doctrain", "compare", "smoke-grid", "--sort", "auroc"],
        cwd=workdir,
        env=snakemake_env(PYTHONPATH=str(workdir / "src")),
        capture_output=True,
        text=True,
    )
    rows = [line.split("|")[1].strip() for line in shown.stdout.splitlines()[2:]]
    assert rows == list(table.sort_values("auroc", ascending=False, kind="stable")["experiment"]), shown

    assert planned_jobs(snakemake(workdir, "-n", SWEEP)) == {}
    sweep = workdir / "configs/sweeps/smoke-grid.yaml"
    sweep.write_text(sweep.read_text().replace("6.0e-3]", "4.0e-3]"))
    again = snakemake(workdir, "-n", SWEEP)
    assert planned_jobs(again) == {"train": 2, "export": 2, "verify": 2, "evaluate": 2, "compare": 1}
    assert "exp=smoke-grid.lr-0.004_m-0.2" in again.stdout and "exp=smoke-grid.lr-0.002" not in again.stdout

    # The workflow's --config: overrides reach every experiment; anything else is refused by name.
    overridden = snakemake(workdir, "-n", SWEEP, "--config", "overrides=optimizer.lr=1e-3 schedule.epochs=1")
    assert planned_jobs(overridden)["train"] == 4
    for config, said in (
        ("foo=1", "--config foo: doctrain's workflow takes only container"),
        ("overrides=optimizer.lrr=1", "with --config overrides is not a valid doctrain config: optimizer"),
        ("overrides=optimizer.lr", "--config overrides: 'optimizer.lr' is not KEY=VALUE"),
    ):
        refused = snakemake(workdir, "-n", SWEEP, "--config", config)
        assert refused.returncode != 0 and said in refused.stdout + refused.stderr, refused.stderr[-2000:]


CLAIMED = re.compile(r"GPU (\S+) claimed at (\S+) ")
RELEASED = re.compile(r"GPU (\S+) released at (\S+)")


def _held(log: Path) -> tuple[str, datetime, datetime | None] | None:
    """(device, claimed, released) from a training log; None before the claim."""
    text = log.read_text() if log.exists() else ""
    claimed, released = CLAIMED.search(text), RELEASED.search(text)
    if not claimed:
        return None
    end = datetime.fromisoformat(released.group(2)) if released else None
    return claimed.group(1), datetime.fromisoformat(claimed.group(2)), end


def _training_process(exp: str) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd[1:4] == ["-m", "doctrain", "train"] and exp in cmd:
            return proc
    raise AssertionError(f"no training process of {exp}")


@pytest.mark.slow
def test_trainings_get_a_gpu_each_and_a_killed_one_frees_its_gpu(tmp_path):
    """Three trainings that may use a GPU, `--resources gpu=2`, over two (fake) devices: no two at
    once on one device; the one killed while holding GPU 0 gives it to the third."""
    workdir = copy_workflow(tmp_path / "doctrain")
    smoke = workdir / "configs/smoke.yaml"
    config = yaml.safe_load(smoke.read_text())
    config["trainer"]["accelerator"] = "auto"  # a GPU where there is one: it asks Snakemake for one
    config["data"]["samples_per_epoch"] = 4096  # long enough to be killed mid-run
    smoke.write_text(yaml.safe_dump(config))
    write_sweep(
        workdir / "configs", "gpus", "base: smoke\nset: {schedule.epochs: 1}\ngrid: {seed: [1, 2, 3]}\n"
    )
    assert snakemake(workdir, "results/smoke/cache/summary.json").returncode == 0
    names = [f"gpus.seed-{seed}" for seed in (1, 2, 3)]
    logs = {name: workdir / f"results/{name}/logs/train.log" for name in names}
    env = snakemake_env(CUDA_VISIBLE_DEVICES="0,1", DOCTRAIN_GPU_LOCKS=str(tmp_path / "locks"))
    run = subprocess.Popen(
        [
            *SNAKEMAKE,
            "--resources",
            "gpu=2",
            "--keep-going",
            *(f"results/{n}/model.stamp.json" for n in names),
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(holders := {n: h for n in names if (h := _held(logs[n]))}) < 2:
        assert time.monotonic() < deadline and run.poll() is None, "two trainings never claimed a GPU"
        time.sleep(0.2)
    assert sorted(device for device, _, _ in holders.values()) == ["0", "1"]
    victim = next(n for n, (device, _, _) in holders.items() if device == "0")
    assert _held(logs[victim])[2] is None, "the training ended before it could be killed"
    _training_process(victim).kill()
    killed_at = datetime.now(UTC)
    output = run.communicate(timeout=600)[0]
    assert run.returncode != 0 and f"exp={victim}" in output

    held = {n: _held(logs[n]) for n in names}
    third = next(n for n in names if n not in holders)
    assert held[third][0] == "0" and held[third][1] > killed_at, held
    intervals = [(device, start, end or killed_at) for device, start, end in held.values()]
    for i, (device, start, end) in enumerate(intervals):
        for other, other_start, other_end in intervals[i + 1 :]:
            assert device != other or end <= other_start or other_end <= start, intervals
    for name in names:
        if name != victim:
            assert (workdir / f"results/{name}/model.stamp.json").exists()


def test_training_asks_snakemake_for_a_gpu_only_when_it_may_use_one(tmp_path):
    workdir = copy_workflow(tmp_path / "doctrain")
    for accelerator, asked in (("cpu", False), ("auto", True), ("gpu", True)):
        smoke = workdir / "configs/smoke.yaml"
        config = yaml.safe_load(smoke.read_text())
        config["trainer"].update(accelerator=accelerator, threads=2)
        smoke.write_text(yaml.safe_dump(config))
        plan = snakemake(workdir, "-n", "results/smoke/model.stamp.json").stdout
        train = plan[plan.index("rule train:") :]
        resources = train[train.index("resources:") :].splitlines()[0]
        assert bool(re.search(r"\bgpu=1\b", resources)) == asked, resources
        assert "threads: 2" in train  # the config's trainer.threads


def test_a_training_waits_for_a_free_gpu_and_takes_the_one_released(tmp_path):
    """Both devices held by other processes: the claim says it waits, and takes the one let go."""
    import fcntl

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1", DOCTRAIN_GPU_LOCKS=str(tmp_path))
    env.pop("SLURM_JOB_ID", None)
    held = {}
    for device in ("0", "1"):
        held[device] = open(tmp_path / f"gpu-{device}.lock", "a")
        fcntl.flock(held[device], fcntl.LOCK_EX)
    claim = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from doctrain.devices import claim_gpu; import os; claim_gpu('t', poll_s=0.1); "
            "print('sees', os.environ['CUDA_VISIBLE_DEVICES'])",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert claim.stdout.readline().startswith("t: every GPU (0,1) is in use by another doctrain job; waiting")
    held.pop("1").close()
    out = claim.communicate(timeout=60)[0]
    assert "t: GPU 1 claimed at" in out and "sees 1" in out and "t: GPU 1 released at" in out, out
    held.pop("0").close()
