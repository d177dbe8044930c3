"""One training in several processes: how the ranks share batches, and two real CPU ranks (gloo)
through Snakemake, against one process, twice, and killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler

from doctrain import distributed, experiments
from doctrain.config import validate_config
from doctrain.dataset import ClassBalancedSampler
from doctrain.errors import UserError
from doctrain.fingerprint import stage_settings
from tests.conftest import SNAKEMAKE, TWO_RANKS, snakemake, snakemake_env, state_sha


def test_each_rank_trains_on_its_slice_of_the_same_global_batches():
    sampler = ClassBalancedSampler(np.arange(40) % 5, num_samples=64, seed=3)
    sampler.set_epoch(2)
    one = list(BatchSampler(sampler, 16, drop_last=True))
    ranks = [distributed.RankSlices(BatchSampler(sampler, 16, drop_last=True), r, 4) for r in range(4)]
    assert all(len(rank) == len(one) == 4 for rank in ranks)
    shares = [list(rank) for rank in ranks]
    assert [sum((share[step] for share in shares), []) for step in range(4)] == one
    # Lightning calls set_epoch on batch_sampler.sampler: every rank then draws the next epoch.
    ranks[0].sampler.set_epoch(3)
    assert list(ranks[0])[0] != shares[0][0]


def test_validation_batches_are_shared_whole_and_gathered_as_one_process_scores_them():
    batches = list(BatchSampler(range(18), 6, drop_last=False))
    shares = [list(distributed.RankBatches(batches, rank, 2)) for rank in range(2)]
    assert shares == [[batches[0], batches[2]], [batches[1], batches[0]]]  # rank 1 repeats one: same length
    scored = [(b[0], np.array(b, float), np.array(b) % 2 == 0) for b in batches]
    gathered = distributed.gather_batches([scored[2], scored[1], scored[0], scored[0]])
    one_process = distributed.gather_batches(scored)
    assert all(np.array_equal(a, b) for a, b in zip(gathered, one_process, strict=True))
    assert one_process[0].tolist() == list(range(18))


def test_the_global_batch_must_divide_among_the_ranks():
    config = {"data": {"manifest": "m.csv", "batch_size": 32}, "trainer": {"devices": 3}}
    with pytest.raises(UserError, match=r"data.batch_size \(32\) is the global batch .* the 3 ranks"):
        validate_config(config, "configs/x.yaml")
    validate_config({**config, "trainer": {"devices": 2, "num_nodes": 2}}, "configs/x.yaml")


def test_several_nodes_need_a_cluster(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_PROCID", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    settings = {"devices": 2, "num_nodes": 2, "accelerator": "cpu"}
    with pytest.raises(UserError, match="trainer.num_nodes is 2: ranks on other nodes are started by SLURM"):
        distributed.start_ranks(settings)
    distributed.start_ranks({**settings, "num_nodes": 1})  # Lightning starts them: nothing to do
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_PROCID", "1")
    distributed.start_ranks(settings)  # already an srun task


WORK = f"results/{TWO_RANKS}/work/train"


@pytest.mark.slow
def test_two_ranks_train_as_one_with_the_figures_of_one_process_and_again_the_same(two_ranks):
    from doctrain.cache import Cache
    from doctrain.dataset import loaders
    from doctrain.lit_module import EmbeddingModule
    from doctrain.metrics import verification_metrics

    results = two_ranks / "results" / TWO_RANKS
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["train"]["ranks"] == 2 and metrics["train"]["samples"] == 4 * 256
    log = (results / "logs/train.log").read_text()
    assert "Starting with 2 processes" in log and "distributed_backend=gloo" in log
    # The published model's validation, recomputed by one process over the same batches.
    settings = stage_settings(experiments.find(two_ranks / "configs").configs[TWO_RANKS], "train")
    assert settings["trainer"]["devices"] == 2
    module = EmbeddingModule.load_from_checkpoint(results / "model.ckpt", map_location="cpu").eval()
    _, val_loader = loaders(Cache(two_ranks / "results/smoke/cache"), settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["trainer"]["threads"])  # each rank's: the same sums, bit for bit
    try:
        with torch.no_grad():
            for step, batch in enumerate(val_loader):
                module.validation_step(module.on_after_batch_transfer(batch, 0), step)
    finally:
        torch.set_num_threads(threads)
    scores, same = distributed.gather_batches(module._val_batches)
    assert len(module._val_batches) == 3
    assert verification_metrics(scores, same) == metrics["val"]
    first = state_sha(two_ranks)
    again = snakemake(two_ranks, f"results/{TWO_RANKS}/model.stamp.json", "--forcerun", "train")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert state_sha(two_ranks) == first


def _read(path: Path) -> list[str]:
    return path.read_bytes().decode(errors="replace").split("\0")


def _rank_processes(work_dir: str) -> dict[int, int]:
    """pid by rank (LOCAL_RANK, 0 where unset) of the training processes using this work folder."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            command = _read(proc / "cmdline")
            # rank 0 runs `python -m doctrain`, Lightning starts the others as `-m doctrain.__main__`
            if work_dir not in command or not any(arg.startswith("doctrain") for arg in command[:3]):
                continue
            env = dict(line.split("=", 1) for line in _read(proc / "environ") if "=" in line)
        except OSError:  # gone meanwhile, or not a process
            continue
        found[int(env.get("LOCAL_RANK", 0))] = int(proc.name)
    return found


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_and_the_rerun_resumes_to_the_same_weights(two_ranks, tmp_path):
    uninterrupted = state_sha(two_ranks)
    results = two_ranks / "results" / TWO_RANKS
    output = tmp_path / "snakemake.log"  # a file, not a pipe: nobody reads it while it runs
    run = subprocess.Popen(
        [*SNAKEMAKE, f"results/{TWO_RANKS}/model.stamp.json", "--forcerun", "train"],
        cwd=two_ranks,
        env=snakemake_env(),
        stdout=output.open("w"),
        stderr=subprocess.STDOUT,
    )
    last, started = results / "work/train/checkpoints/last.ckpt", time.time()
    deadline = time.monotonic() + 300
    while not (last.exists() and last.stat().st_mtime > started):  # an epoch of this run saved
        assert time.monotonic() < deadline and run.poll() is None, "training never saved an epoch"
        time.sleep(0.2)
    ranks = _rank_processes(WORK)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    assert run.wait(timeout=300) != 0, output.read_text()[-3000:]
    for name in ("model.ckpt", "model.stamp.json", "metrics.json"):
        assert not (results / name).exists()
    deadline = time.monotonic() + 30
    while _rank_processes(WORK):
        assert time.monotonic() < deadline, "a rank outlived the failed job"
        time.sleep(0.5)
    resumed = snakemake(two_ranks, f"results/{TWO_RANKS}/model.stamp.json")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in (results / "logs/train.log").read_text()
    assert state_sha(two_ranks) == uninterrupted


