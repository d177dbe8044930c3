"""File helpers shared by the stages: atomic publication and content hashes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files mode 0600 whatever the umask; published files get the mode any other new
# file would get, so a group sharing a cluster filesystem can read the models.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds,
    so a crash or a kill never leaves a half-written file under the published name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # The bytes reach the disk before the name does, and the rename before anything that vouches
        # for the file (its stamp): after a power loss, a published name holds what its stamp says.
        _fsync(tmp_path)
        os.replace(tmp_path, target)
        _fsync(target.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json_atomic(target: str | Path, value: Any, sort_keys: bool = True) -> None:
    """`sort_keys=False` keeps the order of `value`, e.g. a summary before long curves."""
    write_text_atomic(target, json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")


def write_if_changed(target: str | Path, text: str) -> bool:
    """Write only when the content differs, so an unchanged file keeps its mtime."""
    target = Path(target)
    if target.exists() and target.read_text() == text:
        return False
    write_text_atomic(target, text)
    return True


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_stamp(stamp: str | Path, record: dict, artefacts: list[str | Path]) -> None:
    """Write a stage's stamp: `record` plus the sha256 of each artefact it vouches for, keyed by the
    path the stage was given. It is written last, so it exists only for a finished stage, and the
    workflow checks the artefacts against it before trusting them (doctrain.integrity)."""
    digests = {os.fspath(path): sha256_file(path) for path in artefacts}
    write_json_atomic(stamp, dict(record, artefacts=digests))
    if HASH_CACHE.parent.is_dir():  # in a checkout the workflow runs in: the next plan reads no byte
        cache = HashCache(HASH_CACHE)
        for path, digest in digests.items():
            cache.remember(path, digest)
        cache.save()


HASH_CACHE = Path(".doctrain") / "hash-cache.json"  # relative to the workflow's working directory


def _identity(st: os.stat_result) -> int:
    """(size, mtime_ns, ctime_ns, inode) as one 64-bit integer: Python's hash of a tuple of ints,
    which is the same in every process (only str and bytes hashes are salted). Cheap to store, load
    and compare for 100,000 files; two different identities meet by chance once in about 2**64
    changes, and a Python whose hash differs only costs one more reading of each file."""
    return hash((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))


class HashCache:
    """sha256 of files, remembered by (size, mtime_ns, ctime_ns, inode): a file is re-read only when
    one of these changed. ctime matters: an in-place edit that restores the old mtime still moves it.

    Stored as JSON, one "sha256 identity" string per path: as fast to load as a pickle, and unlike
    one it cannot run code. A damaged file is discarded with a warning."""

    FORMAT = "doctrain-hash-cache/3"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries, state = self._read(self.path)
        self.dirty = state != "sound"  # rewritten unless it loads as it is
        if state == "damaged":
            print(f"doctrain: warning: {self.path} is damaged; files are hashed again", file=sys.stderr)

    @classmethod
    def _read(cls, path: Path) -> tuple[dict[str, str], str]:
        """The stored entries and whether the file was sound, missing, of another doctrain version
        (files are hashed again, nothing is wrong) or damaged."""
        try:
            with open(path, "rb") as handle:
                stored = json.load(handle)
        except FileNotFoundError:
            return {}, "sound"
        except (OSError, ValueError):
            return {}, "damaged"
        if isinstance(stored, dict) and "format" in stored and stored["format"] != cls.FORMAT:
            return {}, "other version"
        if (
            isinstance(stored, dict)
            and isinstance(stored.get("files"), dict)
            and all(isinstance(v, str) for v in stored["files"].values())
        ):
            return stored["files"], "sound"
        return {}, "damaged"

    def sha256(self, path: str | Path) -> str | None:
        """The file's digest, or None when there is no readable regular file at `path`."""
        key = os.fspath(path)
        try:
            st = os.stat(key)
        except (OSError, ValueError):  # missing, a symlink loop, ENOTDIR, a name too long, a NUL
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        identity = str(_identity(st))
        cached = self.entries.get(key)
        if cached is not None and cached[65:] == identity and cached[64:65] == " ":
            return cached[:64]
        try:
            digest = sha256_file(key)
        except OSError:
            return None
        self.entries[key] = f"{digest} {identity}"
        self.dirty = True
        return digest

    def remember(self, path: str | Path, digest: str) -> None:
        """Record a digest just computed elsewhere (a stage hashing what it wrote)."""
        self.entries[os.fspath(path)] = f"{digest} {_identity(os.stat(path))}"
        self.dirty = True

    def save(self) -> None:
        """Merge what this process learnt into the file, under a lock: two runs in one checkout
        each add their entries instead of the last writer replacing the other's."""
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {**self._read(self.path)[0], **self.entries}  # what others saved since we loaded
            with atomic_path(self.path) as tmp, open(tmp, "w") as handle:
                json.dump({"format": self.FORMAT, "files": merged}, handle, separators=(",", ":"))
        self.dirty = False
