"""What each pipeline stage reads, as readable values Snakemake can compare.

A stage reruns if and only if one of these changed: the config keys it reads (canonical JSON),
the library code it runs (per-module digests of the AST without docstrings, over the modules it
imports transitively), the software environment (envs/requirements.txt), and the content of its
inputs (small stamp files holding sha256 digests of large artefacts, and for the validation stage a
digest of the manifest and every image it lists, cached by file identity so no-op runs stay fast).
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

from doctrain import _io
from doctrain._io import HASH_CACHE, HashCache
from doctrain.config import canonical_json, flatten, get_key
from doctrain.stages import DATA_STAGES, MODEL_STAGES, STAGES

PACKAGE_DIR = Path(__file__).resolve().parent
REQUIREMENTS = PACKAGE_DIR.parents[1] / "envs" / "requirements.txt"


def dotted_settings(config: dict, stage: str) -> dict:
    """The stage's settings, one entry per leaf (`optimizer.lr`, not the whole `optimizer` block)."""
    return {k: v for key in STAGES[stage].keys for k, v in flatten(key, get_key(config, key)).items()}


def settings_json(config: dict, stage: str) -> str:
    """The stage's settings as one canonical JSON line keyed by dotted path, so that Snakemake's
    reason lines read like `{"optimizer.lr":0.001}`."""
    return canonical_json(dotted_settings(config, stage))


def data_settings_json(config: dict) -> str:
    """Everything that decides the data stages' results: experiments that agree on it share them."""
    return canonical_json({stage: dotted_settings(config, stage) for stage in DATA_STAGES})


def nest(dotted: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}: the shape the stages read their settings in."""
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def stage_settings(config: dict, stage: str) -> dict:
    """Exactly the part of the config the stage reads."""
    return nest(dotted_settings(config, stage))


@functools.cache
def _module_path(module: str) -> Path:
    relative = module.split(".")[1:]
    candidate = PACKAGE_DIR.joinpath(*relative)
    return candidate / "__init__.py" if candidate.is_dir() else candidate.with_suffix(".py")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def _imported_modules(tree: ast.AST, module: str) -> set[str]:
    found = set()
    package = module.rsplit(".", 1)[0] if not _module_path(module).name == "__init__.py" else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("doctrain."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package] + ([base] if base else []))
            if base == "doctrain":
                found.update(f"doctrain.{a.name}" for a in node.names)
            elif base.startswith("doctrain."):
                found.add(base)
    return {m for m in found if _module_path(m).exists()}


@functools.cache
def _module_digest_and_imports(module: str) -> tuple[str, frozenset[str]]:
    tree = ast.parse(_module_path(module).read_text())
    imports = _imported_modules(tree, module)
    dump = ast.dump(_strip_docstrings(tree), annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest()[:12], frozenset(imports)


# ast.dump's text may change between Python versions: each version remembers its own digests.
_CODE_DIGEST = f"code-digest-py{sys.version_info.major}.{sys.version_info.minor}"


def _remembered_digest_and_imports(module: str, cache: HashCache | None) -> tuple[str, frozenset[str]]:
    """As `_module_digest_and_imports`, remembered in `cache` by the module's content (parsing
    every module a plan needs costs ~0.1 s; looking them up, a stat each)."""
    if cache is None:
        return _module_digest_and_imports(module)

    def compute() -> str:
        digest, imports = _module_digest_and_imports(module)
        return " ".join([digest, *sorted(imports)])

    digest, *imports = cache.derived(_module_path(module), _CODE_DIGEST, compute).split()
    return digest, frozenset(imports)


def code_digests(stage: str, cache: HashCache | None = None) -> dict[str, str]:
    """Digest of every doctrain module the stage's module imports, directly or not.
    Comments and docstrings do not count; any other edit does."""
    return json.loads(code_json(stage, cache))


def module_digests(top: str, cache: HashCache | None = None) -> dict[str, str]:
    """Digest of `top` and every doctrain module it imports, directly or not."""
    pending, digests = [top], {}
    while pending:
        module = pending.pop()
        if module in digests:
            continue
        digests[module], imports = _remembered_digest_and_imports(module, cache)
        pending.extend(imports)
    return dict(sorted(digests.items()))


@functools.cache  # a plan asks once per stage and experiment
def code_json(stage: str, cache: HashCache | None = None) -> str:
    return canonical_json(module_digests(STAGES[stage].module, cache))


@functools.cache
def environment_digest() -> str:
    """Digest of the pinned software environment (blank lines and comments do not count). An
    installed doctrain, away from the checkout's envs/, digests what is installed instead."""
    if REQUIREMENTS.exists():
        lines = [ln.split("#")[0].strip() for ln in REQUIREMENTS.read_text().splitlines()]
    else:
        lines = [f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()]
    return _io.sha256_text("\n".join(sorted(ln for ln in lines if ln)))


