"""What each stage's job asks the scheduler for (cores, GPUs, SLURM tasks, memory), from the
experiment's config: the workflow's business, not the stage's, which runs the same however placed.

Snakemake passes these to its executor: on a workstation `threads` and `gpu` are counted against
--cores and --resources; the SLURM executor plugin turns the rest into sbatch options. A resource
that is None is left out, as Snakemake does with an unset one.
"""

from __future__ import annotations

from doctrain.config import ranks

# Stages other than training that use more than one core (onnxruntime, image decoding).
THREADS = {"validate": 2, "verify": 2}
# What a stage's jobs may ask for besides threads; only training asks for any.
RESOURCES = {
    "train": (
        "gpu",
        "gres",
        "cpus_per_gpu",
        "cpus_per_task",
        "mem_mb",
        "mpi",
        "nodes",
        "tasks_per_node",
        "tasks",
        "tasks_per_gpu",
    )
}


def threads(stage: str, config: dict) -> int:
    return train_resources(config)["threads"] if stage == "train" else THREADS.get(stage, 1)


def resources(stage: str, config: dict) -> dict:
    """The job's resources besides threads, each of RESOURCES[stage]."""
    if stage != "train":
        return {}
    return {key: value for key, value in train_resources(config).items() if key != "threads"}


def train_resources(config: dict) -> dict:
    """A training's threads and resources.

    One rank and its loader workers is a unit of CPUs. Per node, threads are trainer.threads per rank
    where the config pins them (part of the training's fingerprint), else one per rank and worker,
    what Snakemake grants by default (--set-threads train=N gives more); the ranks of a node share
    them (doctrain.training). Above one rank SLURM allocates a task per rank (per node:
    tasks_per_node, which the plugin takes only above 1) and the training starts them with srun
    (doctrain.distributed); `mpi` tells the plugin so.
    """
    trainer, data = config["trainer"], config["data"]
    devices, nodes, count = trainer["devices"], trainer["num_nodes"], ranks(trainer)
    on_gpus = trainer["accelerator"] != "cpu"
    rank_cpus = data["loader"]["num_workers"] + 1
    node_threads = (trainer["threads"] or rank_cpus) * devices
    several = count > 1
    tasks = count if several and devices == 1 else None
    return {
        "threads": node_threads,
        # counted against --resources gpu=N on a workstation (doctrain.devices picks which) and
        # asked of SLURM per job; a training across nodes asks per node instead (gres)
        "gpu": (devices if nodes == 1 else None) if on_gpus else 0,
        "gres": f"gpu:{devices}" if on_gpus and nodes > 1 else None,
        "cpus_per_gpu": rank_cpus,
        # CPU ranks' own cores (GPU ranks ask theirs per GPU)
        "cpus_per_task": node_threads // devices if several and not on_gpus else None,
        "mem_mb": train_memory_mb(config),
        "mpi": "srun" if several else None,
        "nodes": nodes if several else None,
        "tasks_per_node": devices if devices > 1 else None,
        "tasks": tasks,
        # one rank a GPU where the ranks are counted in `tasks` (the plugin would read that count as
        # tasks per GPU)
        "tasks_per_gpu": 1 if tasks and on_gpus else None,
    }


def train_memory_mb(config: dict) -> int:
    """Host memory for training, per node: for each rank, the process (torch, the memory-mapped
    cache's hot pages) plus, per loader worker, its own interpreter and the batches it keeps
    prefetched."""
    data = config["data"]
    batch_mb = data["batch_size"] * 3 * data["image_size"] ** 2 / 2**20  # uint8 pixels
    per_worker = 600 + batch_mb * data["loader"]["prefetch_factor"]
    return int((4000 + data["loader"]["num_workers"] * per_worker) * config["trainer"]["devices"])
