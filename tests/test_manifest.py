import hashlib

import pandas as pd
import pytest

from doctrain import manifest
from doctrain.errors import UserError
from tests.conftest import write_png


def test_build_and_validate_a_folder_tree(image_tree):
    frame = manifest.build(image_tree)
    assert set(frame.columns) == {"path", "label", "split"}
    manifest.write(frame, image_tree / "manifest.csv")
    table = manifest.validate(image_tree / "manifest.csv")
    assert len(table) == 10
    assert table.groupby("split")["label"].nunique().to_dict() == {"train": 3, "val": 2}
    assert all(len(s) == 64 for s in table["sha256"])


def test_without_split_column_some_labels_are_held_out(tmp_path):
    rows = []
    for i in range(40):
        rows.append({"path": str(write_png(tmp_path / f"{i}.png", i)), "label": f"class{i}"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    table = manifest.validate(tmp_path / "m.csv")
    held = set(table.loc[table["split"] == "val", "label"])
    assert 0 < len(held) < 40
    assert held == set(manifest.validate(tmp_path / "m.csv").query("split == 'val'")["label"])


def test_half_the_validation_classes_calibrate_the_threshold_unless_the_manifest_says(tmp_path):
    rows = [
        {
            "path": str(write_png(tmp_path / f"{split}{i}-{k}.png", i * 2 + k)),
            "label": f"{split}{i}",
            "split": split,
        }
        for split, classes in (("train", 3), ("val", 5))
        for i in range(classes)
        for k in range(2)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    table = manifest.validate(tmp_path / "m.csv")
    calibration = set(table.loc[table["split"] == "calibration", "label"])
    assert (
        len(calibration) == 2
        and set(table.loc[table["split"] == "val", "label"]) == {f"val{i}" for i in range(5)} - calibration
    )
    assert set(table.loc[table["split"] == "train", "label"]) == {"train0", "train1", "train2"}
    # the choice depends on the labels, not on the order of the rows
    pd.DataFrame(rows[::-1]).to_csv(tmp_path / "reversed.csv", index=False)
    reversed_table = manifest.validate(tmp_path / "reversed.csv")
    assert set(reversed_table.loc[reversed_table["split"] == "calibration", "label"]) == calibration
    # too few validation classes to halve (each half needs data.min_classes_per_split): none moves
    assert "calibration" not in set(manifest.validate(tmp_path / "m.csv", min_classes=3)["split"])
    # the manifest's own calibration rows are used as they are
    rows[-1]["split"] = rows[-2]["split"] = "calibration"
    rows[-3]["split"] = rows[-4]["split"] = "calibration"
    pd.DataFrame(rows).to_csv(tmp_path / "own.csv", index=False)
    own = manifest.validate(tmp_path / "own.csv")
    assert set(own.loc[own["split"] == "calibration", "label"]) == {"val3", "val4"}


def test_every_problem_is_listed_with_file_and_line(image_tree):
    frame = manifest.build(image_tree)
    good_sha = hashlib.sha256((image_tree / frame["path"][1]).read_bytes()).hexdigest()
    (image_tree / "broken.png").write_bytes(b"not an image")
    write_png(image_tree / "extra.png", seed=99)
    frame["sha256"] = ""
    frame.loc[1, "sha256"] = "0" * 64  # wrong digest
    frame.loc[2, "sha256"] = good_sha[::-1]  # wrong file's digest
    frame.loc[3, "label"] = ""
    frame = pd.concat(
        [
            frame,
            pd.DataFrame(
                [
                    {"path": "missing.png", "label": "a", "split": "train", "sha256": ""},
                    {"path": "broken.png", "label": "a", "split": "train", "sha256": ""},
                    {"path": frame["path"][0], "label": "a", "split": "train", "sha256": ""},
                    {"path": "extra.png", "label": "b", "split": "holdout", "sha256": ""},
                ]
            ),
        ],
        ignore_index=True,
    )
    frame.to_csv(image_tree / "m.csv", index=False)
    with pytest.raises(UserError) as caught:
        manifest.validate(image_tree / "m.csv")
    message = str(caught.value)
    where = str(image_tree / "m.csv")
    assert "7 manifest problem(s)" in message
    assert f"{where}:3: sha256 mismatch" in message
    assert f"{where}:4: sha256 mismatch" in message
    assert f"{where}:5: empty label" in message
    assert f"{where}:12: file {image_tree / 'missing.png'} does not exist" in message
    assert f"{where}:13: file {image_tree / 'broken.png'} does not decode as an image" in message
    assert f"{where}:14: duplicate path {frame['path'][0]} (first listed at {where}:2)" in message
    assert f"{where}:15: split 'holdout' is not one of ['train', 'val', 'calibration', 'test']" in message


def test_parquet_column_of_the_wrong_type(tmp_path):
    write_png(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png"], "label": [3]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(UserError, match="column 'label' must hold text, found int"):
        manifest.validate(tmp_path / "m.parquet")


def test_unknown_and_missing_columns(tmp_path):
    pd.DataFrame({"file": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(UserError) as caught:
        manifest.validate(tmp_path / "m.csv")
    assert "required column 'path' is missing" in str(caught.value)
    assert "unknown column(s) ['file']" in str(caught.value)


def test_too_few_classes_in_a_split(image_tree):
    frame = manifest.build(image_tree)
    frame = frame[(frame["split"] == "train") | (frame["label"] == "d")]
    manifest.write(frame, image_tree / "m.parquet")
    with pytest.raises(UserError, match="split 'val' has 1 class") as refused:
        manifest.validate(image_tree / "m.parquet")
    assert "hash" not in str(refused.value)  # the split was the user's own


def test_too_few_classes_in_the_automatic_split_says_how_it_was_made(tmp_path):
    """Six classes without a split column: the hash holds out fewer than two of them."""
    rows = [{"path": str(write_png(tmp_path / f"{i}.png", i)), "label": f"t{i}"} for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    assert sum(manifest._held_out(row["label"]) for row in rows) < 2
    with pytest.raises(UserError, match="picked by a hash of the label.*add a 'split' column"):
        manifest.validate(tmp_path / "m.csv")


def test_unsupported_manifest_format(tmp_path):
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(UserError, match="must be a .csv or .parquet"):
        manifest.validate(tmp_path / "m.json")


def test_rows_that_are_not_plain_readable_images_are_reported_not_raised(image_tree, tmp_path):
    """Issue 9, reproduction 5: each of these crashed, hung or exhausted memory before."""
    import os

    import cv2
    import numpy as np

    frame = manifest.build(image_tree)
    (image_tree / "empty.png").write_bytes(b"")
    os.symlink("loop-b.png", image_tree / "loop-a.png")
    os.symlink("loop-a.png", image_tree / "loop-b.png")
    os.mkfifo(image_tree / "fifo.png")
    # 6000 x 5000 of one colour: 30 MP, a few kB compressed; the limit below is 20 MP.
    cv2.imwrite(str(image_tree / "huge.png"), np.zeros((5000, 6000, 3), dtype=np.uint8))
    odd = {
        "empty.png": "is empty (0 bytes)",
        "loop-a.png": "cannot be read (Too many levels of symbolic links)",
        f"{frame['path'][0]}/x.png": "cannot be read (Not a directory)",
        "n" * 300 + ".png": "cannot be read (File name too long)",
        "fifo.png": "is a FIFO",
        "train/a": "is a folder",
        "huge.png": "is 6000 x 5000 = 30.0 MP, above data.max_image_pixels (20 MP)",
    }
    rows = pd.DataFrame([{"path": p, "label": "a", "split": "train"} for p in odd])
    pd.concat([frame, rows], ignore_index=True).to_csv(image_tree / "m.csv", index=False)
    with pytest.raises(UserError) as caught:
        manifest.validate(image_tree / "m.csv", max_pixels=20_000_000)
    message = str(caught.value)
    assert f"{len(odd)} manifest problem(s)" in message
    for line, (path, problem) in enumerate(odd.items(), start=len(frame) + 2):
        assert f"m.csv:{line}: " in message and problem in message, (path, problem)


def test_a_test_split_is_optional_but_needs_two_classes(image_tree):
    for n, label in enumerate("fg"):
        write_png(image_tree / "test" / label / "0.png", 100 + n)
    frame = manifest.build(image_tree)
    assert set(frame["split"]) == {"train", "val", "test"}
    manifest.write(frame, image_tree / "m.csv")
    assert (manifest.validate(image_tree / "m.csv")["split"] == "test").sum() == 2
    manifest.write(frame[frame["label"] != "g"], image_tree / "m.csv")
    with pytest.raises(UserError, match="split 'test' has 1 class"):
        manifest.validate(image_tree / "m.csv")
