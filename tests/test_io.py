"""Files the stages write: atomic, readable by the group as the umask says, and the hash cache."""

import json
import os
import pickle
import subprocess
import sys

from doctrain import _io, fingerprint
from doctrain._io import HashCache


def test_published_files_follow_the_umask_not_mkstemp(tmp_path):
    """Issue 9, reproduction 7: every artefact was mode 0600 whatever the umask."""
    script = (
        "import os, sys; os.umask(int(sys.argv[2], 8)); from doctrain import _io; "
        "_io.write_text_atomic(sys.argv[1], 'x')"
    )
    for umask, mode in (("022", 0o644), ("002", 0o664), ("077", 0o600)):
        target = tmp_path / f"umask-{umask}.txt"
        subprocess.run([sys.executable, "-c", script, str(target), umask], check=True)
        assert target.stat().st_mode & 0o777 == mode, umask


def test_hash_cache_is_json_and_a_damaged_one_is_discarded_with_a_warning(tmp_path, capsys):
    """Issue 9, reproduction 6: the cache was a pickle, so a crafted file ran code at `snakemake -n`."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"content")
    cache_path = tmp_path / "cache.json"
    cache = HashCache(cache_path)
    digest = cache.sha256(data)
    cache.save()
    assert json.loads(cache_path.read_text())["files"][str(data)].startswith(digest + " ")

    wrong_shape = b'{"format": "doctrain-hash-cache/4", "files": {"x": 1}}'
    for damage in (b"\x80\x04not json", wrong_shape, b"[]"):
        cache_path.write_bytes(damage)
        reloaded = HashCache(cache_path)
        assert "is damaged; files are hashed again" in capsys.readouterr().err
        assert reloaded.sha256(data) == digest

    cache_path.write_text('{"format": "doctrain-hash-cache/0", "entries": []}')
    assert HashCache(cache_path).sha256(data) == digest
    assert capsys.readouterr().err == ""  # another version's cache is no damage

    # A pickle that would run code when loaded is only ever read as (damaged) JSON.
    marker = tmp_path / "PWNED"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cache_path.write_bytes(pickle.dumps(Exploit()))
    assert HashCache(cache_path).sha256(data) == digest
    assert not marker.exists()


def test_hash_cache_answers_none_for_what_is_not_a_readable_regular_file(tmp_path):
    cache = HashCache(tmp_path / "cache.json")
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    (tmp_path / "file").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")
    for path in ("a", "file/x", "n" * 300, "fifo", ".", "nul\0byte"):
        assert cache.sha256(tmp_path / path) is None, path


def test_stamp_records_the_digest_of_each_artefact(tmp_path):
    artefact = tmp_path / "weights.bin"
    artefact.write_bytes(b"weights")
    _io.write_stamp(tmp_path / "stamp.json", {"epoch": 3}, [artefact])
    stamp = json.loads((tmp_path / "stamp.json").read_text())
    assert stamp == {"epoch": 3, "artefacts": {str(artefact): _io.sha256_file(artefact)}}


def test_a_published_file_reaches_the_disk_before_its_name_and_its_name_before_what_follows(
    tmp_path, monkeypatch
):
    """Issue 25, item 3: the rename was not synced, so after a power loss a published file could be
    empty while the stamp written after it vouched for its bytes."""
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source, target):
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _io.write_text_atomic(tmp_path / "model.onnx", "bytes")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "model.onnx").read_text() == "bytes"


def _dataset(folder, files: int):
    images = folder / "img"
    images.mkdir(parents=True)
    rows = ["path,label"]
    for i in range(files):
        (images / f"{i}.png").write_bytes(f"image {i}".encode())
        rows.append(f"img/{i}.png,c{i % 3}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, images


def test_a_dataset_whose_files_did_not_move_is_digested_without_reading_one(tmp_path, monkeypatch):
    """Issue 25, item 5: a no-op plan looked every listed file up in a cache of every file and
    hashed the combination again; now the dataset's digest is remembered with the identity of all
    its files, and the cache of their digests is read only when one of them moved."""
    manifest, images = _dataset(tmp_path / "data", 40)
    cache_path = tmp_path / "cache.json"
    cache = HashCache(cache_path)
    first = fingerprint.dataset_digest(manifest, cache)
    cache.save()
    every_plan_loads = json.loads(cache_path.read_text())["files"]
    assert not [path for path in every_plan_loads if path.startswith(str(images))]

    read = []
    real_sha256_file = _io.sha256_file
    monkeypatch.setattr(_io, "sha256_file", lambda path: read.append(str(path)) or real_sha256_file(path))
    loaded = []
    real_read = HashCache._read
    monkeypatch.setattr(
        HashCache, "_read", classmethod(lambda cls, path: loaded.append(path) or real_read(path))
    )
    assert fingerprint.dataset_digest(manifest, HashCache(cache_path)) == first
    assert read == [] and loaded == [cache_path], "nothing moved, yet files or their cache were read"

    stat = (images / "7.png").stat()
    (images / "7.png").write_bytes(b"IMAGE 7")  # the same size, and its old mtime restored
    os.utime(images / "7.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint.dataset_digest(manifest, HashCache(cache_path)) != first
    assert read == [str(images / "7.png")]  # that file alone is read again


def test_the_identity_of_many_files_is_the_same_from_one_process_or_several(tmp_path, monkeypatch):
    manifest, images = _dataset(tmp_path / "data", 40)
    paths = [str(p) for p in sorted(images.iterdir())]
    monkeypatch.setattr(_io, "_IDENTITY_BLOCK", 3)
    monkeypatch.setattr(_io, "_FORK_BLOCKS", 1)
    forks = []
    monkeypatch.setattr(os, "fork", lambda real=os.fork: forks.append(1) or real())
    shared_out = _io.identity_of_all(paths)
    assert forks, "a list of 14 blocks on more than one core is stat-ed by helpers"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert _io.identity_of_all(paths) == shared_out
    os.utime(paths[20])  # one file touched: its ctime moves
    assert _io.identity_of_all(paths) != shared_out
    assert _io.identity_of_all(paths[:-1]) != _io.identity_of_all(paths)
