"""Dataset manifests: read, build from a folder-per-class tree, and validate before any training.

Format (CSV or Parquet), one row per image:
  path    image file, relative to the manifest's folder or absolute   (required)
  label   class name                                                   (required)
  split   train, val, calibration or test                              (optional)
  sha256  hex digest of the file's bytes, checked when given           (optional)
Without a split column, about a fifth of the labels (chosen by a hash of the label, so the choice
is stable) are held out for validation: validation is zero-shot, on classes never trained on.
Validation selects the checkpoint; the calibration split chooses the threshold the model ships
with, on pairs that did not select it. Without calibration rows, half of the validation classes
(picked by a hash of the label) become the calibration split, where there are enough of them.
Test rows (never used to train, select or calibrate) are evaluated once, by the shipped model.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from doctrain import _io, images
from doctrain.errors import UserError

REQUIRED = ("path", "label")
OPTIONAL = ("split", "sha256")
# Calibration and test splits are optional: the first chooses the shipped threshold, the second is
# only ever evaluated, once, by the shipped model.
SPLITS = ("train", "val", "calibration", "test")
REQUIRED_SPLITS = ("train", "val")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_LISTED = 200
MAX_PIXELS = 50_000_000  # the schema's default of data.max_image_pixels, for use without a config


def read_table(manifest: str | Path) -> pd.DataFrame:
    """The manifest as a table of strings (empty cells as ""), or UserError when unreadable."""
    manifest = Path(manifest)
    suffix = manifest.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(manifest)
        else:
            raise UserError(f"{manifest}: a manifest must be a .csv or .parquet file")
    except FileNotFoundError:
        raise UserError(f"manifest {manifest} does not exist") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise UserError(f"{manifest} cannot be read as a manifest: {exc}") from None
    return frame


def resolve(manifest: str | Path, path: str) -> Path:
    path = Path(path)
    return path if path.is_absolute() else Path(manifest).parent / path


def _where(manifest: Path, row: int) -> str:
    # CSV users look for a line number (header is line 1); Parquet users for a row index.
    if manifest.suffix.lower() == ".csv":
        return f"{manifest}:{row + 2}"
    return f"{manifest} row {row}"


def _column_problems(manifest: Path, frame: pd.DataFrame) -> list[str]:
    problems = []
    for column in REQUIRED:
        if column not in frame.columns:
            problems.append(f"{manifest}: required column '{column}' is missing")
    unknown = [c for c in frame.columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        problems.append(f"{manifest}: unknown column(s) {unknown}; allowed are {list(REQUIRED + OPTIONAL)}")
    for column in REQUIRED + OPTIONAL:
        if column in frame.columns and not all(isinstance(v, str) for v in frame[column]):
            kinds = sorted({type(v).__name__ for v in frame[column] if not isinstance(v, str)})
            problems.append(f"{manifest}: column '{column}' must hold text, found {', '.join(kinds)}")
    return problems


_SPLIT_HINT = (
    "; without a 'split' column about a fifth of the labels, picked by a hash of the label, are held out"
    " for validation: add a 'split' column, or more classes"
)


def _held_out(label: str) -> bool:
    return int(hashlib.sha256(label.encode()).hexdigest()[:8], 16) % 5 == 0


def calibration_from_validation(splits: list[str], labels: list[str], min_classes: int) -> list[str]:
    """Where no row is in the calibration split: half of the validation classes (the first half in
    the order of their labels' sha256, so the choice is stable and independent of row order) become
    the calibration split, provided both halves keep `min_classes` classes. Fewer pairs for each
    purpose is the cost of a threshold measured on pairs that did not select the checkpoint."""
    val = sorted({lb for lb, sp in zip(labels, splits, strict=True) if sp == "val"}, key=_label_order)
    if "calibration" in splits or len(val) < 2 * min_classes:
        return splits
    moved = set(val[: len(val) // 2])
    return [
        "calibration" if sp == "val" and lb in moved else sp for sp, lb in zip(splits, labels, strict=True)
    ]


def _label_order(label: str) -> str:
    return hashlib.sha256(f"calibration:{label}".encode()).hexdigest()


@dataclass
class _FileCheck:
    sha256: str | None = None
    height: int = 0
    width: int = 0
    problem: str | None = None


_FILE_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _check_file(path: Path, max_pixels: int) -> _FileCheck:
    try:
        # stat, not open: opening a FIFO would block for ever. It follows symlinks, so a loop, a path
        # through a regular file or an over-long name is an OSError here, reported like any other.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            return _FileCheck(problem=f"{path} is {_FILE_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}")
        data = path.read_bytes()
    except FileNotFoundError:
        return _FileCheck(problem=f"file {path} does not exist")
    except (OSError, ValueError) as exc:
        return _FileCheck(problem=f"file {path} cannot be read ({getattr(exc, 'strerror', None) or exc})")
    sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        return _FileCheck(sha256, problem=f"file {path} is empty (0 bytes)")
    size = images.header_size(data)
    if size is None:
        return _FileCheck(sha256, problem=f"file {path} does not decode as an image")
    width, height = size
    if width * height > max_pixels:
        return _FileCheck(
            sha256,
            problem=f"file {path} is {width} x {height} = {width * height / 1e6:.1f} MP, above "
            f"data.max_image_pixels ({max_pixels / 1e6:g} MP)",
        )
    image = images.decode_bgr(data)
    if image is None:
        return _FileCheck(sha256, problem=f"file {path} does not decode as an image")
    return _FileCheck(sha256, image.shape[0], image.shape[1])


def validate(
    manifest: str | Path, min_classes: int = 2, max_pixels: int = MAX_PIXELS, threads: int = 8
) -> pd.DataFrame:
    """Check every row and return the validated table (resolved path, label, split, sha256, size).

    All problems are collected and raised together as one UserError, each naming file and row."""
    manifest = Path(manifest)
    frame = read_table(manifest)
    problems = _column_problems(manifest, frame)
    if problems:
        raise UserError("manifest problems:\n  " + "\n  ".join(problems))
    if frame.empty:
        raise UserError(f"{manifest}: the manifest has no rows")

    paths = [resolve(manifest, p) for p in frame["path"]]
    with ThreadPoolExecutor(threads) as pool:
        checks = list(
            tqdm(
                pool.map(functools.partial(_check_file, max_pixels=max_pixels), paths),
                total=len(paths),
                desc="validate: reading images",
                unit="img",
                mininterval=1,
            )
        )

    splits = (
        list(frame["split"])
        if "split" in frame.columns
        else ["val" if _held_out(label) else "train" for label in frame["label"]]
    )
    if all(split in SPLITS for split in splits):  # else each wrong split is a row's problem below
        splits = calibration_from_validation(splits, list(frame["label"]), min_classes)
    first_row_of: dict[str, int] = {}
    for row, (raw_path, label, split, path, check) in enumerate(
        zip(frame["path"], frame["label"], splits, paths, checks, strict=True)
    ):
        where = _where(manifest, row)
        if not raw_path.strip():
            problems.append(f"{where}: empty path")
            continue
        if not label.strip():
            problems.append(f"{where}: empty label")
        if split not in SPLITS:
            problems.append(f"{where}: split '{split}' is not one of {list(SPLITS)}")
        key = os.path.realpath(path)  # unlike Path.resolve, never raises (a symlink loop is a row problem)
        if key in first_row_of:
            problems.append(
                f"{where}: duplicate path {raw_path} (first listed at {_where(manifest, first_row_of[key])})"
            )
        first_row_of.setdefault(key, row)
        if check.problem:
            problems.append(f"{where}: {check.problem}")
        elif "sha256" in frame.columns and frame["sha256"].iloc[row]:
            expected = frame["sha256"].iloc[row].strip().lower()
            if not _SHA256.match(expected):
                problems.append(f"{where}: sha256 '{expected}' is not a 64-digit hex digest")
            elif expected != check.sha256:
                problems.append(
                    f"{where}: sha256 mismatch for {raw_path} (manifest {expected[:12]}…, "
                    f"file {check.sha256[:12]}…)"
                )

    table = pd.DataFrame(
        {
            "path": [os.path.realpath(p) for p in paths],
            "label": list(frame["label"]),
            "split": splits,
            "sha256": [c.sha256 for c in checks],
            "height": [c.height for c in checks],
            "width": [c.width for c in checks],
        }
    )
    if not problems:
        automatic = "split" not in frame.columns
        for split in SPLITS:
            classes = table.loc[table["split"] == split, "label"].nunique()
            if classes < min_classes and (classes or split in REQUIRED_SPLITS):
                problems.append(
                    f"{manifest}: split '{split}' has {classes} class(es), "
                    f"at least {min_classes} are needed (data.min_classes_per_split)"
                    + _SPLIT_HINT
                    * automatic
                )
    if problems:
        shown = problems[:_MAX_LISTED]
        more = f"\n  … and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise UserError(f"{len(problems)} manifest problem(s):\n  " + "\n  ".join(shown) + more)
    return table


def content_digest(table: pd.DataFrame) -> str:
    """Identity of a dataset by content (labels, splits, file digests), not by where it lies."""
    rows = sorted(zip(table["label"], table["split"], table["sha256"], strict=True))
    return _io.sha256_text("\n".join("\t".join(r) for r in rows))


def build(root: str | Path) -> pd.DataFrame:
    """Manifest rows for a folder-per-class tree: ROOT/<label>/<image>, or ROOT/train|val/<label>/<image>.
    Paths are relative to ROOT (write the manifest into ROOT, or pass absolute paths yourself)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    rows = []
    for base, split in [(d, d.name) for d in split_dirs] or [(root, None)]:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for file in sorted(class_dir.rglob("*")):
                if file.suffix.lower() in images.IMAGE_SUFFIXES:
                    row = {"path": file.relative_to(root).as_posix(), "label": class_dir.name}
                    if split:
                        row["split"] = split
                    rows.append(row)
    if not rows:
        raise UserError(f"{root} holds no images in class folders ({', '.join(images.IMAGE_SUFFIXES)})")
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, out: str | Path) -> None:
    out = Path(out)
    with _io.atomic_path(out) as tmp:
        if out.suffix.lower() in (".parquet", ".pq"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def run_stage(settings: dict, manifest: str | Path, validated: str | Path, report: str | Path) -> None:
    """Validate the manifest; publish the validated table and a short report."""
    data = settings["data"]
    table = validate(manifest, data["min_classes_per_split"], data["max_image_pixels"])
    summary = {
        split: {
            "images": int((table["split"] == split).sum()),
            "classes": int(table.loc[table["split"] == split, "label"].nunique()),
        }
        for split in SPLITS
    }
    with _io.atomic_path(validated) as tmp:
        table.to_parquet(tmp, index=False)
    # The report is the stage's stamp, written last.
    _io.write_stamp(report, {"dataset_sha256": content_digest(table), "splits": summary}, [validated])