def _listed_paths(manifest: Path) -> list[str]:
    """The files a manifest lists, resolved against its folder ([] when it cannot be read: the
    validation stage reports why). Kept free of pandas: it runs on every Snakemake invocation."""
    try:
        if manifest.suffix.lower() == ".csv":
            with open(manifest, newline="") as handle:
                # csv.reader, not DictReader: 4x faster over 100,000 rows. Blank lines are skipped
                # and short rows have no path, as DictReader would have it.
                rows = csv.reader(handle)
                column = next(rows, []).index("path")
                paths = [row[column] if len(row) > column else "" for row in rows if row]
        else:
            import pyarrow.parquet as pq

            paths = [str(p) for p in pq.read_table(manifest, columns=["path"]).column("path").to_pylist()]
    except (OSError, ValueError, KeyError, csv.Error):
        return []
    # Joined by hand rather than by os.path.join or pathlib: this runs for every listed file on every
    # invocation (100,000 joins: 56 ms, concatenations: 15 ms).
    folder = os.fspath(manifest.parent) + os.sep
    return [p if p.startswith(os.sep) else folder + p for p in paths]


def dataset_identity(manifest: str | Path) -> int:
    """The identity of the manifest and of every file it lists (`_io.identity_of_all`): what a
    dataset's digest is remembered with."""
    manifest = Path(manifest)
    # The manifest's identity is taken before it is read: an edit in between then cannot be
    # remembered as the content it replaced.
    manifest_identity = _io.identity_of_all([manifest])
    return hash((manifest_identity, _io.identity_of_all(_listed_paths(manifest))))


def dataset_digest(manifest: str | Path, cache: HashCache, identity: int | None = None) -> dict | None:
    """Digest of the manifest and of every file it lists (None when the manifest does not exist yet).
    Unreadable manifests still get a digest of their bytes: the validation stage reports them.
    While neither the manifest nor any listed file moved since the digest was remembered (their
    `identity`, taken now unless given), no file is read: a no-op plan over 100,000 images costs
    their stats. The files are read after the identity is taken, so an edit in between only makes
    the next plan look again."""
    manifest = Path(manifest)
    identity = dataset_identity(manifest) if identity is None else identity
    known = cache.dataset(manifest, identity)
    if known is not None:
        return known
    from tqdm import tqdm  # here, not above: a no-op plan never gets this far (78 ms of imports)

    files = cache.files_of(manifest)
    manifest_sha = files.sha256(manifest)
    if manifest_sha is None:
        return None
    paths = _listed_paths(manifest)
    combined = hashlib.sha256(manifest_sha.encode())
    # Shown only when hashing takes a while: the first plan over a large dataset reads every file.
    listed = tqdm(paths, desc=f"doctrain: hashing what {manifest} lists", unit="file", delay=2, mininterval=1)
    for path in listed:
        combined.update(f"{path}\0{files.sha256(path)}\n".encode())
    digest = {
        "manifest": str(manifest),
        "manifest_sha256": manifest_sha,
        "files": len(paths),
        "sha256": combined.hexdigest(),
    }
    cache.remember_dataset(manifest, identity, digest)
    return digest


def lineage(config: dict, cache: HashCache | None = None) -> dict:
    """Digests of everything that shapes an exported model: the settings and the code of every
    stage up to export, and the software environment (recorded in the ONNX metadata)."""
    settings = {stage: settings_json(config, stage) for stage in MODEL_STAGES}
    code = {stage: code_json(stage, cache) for stage in MODEL_STAGES}
    return {
        "config_sha256": _io.sha256_text(canonical_json(settings)),
        "code_sha256": _io.sha256_text(canonical_json(code)),
        "environment_sha256": environment_digest(),
    }


def dataset_fingerprint(
    manifest: str | Path, cache: HashCache | None = None, identity: int | None = None
) -> str | None:
    """The text of a dataset fingerprint file (None while the manifest does not exist). Without a
    cache given, the checkout's own is used and what it learnt is saved (the workflow's job)."""
    own_cache = cache is None
    cache = cache or HashCache(HASH_CACHE)
    digest = dataset_digest(manifest, cache, identity)
    if own_cache:
        cache.save()
    return None if digest is None else canonical_json(digest) + "\n"
