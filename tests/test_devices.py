"""GPU claims on a shared machine (doctrain.devices): the lock folder is shared by every user's
jobs, so nothing another user plants there may make a training write to a file of its user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.sif_image import cluster_user

CLAIM = (
    "from doctrain.devices import claim_gpu; from doctrain.errors import UserError\n"
    "try: print(claim_gpu('t'))\nexcept UserError as e: print(e)"
)


def claim(lock_dir: Path) -> str:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0", DOCTRAIN_GPU_LOCKS=str(lock_dir))
    for name in ("SLURM_JOB_ID", "LOCAL_RANK"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", CLAIM], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def shared_tmp():
    """A folder every user can enter, as /tmp is (pytest's own tmp_path is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="doctrain-devices-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a second user needs root")
def test_a_lock_folder_and_symlinked_lock_file_planted_by_another_user_change_no_file(shared_tmp):
    """Issue 25, item 1: the training opened gpu-0.lock with open(path, "a"), following a symlink,
    and chmod-ed its target 0666: the other user's next look could then rewrite the victim's file."""
    other = cluster_user()
    victim = shared_tmp / "victims-secret.txt"
    victim.write_text("mine")
    victim.chmod(0o600)
    planted = shared_tmp / "doctrain-gpu-locks"
    planted.mkdir()
    planted.chmod(0o1777)  # as a careful other user would make it, sticky
    (planted / "gpu-0.lock").symlink_to(victim)
    for path in (planted, planted / "gpu-0.lock"):
        os.lchown(path, other.pw_uid, other.pw_gid)

    said = claim(planted)
    assert f"GPU lock file {planted / 'gpu-0.lock'} cannot be opened safely" in said, said
    assert victim.stat().st_mode & 0o777 == 0o600 and victim.read_text() == "mine"

    (planted / "gpu-0.lock").unlink()
    planted.chmod(0o777)  # writable by all, not sticky: anyone could swap a lock file later
    assert "is writable by others without the sticky bit" in claim(planted)
    planted.rmdir()
    planted.symlink_to(shared_tmp)
    assert f"GPU lock folder {planted} is a symlink" in claim(planted)


def test_a_new_lock_folder_is_sticky_and_its_lock_files_readable_by_every_user(shared_tmp):
    lock_dir = shared_tmp / "locks"
    assert "['0']" in claim(lock_dir).splitlines()
    assert lock_dir.stat().st_mode & 0o7777 == 0o1777
    assert (lock_dir / "gpu-0.lock").stat().st_mode & 0o777 == 0o644
    assert "['0']" in claim(lock_dir).splitlines()  # an existing lock file is locked again, unchanged