# What a cluster user writes: the reference recipe on 4 GPUs of one node, and on 4 GPUs of each of 2.
CLUSTER_SWEEP = {
    "base": "lcnet050_cosface_96",
    "variants": [
        {"trainer.devices": 4},
        {"trainer.devices": 4, "trainer.num_nodes": 2},
        {"trainer.num_nodes": 2},
    ],
}
SBATCH = {  # per node: 4 ranks, each with its GPU, loader workers + 1 CPUs and 8,908 MB
    "cluster.devices-4": ["--nodes=1", "--ntasks-per-node=4", "--cpus-per-gpu=9", "--gpus=4", "--mem 35632"],
    "cluster.devices-4_num_nodes-2": [
        "--nodes=2",
        "--ntasks-per-node=4",
        "--cpus-per-gpu=9",
        "--gres=gpu:4",
        "--mem 35632",
    ],
    "cluster.num_nodes-2": ["--nodes=2", "--ntasks=2", "--ntasks-per-gpu=1", "--gres=gpu:1"],
}


class _Resources(dict):
    __getattr__ = dict.__getitem__


def _planned_resources(output: str) -> dict[str, tuple[int, _Resources]]:
    """Per experiment, the threads and resources of its planned train job (snakemake -n -p)."""
    planned, rule = {}, None
    for line in output.splitlines():
        if line.strip().endswith("rule train:"):
            rule = {}
        elif rule is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            rule[key] = value
        elif rule is not None:
            resources = dict(pair.split("=", 1) for pair in rule["resources"].split(", "))
            typed = {k: int(v) if v.isdigit() else v for k, v in resources.items()}
            planned[rule["wildcards"].removeprefix("exp=")] = (int(rule["threads"]), _Resources(typed))
            rule = None
    return planned


