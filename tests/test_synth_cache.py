import numpy as np
import pandas as pd

from doctrain import cache, synth
from doctrain.manifest import validate

SETTINGS = {
    "seed": 3,
    "train_templates": 4,
    "instances_per_train_template": 1,
    "val_templates": 2,
    "photos_per_val_template": 2,
    "test_templates": 0,
    "width": 96,
}


def test_synth_is_deterministic_and_zero_shot(tmp_path):
    first = synth.render_dataset(tmp_path / "a", SETTINGS | {"test_templates": 2})
    second = synth.render_dataset(tmp_path / "b", SETTINGS | {"test_templates": 2})
    pd.testing.assert_frame_equal(first, second)  # same file digests: byte-identical images
    train, val, test = (set(first.loc[first["split"] == s, "label"]) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (4, 2, 2) and not train & val and not (train | val) & test
    assert not set(first.loc[first["split"] == "test", "sha256"]) & set(
        first.loc[first["split"] != "test", "sha256"]
    )
    # a test split leaves the other splits' images as they were
    without = synth.render_dataset(tmp_path / "d", SETTINGS)
    pd.testing.assert_frame_equal(without, first[first["split"] != "test"].reset_index(drop=True))
    other = synth.render_dataset(tmp_path / "c", SETTINGS | {"seed": 4})
    assert not set(other["sha256"]) & set(first["sha256"])


def test_val_photos_of_one_template_differ_but_resemble_it(tmp_path):
    frame = synth.render_dataset(tmp_path, SETTINGS)
    photos = frame[frame["split"] == "val"].groupby("label")["sha256"].nunique()
    assert (photos == 2).all()


def test_dihedral_variants_are_eight_distinct_images():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    variants = {cache.apply_variant(image, v).tobytes() for v in range(8)}
    assert len(variants) == 8 == len(cache.DIHEDRAL)


def test_cache_round_trip_and_expansion(tmp_path):
    frame = synth.render_dataset(tmp_path / "data", SETTINGS)
    frame.to_csv(tmp_path / "data" / "manifest.csv", index=False)
    validate(tmp_path / "data" / "manifest.csv").to_parquet(tmp_path / "validated.parquet")
    summary = cache.build(
        tmp_path / "validated.parquet",
        tmp_path / "cache" / "images.npy",
        tmp_path / "cache" / "index.parquet",
        size=32,
        expand_dihedral=True,
    )
    assert summary["classes"] == {"train": 32, "val": 2}  # 4 templates x 8 variants
    opened = cache.Cache(tmp_path / "cache")
    assert opened.images.shape == (8, 32, 32, 3) and opened.image_size == 32
    assert isinstance(opened.images, np.memmap)
    row = opened.split("train").iloc[9]  # second image, variant 1
    np.testing.assert_array_equal(opened.sample(row.image, row.variant), np.rot90(opened.images[row.image]))
    # A batch is taken a variant at a time: the same pixels as sample by sample.
    train = opened.split("train").sample(frac=1, random_state=0)
    one_by_one = np.stack([opened.sample(r.image, r.variant) for r in train.itertuples()])
    np.testing.assert_array_equal(opened.samples(train), one_by_one)
