"""An interrupted training continues where it stopped and ends at the weights of an uninterrupted one.

The state to continue from is `checkpoints/last.ckpt` in the training's work folder (Snakemake keeps
it: it is not a declared output). `ResumePoint` writes it after the first batch of every epoch, and
after the batch in progress when the process is told to stop: SIGTERM (what SLURM sends at a time
limit, on `scontrol requeue` and on preemption, and what `kill` sends) or SIGUSR1 (what `sbatch
--signal` sends by convention). A kill -9 therefore costs at most about an epoch; a signal, nothing.
Besides Lightning's own state (weights, optimiser, schedule, loop counters, the best-epoch
bookkeeping), the point carries:

- the sampler's position (epoch, batches done): restored before Lightning makes the first loader
  iterator, because loader workers start drawing indices as soon as it exists (Lightning #21938:
  it would otherwise draw epoch 0's samples again);
- the training log of every earlier process of this training, so that the published log is one
  continuous log whatever the number of resumes (Lightning's CSV logger starts a new file each
  process);
- (through the LightningModule) the sum of the epoch's training losses so far, so that a resumed
  epoch's mean is over every batch.
"""

from __future__ import annotations

import csv
import pickle
import shutil
import signal
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from doctrain import _io
from doctrain.errors import UserError

if TYPE_CHECKING:
    from doctrain.dataset import ClassBalancedSampler

LAST = "last.ckpt"


class TrainingStopped(UserError):
    """A signal stopped the training after its state was saved: said in one line, like a user's
    error, and the job fails (a rerun continues)."""


class ResumePoint(Callback):
    """Saves the training's whole state to `path` after each epoch's first batch and when a stop
    signal arrives; restores the sampler's position and the earlier log from it (see the module's text)."""

    def __init__(self, path: Path, sampler: ClassBalancedSampler, batch_size: int, log_csv: Path):
        self.path, self.sampler, self.batch_size = Path(path), sampler, batch_size
        self.log_csv = Path(log_csv)
        self.epoch, self.batches = 0, 0
        self.earlier_log: list[dict[str, str]] = []
        self.resumed_at: tuple[int, int] | None = None
        self.batches_this_process = 0
        self.stopped = False  # saved here on a stop signal

    # What Lightning stores with the checkpoint (and hands back to load_state_dict on resume).
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "log": self.earlier_log + self._this_log()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches, self.earlier_log = state["epoch"], state["batches"], state["log"]
        self.resumed_at = (self.epoch, self.batches)
        self.sampler.start_at(self.epoch, self.batches * self.batch_size)
        _say(f"resuming from {self.path} at batch {self.batches} of epoch {self.epoch} (a run stopped there)")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch, self.batches = trainer.current_epoch, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        self.batches_this_process += 1
        # After each epoch's first batch rather than at its start: Lightning 2.6 resumes the state
        # after a training batch exactly, while a checkpoint from an epoch's start resumes with the
        # previous epoch's batch count and skips the epoch (measured). The batch's own log row is
        # written after this hook, so training.log_every keeps log rows off an epoch's first batch.
        if self.batches == 1 and trainer.num_training_batches > 1:  # else it is the epoch's end
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch, self.batches = trainer.current_epoch + 1, 0

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning's SIGTERM handler (stop_on_signals turns SIGUSR1 into SIGTERM) lets the batch in
        # progress finish, log and validate where due, then raises this. Inside validation nothing
        # is saved: the epoch's scores so far are not part of any state, so the earlier point stands.
        if isinstance(exception, SIGTERMException) and not trainer.validating:
            self._save(trainer)
            self.stopped = True

    def _save(self, trainer) -> None:
        for logger in trainer.loggers:
            logger.save()  # the CSV on disk holds every row logged so far, the events are flushed
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, to continue from

    def _this_log(self) -> list[dict[str, str]]:
        if not self.log_csv.exists():
            return []
        with self.log_csv.open(newline="") as file:
            return list(csv.DictReader(file))

    def write_log(self, out: Path) -> None:
        """The whole training's log: the earlier processes' rows, then this one's; columns in a
        fixed order (epoch, step, then the metrics by name), whatever order they were logged in."""
        rows = self.earlier_log + self._this_log()
        metrics = sorted({key for row in rows for key in row} - {"epoch", "step"})
        with _io.atomic_path(out) as tmp, tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, ["epoch", "step", *metrics], restval="")
            writer.writeheader()
            writer.writerows(rows)


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)


def stop_on_signals() -> None:
    """SIGUSR1 (sbatch --signal) stops a training as SIGTERM does: Lightning watches for SIGTERM."""
    signal.signal(signal.SIGUSR1, lambda *_: signal.raise_signal(signal.SIGTERM))


# What a checkpoint that was cut short or overwritten raises in torch.load: the zip reader's
# RuntimeError, a truncated pickle, a bad archive. Anything else (no memory, no permission, a class
# that no longer imports) is not damage and is reported as it is.
_DAMAGED = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def _loads(checkpoint: Path) -> bool:
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=False)
    except _DAMAGED:
        return False
    return True


def resumable(work_dir: Path, resume_key: str, prepare: bool = True) -> Path | None:
    """The resume point of an interrupted run of exactly this training, if there is one and it
    loads. Anything else in the work folder is stale and is removed, so it cannot be picked as
    "best"; a damaged checkpoint is set aside beside the folder, and training starts over.
    Only the rank that `prepare`s the folder changes it; the other ranks of the training come to
    the same answer by reading it: Lightning's launcher starts them after rank 0 prepared it, and
    srun's tasks that read it meanwhile find either the same resumable point or nothing to resume,
    as rank 0 decided."""
    last, key_file = work_dir / "checkpoints" / LAST, work_dir / "resume-key.txt"
    if last.exists() and key_file.exists() and key_file.read_text() == resume_key:
        if _loads(last):
            return last
        if not prepare:
            return None
        damaged = work_dir.with_name(f"{work_dir.name}.damaged-last.ckpt")
        shutil.move(last, damaged)
        print(f"warning: {last} does not load (damaged); set aside as {damaged}; training starts over")
    if not prepare:
        return None
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    key_file.write_text(resume_key)
    return None