def test_slurm_is_asked_for_a_task_per_rank_and_the_gpus_of_each_node(tmp_path):
    """The sbatch options the SLURM executor plugin builds (its own code) from the resources
    Snakemake plans for the train jobs of multi-GPU and multi-node configs (README, cluster)."""
    import yaml
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    from tests.conftest import copy_workflow

    workdir = copy_workflow(tmp_path / "doctrain")
    (workdir / "configs/sweeps/cluster.yaml").write_text(yaml.safe_dump(CLUSTER_SWEEP))
    targets = [f"results/{exp}/model.stamp.json" for exp in SBATCH]
    result = snakemake(workdir, "-n", "-p", "--cores", "256", *targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned, sbatch_of = _planned_resources(result.stdout), {}
    names = ("run_uuid", "slurm_logfile", "comment_str", "account", "partition", "workdir")
    params = dict.fromkeys(names, "")
    for exp, expected in SBATCH.items():
        threads, resources = planned[exp]
        job = type("Job", (), {"resources": resources, "threads": threads, "name": "train"})()
        sbatch = sbatch_of[exp] = get_submit_command(job, params) + set_gres_string(job)
        print(f"{exp}: {sbatch}")
        for option in expected:
            assert f" {option} " in f"{sbatch} ", (option, sbatch)
        assert resources["mpi"] == "srun"
    assert "--ntasks=" not in sbatch_of["cluster.devices-4"]


def test_a_training_on_two_gpus_claims_two_free_ones_or_says_there_are_too_few(tmp_path):
    import fcntl
    import sys

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1,2", DOCTRAIN_GPU_LOCKS=str(tmp_path))
    for name in ("SLURM_JOB_ID", "LOCAL_RANK"):
        env.pop(name, None)
    held = open(tmp_path / "gpu-0.lock", "a")  # another job's
    fcntl.flock(held, fcntl.LOCK_EX)
    claim = (
        "from doctrain.devices import claim_gpu; import os; from doctrain.errors import UserError\n"
        "print(claim_gpu('t', 2), os.environ['CUDA_VISIBLE_DEVICES'])\n"
        "try: claim_gpu('u', 4)\nexcept UserError as e: print(e)"
    )
    out = subprocess.run([sys.executable, "-c", claim], env=env, capture_output=True, text=True, timeout=60)
    assert "t: GPUs 1,2 claimed at" in out.stdout and "['1', '2'] 1,2" in out.stdout, out.stdout + out.stderr
    assert "u: trainer.devices asks for 4 GPUs and this machine shows 2 (1,2)" in out.stdout
    held.close()


@pytest.mark.slow
def test_one_ddp_rank_trains_the_weights_of_one_plain_process(built, tmp_path):
    """trainer.strategy: ddp for one rank (what bench_ddp.py measures) changes nothing but the
    bookkeeping. In its own process: DDP leaves its rank variables in the environment."""
    import sys

    script = (
        "import sys; from doctrain import experiments, training; "
        "from doctrain.fingerprint import stage_settings\n"
        f"settings = stage_settings(experiments.find('{built}/configs').configs['smoke'], 'train')\n"
        "settings['schedule']['epochs'] = 1\n"
        "for strategy in ('ddp', 'auto'):\n"
        "    settings['trainer']['strategy'] = strategy\n"
        f"    result = training.train(settings, '{built}/results/smoke/cache', '{tmp_path}/' + strategy)\n"
        "    print('weights', result['state_dict_sha256'])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    weights = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("weights ")]
    assert len(weights) == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert weights[0] == weights[1]
