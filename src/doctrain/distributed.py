"""One training in several processes (Lightning DDP): how the ranks share the batches, and how the
validation figures come out as one process would compute them.

`data.batch_size` is the global batch. Every rank draws the same seeded global batches and trains on
its own contiguous slice of each, and DDP averages the gradients; so a run on 1 device and on 4 takes
the same number of steps over the same samples with the same schedule. On GPUs batch-norm
statistics are synchronised across ranks (`sync_batchnorm`), as one process would compute them over
the global batch; torch's SyncBatchNorm does not run on CPUs, so CPU ranks (gloo: the tests) keep
their own.

Validation scores the pairs inside each validation batch. The ranks take whole batches in turn (rank
r the batches r, r + W, ...), and the scores of every rank are gathered, in the order of the batches,
before any figure is computed: every rank then holds the figures of the whole validation set, the
same as one process computes."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import BatchSampler, Sampler

from doctrain.config import ranks
from doctrain.errors import UserError


def start_ranks(trainer_settings: dict) -> None:
    """In a SLURM job the ranks are srun's tasks, one per device on each node (Lightning reads its
    rank and its peers from srun's variables): this command starts again as those tasks. The
    job itself asked for them (rules/common.smk); the executor runs the rule's command outside any
    job step, so nothing here is a task yet. Elsewhere, and without srun (inside a container), the
    ranks of one node are Lightning's own child processes; several nodes need a cluster."""
    devices, nodes = trainer_settings["devices"], trainer_settings["num_nodes"]
    if "SLURM_JOB_ID" not in os.environ:
        if nodes > 1 and "NODE_RANK" not in os.environ:
            raise UserError(
                f"trainer.num_nodes is {nodes}: ranks on other nodes are started by SLURM "
                "(snakemake --profile profiles/slurm); on one machine set trainer.num_nodes: 1"
            )
        return
    if ranks(trainer_settings) == 1 or "SLURM_PROCID" in os.environ:
        return
    srun = shutil.which("srun")
    if srun is None:
        if nodes > 1:
            raise UserError(
                f"trainer.num_nodes is {nodes} and there is no srun on PATH to start ranks on other "
                "nodes (inside a container?): run this training outside the container"
            )
        return
    threads = int(os.environ.get("OMP_NUM_THREADS", devices))
    command = [
        srun,
        f"--nodes={nodes}",
        f"--ntasks-per-node={devices}",
        f"--cpus-per-task={max(1, threads // devices)}",
        *([f"--gres=gpu:{devices}"] if trainer_settings["accelerator"] != "cpu" else []),
        "--kill-on-bad-exit=1",  # one rank failing ends the others at once
        sys.executable,
        *sys.orig_argv[1:],
    ]
    print(f"starting {ranks(trainer_settings)} ranks as SLURM tasks: {' '.join(command)}", flush=True)
    os.execv(srun, command)


def is_first_rank() -> bool:
    """Whether this process writes a stage's outputs: the only one, or rank 0 of several (as the
    launcher that started it says: Lightning's LOCAL_RANK, srun's SLURM_PROCID; Lightning reads
    them)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


def wait_for_other_ranks(launcher) -> None:
    """Lightning's launcher starts ranks 1.. as child processes of rank 0 and does not wait for
    them: wait, so that the job ends only when every rank has, and fails when one failed."""
    for rank, process in enumerate(getattr(launcher, "procs", []), start=1):
        if process.wait() != 0:
            raise RuntimeError(f"rank {rank} of the training exited with status {process.returncode}")


class RankSlices(Sampler):
    """This rank's slice of each global training batch."""

    def __init__(self, batches: BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.share = batches, rank, batches.batch_size // world
        self.sampler = batches.sampler  # where Lightning calls set_epoch: new draws every epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list]:
        start = self.rank * self.share
        for batch in self.batches:
            yield batch[start : start + self.share]


class RankBatches(Sampler):
    """Whole validation batches, every `world`-th one, starting at this rank's. Every rank gets
    as many: where the batches run out, a rank repeats one that another rank scores, which
    gather_batches drops (Lightning refuses a rank without validation batches)."""

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int):
        self.batches, self.rank, self.world = list(batches), rank, world

    def __len__(self) -> int:
        return -(-len(self.batches) // self.world)

    def __iter__(self) -> Iterator[list]:
        for step in range(len(self)):
            yield self.batches[(step * self.world + self.rank) % len(self.batches)]


def gather_batches(batches: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (first validation row, pair scores, same-class flags) of each batch, once per
    batch, concatenated in the order of the batches."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        every: list = [None] * dist.get_world_size()
        dist.all_gather_object(every, batches)
        batches = [batch for rank_batches in every for batch in rank_batches]
    by_first_row = {first_row: (scores, same) for first_row, scores, same in batches}
    ordered = [by_first_row[first_row] for first_row in sorted(by_first_row)]
    return np.concatenate([b[0] for b in ordered]), np.concatenate([b[1] for b in ordered])
