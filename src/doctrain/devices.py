"""Which GPUs a training job uses on a workstation.

Snakemake counts GPUs (`--resources gpu=4` runs at most four trainings that ask for one) but never
says which: every job would see all of them and Lightning would put each on the first. So a
training that may use GPUs claims as many of the visible devices (CUDA_VISIBLE_DEVICES, else every
device torch sees) as it trains on, with an exclusive lock on a file per device, and then sees only
those. The kernel drops the lock when the process ends, however it ends, so a killed job frees its
devices at once. Under SLURM the scheduler has already given the job its GPUs, and the other ranks
of a training in several processes see what their launcher gave them: nothing is claimed.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import stat
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from doctrain.errors import UserError

# Shared by every doctrain job on this machine, whichever checkout or user runs it.
LOCK_DIR = Path(os.environ.get("DOCTRAIN_GPU_LOCKS", Path(tempfile.gettempdir()) / "doctrain-gpu-locks"))
_held: list[IO] = []  # open lock files: the locks live as long as the process
_claimed: list[str] = []  # the devices they lock, which a second training in this process reuses


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


def _lock_folder() -> Path:
    """The shared lock folder, made sticky and writable by all where this process creates it, and
    refused where another user could swap the lock files in it: a symlink, not a folder, or
    writable by others without the sticky bit."""
    try:
        LOCK_DIR.mkdir(parents=True)
        LOCK_DIR.chmod(0o1777)  # the umask narrowed mkdir's mode; this process owns the new folder
    except FileExistsError:
        pass
    found = LOCK_DIR.lstat()
    if stat.S_ISLNK(found.st_mode) or not stat.S_ISDIR(found.st_mode):
        problem = "is a symlink" if stat.S_ISLNK(found.st_mode) else "is not a folder"
    elif found.st_mode & 0o022 and not found.st_mode & stat.S_ISVTX:
        problem = "is writable by others without the sticky bit, so anyone can replace its lock files"
    else:
        return LOCK_DIR
    raise UserError(
        f"GPU lock folder {LOCK_DIR} {problem}; remove it (or set DOCTRAIN_GPU_LOCKS to a folder of yours)"
    )


def _open_lock_file(path: Path) -> int:
    """A descriptor to lock: the file created here (readable by every user's jobs, which lock it
    through a read-only descriptor), or the one another job created, opened without following a
    symlink and never changed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.fchmod(fd, 0o644)  # whatever the umask, other users' jobs must be able to open it
        return fd
    except (FileExistsError, PermissionError):  # another job's, or a folder this user cannot write
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:  # ELOOP: a symlink planted where a lock file belongs
        raise UserError(
            f"GPU lock file {path} cannot be opened safely ({exc.strerror}); remove it, or set "
            "DOCTRAIN_GPU_LOCKS to a folder of yours"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"GPU lock file {path} is not a regular file; remove it")
    return fd


def _lock_path(device: str) -> Path:
    return LOCK_DIR / f"gpu-{device}.lock"


def _try_lock(device: str) -> IO | None:
    _lock_folder()
    path = _lock_path(device)
    handle = os.fdopen(_open_lock_file(path), "rb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _claim_all(devices: list[str], count: int) -> list[IO] | None:
    """Locks on `count` free devices, or none at all (holding some while waiting for more could
    leave two jobs each waiting for the other's)."""
    held = []
    for device in devices:
        handle = _try_lock(device)
        if handle is not None:
            held.append((device, handle))
            if len(held) == count:
                return held
    for _, handle in held:
        handle.close()
    return None


def claim_gpu(who: str, count: int = 1, poll_s: float = 2.0) -> list[str] | None:
    """Claim `count` free visible GPUs for the rest of this process and make them the only ones it
    (and the ranks it starts) sees; wait while too few are free. None where there is nothing to
    claim (no GPU, SLURM, or a rank that a launcher started)."""
    if len(_claimed) >= count:
        return _claimed[:count]
    devices = visible_devices()
    if not devices or "SLURM_JOB_ID" in os.environ or "LOCAL_RANK" in os.environ:
        return None
    if count > len(devices):
        raise UserError(
            f"{who}: trainer.devices asks for {count} GPUs and this machine shows {len(devices)} "
            f"({','.join(devices)}); lower trainer.devices or run where there are more"
        )
    said_waiting = False
    while True:
        held = _claim_all(devices, count)
        if held is not None:
            claimed = ",".join(device for device, _ in held)
            _held.extend(handle for _, handle in held)
            _claimed.extend(device for device, _ in held)
            os.environ["CUDA_VISIBLE_DEVICES"] = claimed
            noun = "GPU" if count == 1 else "GPUs"
            print(
                f"{who}: {noun} {claimed} claimed at {_now()} (of {','.join(devices)}; "
                f"lock {', '.join(str(_lock_path(device)) for device, _ in held)})",
                flush=True,
            )
            atexit.register(_report_release, f"{who}: {noun} {claimed}")
            return [device for device, _ in held]
        if not said_waiting:
            said_waiting = True
            listed = ",".join(devices)
            busy = (
                f"every GPU ({listed}) is in use by another doctrain job"
                if count == 1
                else f"fewer than {count} of the GPUs {listed} are free of other doctrain jobs"
            )
            print(f"{who}: {busy}; waiting", flush=True)
        time.sleep(poll_s)
