"""A stopped training continues to the weights and the whole log of the uninterrupted one
(doctrain.resume), with a persistent loader worker: killed (-9) in the middle of an epoch, stopped
by SIGTERM in its middle and at its end. The stopped trainings run as processes of their own on the
smoke build's cache, and are compared with the same training built uninterrupted by Snakemake: the
weights, the CSV log, and the log as TensorBoard's reader shows it. The SLURM routes (a requeued
job, a signalled one) are in test_slurm.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from doctrain import resume
from tests.conftest import RESUMABLE, RESUMABLE_BATCHES, RESUMABLE_EPOCHS, state_sha

RUN = """
import json, sys
from pathlib import Path
from doctrain import training
settings, cache, work = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2], Path(sys.argv[3])
result = training.train(settings, cache, work, resume_key="this training", tensorboard_dir=work.parent / "tb")
result["log"].write_log(work / "published_log.csv")
print("RESULT", json.dumps({key: result[key] for key in ("state_dict_sha256", "selected_epoch", "train")}))
"""


@pytest.fixture(scope="module")
def settings_file(resumable, tmp_path_factory) -> Path:
    """RESUMABLE's training settings, as its Snakemake job gets them."""
    from doctrain import experiments
    from doctrain.fingerprint import stage_settings

    config = experiments.find(resumable / "configs").configs[RESUMABLE]
    path = tmp_path_factory.mktemp("resume") / "settings.json"
    path.write_text(json.dumps(stage_settings(config, "train")))
    return path


def train(settings_file: Path, cache: Path, work: Path, stop: tuple[int, int] | None = None):
    """Run the training as a process; with `stop` = (signal, percent), send it the signal once its
    progress bar shows epoch 1 that far. Returns (exit status, output, the RESULT line's data)."""
    process = subprocess.Popen(
        [sys.executable, "-c", RUN, str(settings_file), str(cache), str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = bytearray()
    reader = threading.Thread(
        target=lambda: [output.extend(c) for c in iter(lambda: process.stdout.read1(4096), b"")]
    )
    reader.start()
    if stop is not None:
        signum, percent = stop
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            shown = [int(p) for p in re.findall(rb"Epoch 1:\s+(\d+)%", bytes(output))]
            if shown and max(shown) >= percent:
                os.kill(process.pid, signum)
                break
            time.sleep(0.02)
    process.wait(timeout=300)
    reader.join()
    text = output.decode(errors="replace").replace("\r", "\n")
    found = re.search(r"^RESULT (.*)$", text, re.M)
    return process.returncode, text, json.loads(found.group(1)) if found else None


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, percent",
    [
        # in the middle of epoch 1: back to the point after its first batch; what was logged after
        # that point and reached the disk before the kill is logged again, and shown once
        (signal.SIGKILL, 60),
        (signal.SIGTERM, 47),  # in its middle (often on batch 16, whose log row comes after the hooks)
        (signal.SIGTERM, 97),  # at its end (often after it: the point is the next epoch's start)
    ],
    ids=["kill-9-in-an-epoch", "sigterm-mid-epoch", "sigterm-at-an-epochs-end"],
)
def test_a_stopped_training_resumes_to_the_uninterrupted_weights_and_log(
    resumable, settings_file, tmp_path, signum, percent
):
    work, cache = tmp_path / "train", resumable / "results/smoke/cache"
    status, first_run, _ = train(settings_file, cache, work, stop=(signum, percent))
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 1), first_run[-3000:]
    assert not list(work.glob("published_log.csv"))
    status, text, result = train(settings_file, cache, work)
    assert status == 0, text[-3000:]
    resumed = re.search(r"resuming from .*last\.ckpt at batch (\d+) of epoch (\d+) ", text)
    assert resumed, text[-3000:]
    batch, epoch = int(resumed.group(1)), int(resumed.group(2))
    if signum == signal.SIGKILL:
        assert (epoch, batch) == (1, 1)  # the point written after each epoch's first batch
    else:  # saved where the signal stopped it
        stopped = re.search(
            r"stopped by a signal after batch (\d+) of epoch (\d+); its state is saved", first_run
        )
        assert stopped and (batch, epoch) == (int(stopped.group(1)), int(stopped.group(2))), first_run[-3000:]
    assert result["train"]["resumed_at"] == {"epoch": epoch, "batch": batch}
    done = epoch * RESUMABLE_BATCHES + batch
    assert result["train"]["samples"] == (RESUMABLE_EPOCHS * RESUMABLE_BATCHES - done) * 32
    # The uninterrupted training, as Snakemake published it.
    assert result["selected_epoch"] >= 1
    assert result["state_dict_sha256"] == state_sha(resumable, RESUMABLE)
    published = (resumable / f"results/{RESUMABLE}/train_log.csv").read_text()
    assert (work / "published_log.csv").read_text() == published  # every step's and every epoch's row
    # TensorBoard shows one run: what the stopped process logged after the resume point is hidden.
    watched = scalars(tmp_path / "tb")
    assert "train/loss_step" in watched and "val/auroc" in watched, sorted(watched)
    assert watched == scalars(resumable / f"results/{RESUMABLE}/tensorboard")


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard log folder as TensorBoard's own reader shows it: tag -> (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_only_a_checkpoint_that_does_not_load_is_damage(tmp_path, monkeypatch):
    work = tmp_path / "train"
    (work / "checkpoints").mkdir(parents=True)
    (work / "resume-key.txt").write_text("key")
    (work / "checkpoints" / resume.LAST).write_bytes(b"not a checkpoint")
    assert resume.resumable(work, "key") is None  # damaged: set aside, training starts over
    assert (tmp_path / "train.damaged-last.ckpt").read_bytes() == b"not a checkpoint"

    (work / "checkpoints").mkdir()
    (work / "checkpoints" / resume.LAST).write_bytes(b"unreadable now")

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(resume.torch, "load", no_memory)
    with pytest.raises(MemoryError):
        resume.resumable(work, "key")
    assert (work / "checkpoints" / resume.LAST).exists()  # kept for a rerun that has the memory
