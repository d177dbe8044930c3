"""File helpers shared by the stages: atomic publication and content hashes."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
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


# identity_of_all stats its paths in blocks of this many, each block's identity hashed on its own,
# so the answer is the same however the blocks are shared out: one share per core, each of at least
# _FORK_BLOCKS blocks, all but the first in a forked helper (100,000 stats on a 2-core machine:
# 0.28-0.29 s in one process, 0.21-0.23 s with one helper).
_IDENTITY_BLOCK = 8192
_FORK_BLOCKS = 3


def identity_of_all(paths: list[str | Path]) -> int:
    """The identities of all the paths, in order, as one integer (as `_identity`): any of them
    edited, replaced, made or removed changes it. One stat a path, nothing read; a large list is
    stat-ed by several processes at once, one per core."""
    blocks = [paths[i : i + _IDENTITY_BLOCK] for i in range(0, len(paths), _IDENTITY_BLOCK)]
    shares = min(len(os.sched_getaffinity(0)), len(blocks) // _FORK_BLOCKS) or 1
    bounds = [len(blocks) * i // shares for i in range(shares + 1)]
    parts = [blocks[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]
    helpers = [in_a_child(_identities_of_blocks, part) for part in parts[1:]]
    identities = _identities_of_blocks(parts[0]) if parts else []
    for helper in helpers:
        identities += helper()
    return hash(tuple(identities))


def _identities_of_blocks(blocks: list[list[str | Path]]) -> list[int]:
    identities = []
    for block in blocks:
        found = []
        for path in block:
            try:
                st = os.stat(path)
            except (OSError, ValueError):  # as HashCache.sha256: missing, a loop, a name too long, a NUL
                found.append(0)
                continue
            found.append((st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        identities.append(hash(tuple(found)))
    return identities


def in_a_child(compute: Callable[[Any], Any], argument: Any) -> Callable[[], Any]:
    """Start compute(argument) in a forked process; the function returned waits for its answer (JSON
    text through a pipe), and computes it here if the child could not. The child runs nothing of its
    parent's but `compute` (no exit handlers, no buffered output): planning runs inside Snakemake."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return lambda: compute(argument)
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return lambda: compute(argument)
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            with open(write_end, "w") as answer:
                json.dump(compute(argument), answer)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)

    @functools.cache
    def answer() -> Any:
        with open(read_end) as pipe:
            text = pipe.read()
        _, status = os.waitpid(pid, 0)
        return json.loads(text) if status == 0 else compute(argument)

    return answer


def _is_latest_entry(value: Any) -> bool:
    return (
        isinstance(value, dict) and isinstance(value.get("key"), str) and isinstance(value.get("value"), str)
    )


def _is_dataset_entry(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("identity"), int)
        and isinstance(value.get("digest"), dict)
    )


class HashCache:
    """sha256 of files, remembered by (size, mtime_ns, ctime_ns, inode): a file is re-read only when
    one of these changed. ctime matters: an in-place edit that restores the old mtime still moves it.

    Three more kinds of entry. A dataset's digest (a manifest and the files it lists), remembered with
    `identity_of_all` of them: while none moved, planning stats them and reads none; their own
    digests, 100,000 entries for a large dataset, are kept in a cache file of the dataset's
    (`files_of`), loaded only when one of them moved. And values derived from a file's content
    (`derived`, e.g. a module's code digest), remembered by that content's digest. And the last value
    of a name (`remembered`, e.g. the validated experiments), with the digest of all it depends on.

    Stored as JSON, one "sha256 identity" string per path: as fast to load as a pickle, and unlike
    one it cannot run code. A damaged file is discarded with a warning."""

    FORMAT = "doctrain-hash-cache/4"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        stored, state = self._read(self.path)
        self.entries, self.datasets, self.memo = stored["files"], stored["datasets"], stored["derived"]
        self.latest = stored["latest"]
        self.dirty = state != "sound"  # rewritten unless it loads as it is
        self._dataset_files: dict[str, HashCache] = {}
        if state == "damaged":
            print(f"doctrain: warning: {self.path} is damaged; files are hashed again", file=sys.stderr)

    @classmethod
    def _read(cls, path: Path) -> tuple[dict[str, dict], str]:
        """The stored maps and whether the file was sound, missing, of another doctrain version
        (files are hashed again, nothing is wrong) or damaged."""
        empty = {"files": {}, "datasets": {}, "derived": {}, "latest": {}}
        try:
            with open(path, "rb") as handle:
                stored = json.load(handle)
        except FileNotFoundError:
            return empty, "sound"
        except (OSError, ValueError):
            return empty, "damaged"
        if isinstance(stored, dict) and "format" in stored and stored["format"] != cls.FORMAT:
            return empty, "other version"
        if (
            isinstance(stored, dict)
            and all(isinstance(stored.get(name), dict) for name in empty)
            and all(isinstance(v, str) for v in stored["files"].values())
            and all(isinstance(v, str) for v in stored["derived"].values())
            and all(_is_latest_entry(v) for v in stored["latest"].values())
            and all(_is_dataset_entry(v) for v in stored["datasets"].values())
        ):
            return {name: stored[name] for name in empty}, "sound"
        return empty, "damaged"

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

    def dataset(self, manifest: str | Path, identity: int) -> dict | None:
        """The digest remembered for the dataset of `manifest` if its files' identity is `identity`."""
        known = self.datasets.get(os.fspath(manifest))
        return known["digest"] if known is not None and known["identity"] == identity else None

    def remember_dataset(self, manifest: str | Path, identity: int, digest: dict) -> None:
        self.datasets[os.fspath(manifest)] = {"identity": identity, "digest": digest}
        self.dirty = True

    def files_of(self, manifest: str | Path) -> HashCache:
        """The cache of the digests of the files `manifest` lists, in a file of its own."""
        key = os.fspath(manifest)
        if key not in self._dataset_files:
            name = f"{sha256_text(key)[:16]}.json"
            self._dataset_files[key] = HashCache(self.path.with_suffix(".datasets") / name)
        return self._dataset_files[key]

    def derived(self, path: str | Path, kind: str, compute: Callable[[], str]) -> str:
        """`compute()`, a value that depends on nothing but the content of the file at `path` (which
        must exist), remembered by `kind` and that content's digest."""
        key = f"{kind}:{self.sha256(path)}"
        if key not in self.memo:
            self.memo[key] = compute()
            self.dirty = True
        return self.memo[key]

    def remembered(self, name: str, key: str, compute: Callable[[], str]) -> str:
        """`compute()`, remembered under `name` while `key` (the text of everything it depends on)
        stays the same: one value a name, the last one computed."""
        key_digest = sha256_text(key)
        known = self.latest.get(name)
        if known is None or known["key"] != key_digest:
            known = self.latest[name] = {"key": key_digest, "value": compute()}
            self.dirty = True
        return known["value"]

    def save(self) -> None:
        """Merge what this process learnt into the file, under a lock: two runs in one checkout
        each add their entries instead of the last writer replacing the other's."""
        for files in self._dataset_files.values():
            files.save()
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            saved = self._read(self.path)[0]  # what others saved since we loaded
            mine = {
                "files": self.entries,
                "datasets": self.datasets,
                "derived": self.memo,
                "latest": self.latest,
            }
            merged = {name: {**saved[name], **entries} for name, entries in mine.items()}
            with atomic_path(self.path) as tmp, open(tmp, "w") as handle:
                json.dump({"format": self.FORMAT, **merged}, handle, separators=(",", ":"))
        self.dirty = False
