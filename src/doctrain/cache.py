"""The prepared image cache: every image decoded and resized once, then memory-mapped.

Layout of a cache folder:
  images.npy    uint8 [N, S, S, 3] BGR, one entry per validated image (S = data.image_size)
  index.parquet one row per training, validation or test sample: image (row in images.npy), variant
                (dihedral element 0..7, 0 = as is), class_id (dense per split), label, split
Dihedral expansion stores each image once; the variant is applied when a sample is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from doctrain import _io, images

# The dihedral group of the square: 4 rotations, each with and without a mirror. All 8 differ for
# a generic image (the reference recipe listed 12 variants, 4 of them repeats).
DIHEDRAL = tuple((quarter_turns, mirror) for mirror in (False, True) for quarter_turns in range(4))
VARIANT_SUFFIX = ("", "@r90", "@r180", "@r270", "@m", "@m.r90", "@m.r180", "@m.r270")


def apply_variant(image: np.ndarray, variant: int) -> np.ndarray:
    """image [H, W, C], or a stack of them [N, H, W, C] -> its dihedral variant (mirror left-right
    first, then quarter turns)."""
    quarter_turns, mirror = DIHEDRAL[variant]
    if mirror:
        image = image[..., ::-1, :]
    return np.rot90(image, quarter_turns, axes=(-3, -2))


def build_index(table: pd.DataFrame, expand_dihedral: bool) -> pd.DataFrame:
    """Samples of the validated table; training classes are multiplied by their 8 variants."""
    rows = []
    for split in table["split"].unique():  # as the manifest orders them: train, val, maybe test
        part = table[table["split"] == split]
        variants = range(len(DIHEDRAL)) if (expand_dihedral and split == "train") else (0,)
        classes: dict[str, int] = {}
        for image_row, label in zip(part.index, part["label"], strict=True):
            for variant in variants:
                name = label + VARIANT_SUFFIX[variant]
                class_id = classes.setdefault(name, len(classes))
                rows.append((int(image_row), variant, class_id, name, split))
    return pd.DataFrame(rows, columns=["image", "variant", "class_id", "label", "split"])


def build(
    validated: str | Path, images_path: str | Path, index_path: str | Path, size: int, expand_dihedral: bool
) -> dict:
    """Write the cache; return a summary. Images stream into a memory map, so RAM stays flat."""
    table = pd.read_parquet(validated)
    with _io.atomic_path(images_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(table), size, size, 3))
        for row, path in enumerate(
            tqdm(table["path"], desc="prepare: decoding and resizing", unit="img", mininterval=1)
        ):
            array[row] = images.resize(images.read_bgr(path), size)
        array.flush()
        del array
    index = build_index(table, expand_dihedral)
    with _io.atomic_path(index_path) as tmp:
        index.to_parquet(tmp, index=False)
    return {
        "image_size": size,
        "images": len(table),
        "classes": {s: int(part["class_id"].nunique()) for s, part in index.groupby("split", sort=False)},
        "samples": {s: len(part) for s, part in index.groupby("split", sort=False)},
    }


class Cache:
    """Read access to a prepared cache (memory-mapped: opening it reads nothing)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.images = np.load(self.dir / "images.npy", mmap_mode="r")
        self.index = pd.read_parquet(self.dir / "index.parquet")

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def split(self, split: str) -> pd.DataFrame:
        return self.index[self.index["split"] == split].reset_index(drop=True)

    def sample(self, image: int, variant: int) -> np.ndarray:
        """uint8 BGR [S, S, 3], contiguous (a copy: the memory map stays read-only)."""
        return np.ascontiguousarray(apply_variant(self.images[image], variant))

    def take(self, images: np.ndarray, variants: np.ndarray) -> np.ndarray:
        """uint8 BGR [N, S, S, 3] of the images at those rows of the cache in those variants, a
        variant's images at once."""
        out = np.empty((len(images), *self.images.shape[1:]), dtype=self.images.dtype)
        for variant in np.unique(variants):
            chosen = np.flatnonzero(variants == variant)
            out[chosen] = apply_variant(self.images[images[chosen]], int(variant))
        return out

    def samples(self, rows: pd.DataFrame) -> np.ndarray:
        """uint8 BGR [N, S, S, 3] of index rows (their `image` and `variant`)."""
        return self.take(rows["image"].to_numpy(), rows["variant"].to_numpy())

    def batches(self, split: str, size: int) -> Iterator[np.ndarray]:
        """A split's samples, in index order, `size` at a time (uint8 BGR [n, S, S, 3])."""
        rows = self.split(split)
        for start in range(0, len(rows), size):
            yield self.samples(rows.iloc[start : start + size])


def run_stage(
    settings: dict, validated: str | Path, images: str | Path, index: str | Path, summary: str | Path
) -> None:
    data = settings["data"]
    record = build(validated, images, index, data["image_size"], data["expand_dihedral"])
    # summary.json is written last and is the stage's stamp: it carries the digests of the two
    # large files, so downstream stages see content changes and nothing else.
    _io.write_stamp(summary, record, [images, index])
