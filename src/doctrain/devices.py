"""Which GPU a training job uses on a workstation.

Snakemake counts GPUs (`--resources gpu=4` runs at most four trainings that ask for one) but never
says which: every job would see all of them and Lightning would put each on the first. So a
training that may use a GPU claims one of the visible devices (CUDA_VISIBLE_DEVICES, else every
device torch sees) with an exclusive lock on a file per device, and then sees only that device.
The kernel drops the lock when the process ends, however it ends, so a killed job frees its
device at once. Under SLURM the scheduler has already given the job its GPUs; nothing is claimed.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

# Shared by every doctrain job on this machine, whichever checkout or user runs it.
LOCK_DIR = Path(os.environ.get("DOCTRAIN_GPU_LOCKS", Path(tempfile.gettempdir()) / "doctrain-gpu-locks"))
_held: list[IO] = []  # open lock files: the locks live as long as the process


def visible_devices() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _report_release(what: str) -> None:
    print(f"{what} released at {_now()}", flush=True)


def _shared(path: Path, mode: int) -> None:
    """Let every user's jobs use the lock folder and files (only their creator may change modes)."""
    try:
        path.chmod(mode)
    except PermissionError:
        pass


def _try_lock(device: str) -> IO | None:
    if not LOCK_DIR.is_dir():
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        _shared(LOCK_DIR, 0o1777)
    path = LOCK_DIR / f"gpu-{device}.lock"
    handle = open(path, "a")
    _shared(path, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_gpu(who: str, poll_s: float = 2.0) -> str | None:
    """Claim a free visible GPU for the rest of this process and make it the only one it sees;
    wait while every one is taken. None where there is nothing to claim (no GPU, or SLURM)."""
    devices = visible_devices()
    if not devices or "SLURM_JOB_ID" in os.environ:
        return None
    said_waiting = False
    while True:
        for device in devices:
            handle = _try_lock(device)
            if handle is not None:
                _held.append(handle)
                os.environ["CUDA_VISIBLE_DEVICES"] = device
                print(
                    f"{who}: GPU {device} claimed at {_now()} (of {','.join(devices)}; lock {handle.name})",
                    flush=True,
                )
                atexit.register(_report_release, f"{who}: GPU {device}")
                return device
        if not said_waiting:
            said_waiting = True
            print(
                f"{who}: every GPU ({','.join(devices)}) is in use by another doctrain job; waiting",
                flush=True,
            )
        time.sleep(poll_s)
