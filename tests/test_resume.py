"""A stopped training continues to the weights and the whole log of the uninterrupted one
(doctrain.resume), with a persistent loader worker: killed (-9) early in an epoch and in its middle,
and stopped by SIGTERM in its middle. The trainings run as processes of their own on the smoke
build's cache; the SLURM routes (a requeued job, a signalled one) are in test_slurm.py."""

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

# One persistent loader worker (the demo's and every GPU config's kind of loader, where Lightning's
# own resume replays epoch 0) and epochs of 32 batches, so a stop can land inside one.
EPOCHS, BATCHES = 3, 32
RUN = """
import json, sys
from pathlib import Path
from doctrain import training
settings, cache, work = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2], Path(sys.argv[3])
result = training.train(settings, cache, work, resume_key="this training")
result["log"].write_log(work / "published_log.csv")
print("RESULT", json.dumps({key: result[key] for key in ("state_dict_sha256", "selected_epoch", "train")}))
"""


@pytest.fixture(scope="module")
def settings_file(built, tmp_path_factory) -> Path:
    from doctrain.config import load_config
    from doctrain.fingerprint import stage_settings

    settings = stage_settings(load_config(built / "configs" / "smoke.yaml"), "train")
    settings["data"]["loader"].update(num_workers=1, persistent_workers=True, prefetch_factor=2)
    settings["data"]["samples_per_epoch"] = BATCHES * settings["data"]["batch_size"]
    settings["schedule"]["epochs"] = EPOCHS
    # Settings under which validation picks epoch 1, so the compared weights are ones a resume trained.
    settings["loss"].update(s=16.0, m=0.1)
    settings["optimizer"]["lr"] = 1.0e-3
    path = tmp_path_factory.mktemp("resume") / "settings.json"
    path.write_text(json.dumps(settings))
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


@pytest.fixture(scope="module")
def uninterrupted(built, settings_file, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted") / "train"
    status, text, result = train(settings_file, built / "results/smoke/cache", work)
    assert status == 0, text[-3000:]
    assert result["selected_epoch"] >= 1, result
    return result, (work / "published_log.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, percent, resumes_inside",
    [
        (signal.SIGKILL, 10, False),  # early in epoch 1: back to its first batch
        (signal.SIGKILL, 60, False),  # in its middle: back to its first batch too
        (signal.SIGTERM, 50, True),  # in its middle: saved there, resumed there
    ],
    ids=["kill-9-early-in-an-epoch", "kill-9-mid-epoch", "sigterm-mid-epoch"],
)
def test_a_stopped_training_resumes_to_the_uninterrupted_weights_and_log(
    built, settings_file, uninterrupted, tmp_path, signum, percent, resumes_inside
):
    work, cache = tmp_path / "train", built / "results/smoke/cache"
    status, text, _ = train(settings_file, cache, work, stop=(signum, percent))
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 1), text[-3000:]
    assert not list(work.glob("published_log.csv"))
    if signum == signal.SIGTERM:
        stopped = re.search(
            r"training stopped by a signal after batch (\d+) of epoch 1; its state is saved", text
        )
        assert stopped, text[-3000:]
    status, text, result = train(settings_file, cache, work)
    assert status == 0, text[-3000:]
    resumed = re.search(r"resuming from .*last\.ckpt at batch (\d+) of epoch 1 ", text)
    assert resumed, text[-3000:]
    batch = int(resumed.group(1))
    if resumes_inside:
        assert batch == int(stopped.group(1)) and 1 < batch < BATCHES
    else:
        assert batch == 1  # the resume point written after each epoch's first batch
    assert result["train"]["resumed_at"] == {"epoch": 1, "batch": batch}
    assert result["train"]["samples"] == ((EPOCHS - 1) * BATCHES - batch) * 32
    expected, log = uninterrupted
    assert result["state_dict_sha256"] == expected["state_dict_sha256"]
    assert (work / "published_log.csv").read_text() == log  # every step's and every epoch's row


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
