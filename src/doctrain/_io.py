"""File helpers shared by the stages: atomic publication and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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
    record = dict(record, artefacts={os.fspath(path): sha256_file(path) for path in artefacts})
    write_json_atomic(stamp, record)
